//! A throwaway certificate authority (`session-queue certs`, `cluster/up.sh --tls`):
//! one CA and a certificate per node, made with rcgen, for a test or demo cluster
//! that wants TLS without an operator's PKI.
//!
//! Each node certificate names `127.0.0.1`, `localhost`, the node's name and any
//! extra names as subject alternative names, and allows both server and client
//! authentication, so one file serves a node's API, its peer listener and its side
//! of mutual TLS. Files in the output directory: `ca.pem` (give it to clients as
//! `--ca-file` and to nodes as `--peer-ca`), `ca-key.pem`, `NAME.pem` and
//! `NAME-key.pem`. Private keys are written with mode 0600.
//!
//! Run again on the same directory, it keeps the CA (so certificates made for a
//! node added later are trusted by the others) and rewrites the named nodes' files.
//! Certificates are valid for ten years from the start of the current year.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The files [`generate`] wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    /// (certificate, key) of each node, in the order given.
    pub nodes: Vec<(PathBuf, PathBuf)>,
}

/// A name usable as a file name and a certificate name: letters, digits, `.`,
/// `-`, `_`, not starting with `.` or `-`.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok || name == "ca" {
        bail!("node name {name:?}: use letters, digits, '.', '-' or '_' (and not \"ca\")");
    }
    Ok(())
}

/// Validity: from the start of this year, ten years.
fn validity(params: &mut CertificateParams) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Session Queue throwaway CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    params
}

/// Writes `text` to `path`; with `private`, mode 0600 (also when it existed).
fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(if private { 0o600 } else { 0o644 });
        if private && path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", path.display()))?;
        }
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Makes (or reuses) the CA in `dir` and a certificate for each of `names`, each
/// also valid for `extra_sans`.
pub fn generate(dir: &Path, names: &[&str], extra_sans: &[&str]) -> anyhow::Result<Written> {
    if names.is_empty() {
        bail!("name at least one node");
    }
    for name in names {
        check_name(name)?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    // The CA signs with its key under its name: the same key and parameters stand
    // for an existing CA (webpki matches issuer by name and checks the signature
    // with the CA's key).
    let (ca_key, reuse) = if ca_path.exists() && ca_key_path.exists() {
        let pem = std::fs::read_to_string(&ca_key_path)
            .with_context(|| format!("reading {}", ca_key_path.display()))?;
        let key = KeyPair::from_pem(&pem)
            .with_context(|| format!("{}: not a private key", ca_key_path.display()))?;
        (key, true)
    } else {
        (KeyPair::generate().context("generating the CA key")?, false)
    };
    let ca = ca_params()
        .self_signed(&ca_key)
        .context("making the CA certificate")?;
    if !reuse {
        write(&ca_key_path, &ca_key.serialize_pem(), true)?;
        write(&ca_path, &ca.pem(), false)?;
    }
    let mut nodes = Vec::new();
    for name in names {
        let mut sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        for san in std::iter::once(name).chain(extra_sans) {
            if !sans.iter().any(|s| s == san) {
                sans.push(san.to_string());
            }
        }
        let mut params =
            CertificateParams::new(sans).with_context(|| format!("names of node {name}"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, *name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = KeyPair::generate().context("generating a node key")?;
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .with_context(|| format!("signing the certificate of {name}"))?;
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        write(&key_path, &key.serialize_pem(), true)?;
        write(&cert_path, &cert.pem(), false)?;
        nodes.push((cert_path, key_path));
    }
    Ok(Written {
        ca: ca_path,
        ca_key: ca_key_path,
        nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_private_and_a_second_run_keeps_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(dir.path(), &["node1", "node2"], &["sq.example"]).unwrap();
        #[cfg(unix)]
        {
            assert_eq!(mode(&first.ca_key), 0o600);
            assert_eq!(mode(&first.nodes[1].1), 0o600);
            assert_eq!(mode(&first.ca), 0o644);
        }
        let ca_before = std::fs::read(&first.ca).unwrap();
        let second = generate(dir.path(), &["node4"], &[]).unwrap();
        assert_eq!(std::fs::read(&second.ca).unwrap(), ca_before);
        // The new node's certificate chains to the kept CA, for its names only.
        let verify = |name: &str| {
            use rustls::client::danger::ServerCertVerifier;
            let roots = crate::tls::load_roots(&second.ca, "ca").unwrap();
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots,
                std::sync::Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .unwrap();
            let cert = crate::tls::load_certs(&second.nodes[0].0, "cert").unwrap();
            let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
            verifier.verify_server_cert(
                &cert[0],
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
        };
        for good in ["node4", "localhost", "127.0.0.1"] {
            verify(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        assert!(verify("node1").is_err());
        assert!(verify("10.1.2.3").is_err());
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "../x", "a/b", "ca", "-x", ".hidden", "a b"] {
            assert!(generate(dir.path(), &[bad], &[]).is_err(), "{bad:?}");
        }
        assert!(generate(dir.path(), &[], &[]).is_err());
    }
}
