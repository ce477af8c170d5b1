//! TLS with rustls and its ring provider (no OpenSSL, no process-wide default):
//! loading PEM files and building the four configurations the project uses.
//!
//! - [`api_server`]: the public API listener (`--tls-cert`, `--tls-key`); offers
//!   HTTP/2 and HTTP/1.1 by ALPN, asks clients for no certificate.
//! - [`peer_server`]: the peer listener with mutual TLS (`--peer-tls-cert`,
//!   `--peer-tls-key`, `--peer-ca`): a client must present a certificate signed by
//!   the peer CA, or the handshake fails and it never reaches an HTTP handler.
//! - [`peer_client`]: what a node presents to its peers (its peer certificate) and
//!   trusts in them (the peer CA).
//! - [`https_client`]: a client of the API over https, trusting the CA file it is
//!   given (the command-line client, the bench, the simulated miners, a node
//!   relaying a call to the leader's API).
//!
//! A client config offers no ALPN: reqwest here speaks HTTP/1.1 only, and a server
//! that picked `h2` for it would break the connection.
//!
//! Every loader fails with a message naming the flag and the file, so a node with a
//! missing, unreadable or mismatched file refuses to start with the reason. Key
//! files are read, never logged. [`certs`] makes a throwaway CA and node
//! certificates (`session-queue certs`).

pub mod certs;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::NodeConfig;

/// The crypto provider of every configuration: ring, chosen here rather than
/// taken from a process-wide default another crate might install.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{what}: cannot read {}", path.display()))
}

/// The certificates of a PEM file (a chain: the end entity first).
pub fn load_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = read(path, what)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what}: {} is not valid PEM", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{what}: {} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
            path.display()
        );
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path, what: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes = read(path, what)?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .ok()
        .flatten()
        .with_context(|| {
            format!(
                "{what}: {} holds no private key (expected PEM `BEGIN PRIVATE KEY`)",
                path.display()
            )
        })
}

/// The trust anchors of a CA file.
pub fn load_roots(path: &Path, what: &str) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, what)? {
        roots.add(cert).with_context(|| {
            format!("{what}: {} is not a usable CA certificate", path.display())
        })?;
    }
    Ok(Arc::new(roots))
}

/// Certificate and key, checked to belong together.
fn certified(
    cert: &Path,
    key: &Path,
    cert_flag: &str,
    key_flag: &str,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = load_certs(cert, cert_flag)?;
    let key_der = load_key(key, key_flag)?;
    rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider())
        .with_context(|| {
            format!(
                "{key_flag} {} does not match {cert_flag} {} (or is not a usable key)",
                key.display(),
                cert.display()
            )
        })?;
    Ok((chain, key_der))
}

/// The public API's server configuration: no client certificates, ALPN h2 and
/// http/1.1.
pub fn api_server(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let (chain, key) = certified(cert, key, "--tls-cert", "--tls-key")?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("--tls-cert / --tls-key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The peer listener's server configuration: mutual TLS, a client certificate
/// signed by the peer CA required.
pub fn peer_server(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let (chain, key) = certified(cert, key, "--peer-tls-cert", "--peer-tls-key")?;
    let roots = load_roots(ca, "--peer-ca")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .context("--peer-ca: building the client certificate verifier")?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("--peer-tls-cert / --peer-tls-key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a node presents to its peers and trusts in them.
pub fn peer_client(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<ClientConfig> {
    let (chain, key) = certified(cert, key, "--peer-tls-cert", "--peer-tls-key")?;
    let roots = load_roots(ca, "--peer-ca")?;
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("--peer-tls-cert / --peer-tls-key as a client certificate")
}

/// A client of the API over https, trusting the certificates of the CA file
/// `ca` (`what` names the flag in errors).
pub fn https_client(ca: &Path, what: &str) -> anyhow::Result<ClientConfig> {
    let roots = load_roots(ca, what)?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An acceptor for [`crate::listener::serve`].
pub fn acceptor(config: Arc<ServerConfig>) -> tokio_rustls::TlsAcceptor {
    tokio_rustls::TlsAcceptor::from(config)
}

/// A node's TLS, built from its flags at startup (after
/// [`NodeConfig::validate`], which checks the flags come in sets).
#[derive(Default)]
pub struct NodeTls {
    /// The API listener's acceptor (`--tls-cert`, `--tls-key`).
    pub api: Option<tokio_rustls::TlsAcceptor>,
    /// The peer listener's acceptor, requiring client certificates (`--peer-*`).
    pub peer: Option<tokio_rustls::TlsAcceptor>,
    /// What the node presents to and trusts in its peers.
    pub peer_client: Option<ClientConfig>,
    /// How the node reaches other nodes' https APIs (`--tls-ca`, or `--peer-ca`).
    pub api_client: Option<ClientConfig>,
}

impl NodeTls {
    /// Loads every file the flags name; any missing, unreadable or mismatched
    /// file is an error naming its flag.
    pub fn load(config: &NodeConfig) -> anyhow::Result<Self> {
        let mut tls = NodeTls::default();
        if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
            tls.api = Some(acceptor(api_server(cert, key)?));
            let ca = config
                .api_ca()
                .context("--tls-cert needs --tls-ca or --peer-ca")?;
            let what = if config.tls_ca.is_some() {
                "--tls-ca"
            } else {
                "--peer-ca"
            };
            tls.api_client = Some(https_client(ca, what)?);
        }
        if let (Some(cert), Some(key), Some(ca)) =
            (&config.peer_tls_cert, &config.peer_tls_key, &config.peer_ca)
        {
            tls.peer = Some(acceptor(peer_server(cert, key, ca)?));
            tls.peer_client = Some(peer_client(cert, key, ca)?);
        }
        Ok(tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_set(dir: &Path, names: &[&str]) -> certs::Written {
        certs::generate(dir, names, &[]).unwrap()
    }

    #[test]
    fn configs_build_from_generated_files_and_the_api_offers_h2() {
        let dir = tempfile::tempdir().unwrap();
        let w = write_set(dir.path(), &["node1"]);
        let (cert, key) = &w.nodes[0];
        let api = api_server(cert, key).unwrap();
        assert_eq!(
            api.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        peer_server(cert, key, &w.ca).unwrap();
        peer_client(cert, key, &w.ca).unwrap();
        let client = https_client(&w.ca, "--ca-file").unwrap();
        assert!(client.alpn_protocols.is_empty());
    }

    #[test]
    fn missing_empty_and_mismatched_files_are_refused_with_the_flag_named() {
        let dir = tempfile::tempdir().unwrap();
        let w = write_set(dir.path(), &["a", "b"]);
        let missing = dir.path().join("nope.pem");
        let err = format!("{:#}", api_server(&missing, &w.nodes[0].1).unwrap_err());
        assert!(
            err.contains("--tls-cert") && err.contains("nope.pem"),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = format!("{:#}", api_server(&w.nodes[0].0, &empty).unwrap_err());
        assert!(
            err.contains("--tls-key") && err.contains("no private key"),
            "{err}"
        );
        let err = format!("{:#}", https_client(&empty, "--ca-file").unwrap_err());
        assert!(
            err.contains("--ca-file") && err.contains("no certificate"),
            "{err}"
        );

        // a's certificate with b's key
        let err = format!(
            "{:#}",
            peer_server(&w.nodes[0].0, &w.nodes[1].1, &w.ca).unwrap_err()
        );
        assert!(err.contains("does not match"), "{err}");
        // A key given where the CA should be.
        let err = format!(
            "{:#}",
            peer_client(&w.nodes[0].0, &w.nodes[0].1, &w.nodes[0].1).unwrap_err()
        );
        assert!(err.contains("--peer-ca"), "{err}");
    }
}
