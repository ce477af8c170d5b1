//! Unit tests of the node's flags and configuration file.

use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    node: NodeConfig,
}

fn node(extra: &[&str]) -> NodeConfig {
    let mut args = vec!["sq", "--id", "1", "--cluster-secret", "0123456789abcdef"];
    args.extend_from_slice(extra);
    Cli::try_parse_from(args).expect("flags parse").node
}

#[test]
fn raft_timing_is_checked_and_the_refusal_lease_stays_inside_openrafts() {
    let defaults = node(&[]);
    defaults.validate().unwrap();
    let raft = defaults.raft_config().unwrap();
    assert_eq!(raft.heartbeat_interval, 100);
    assert_eq!(
        (raft.election_timeout_min, raft.election_timeout_max),
        (250, 500)
    );
    // openraft's leader lease is the election max; the metrics are at most about
    // 1.5 heartbeats old.
    assert_eq!(defaults.refusal_lease(), Duration::from_millis(300));
    for bad in [
        &["--heartbeat-ms", "200"][..],
        &["--election-min-ms", "600"],
        &["--heartbeat-ms", "0"],
        &["--replication-timeout-ms", "50"],
    ] {
        assert!(node(bad).validate().is_err(), "{bad:?}");
    }
}

fn config(args: &[&str]) -> NodeConfig {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeConfig,
    }
    let mut all = vec!["node", "--id=1"];
    all.extend_from_slice(args);
    <Cli as clap::Parser>::try_parse_from(all).unwrap().node
}

#[test]
fn debug_redacts_the_secret_and_keys() {
    let c = config(&[
        "--cluster-secret=s3cret-s3cret-s3cret",
        "--api-key=user-key-xyz",
        "--admin-key=admin-key-xyz",
        "--miner-key=miner-key-xyz",
    ]);
    let text = format!("{c:?} {c:#?}");
    for secret in [
        "s3cret-s3cret",
        "user-key-xyz",
        "admin-key-xyz",
        "miner-key-xyz",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(text.contains("<redacted>"), "{text}");
}

#[test]
fn the_example_secret_needs_demo_and_keys_must_differ() {
    let example = format!("--cluster-secret={EXAMPLE_CLUSTER_SECRET}");
    let err = config(&[&example]).validate().unwrap_err().to_string();
    assert!(err.contains("SQ_DEMO=1"), "{err}");
    config(&[&example, "--demo"]).validate().unwrap();
    let same = config(&[
        "--cluster-secret=0123456789abcdef",
        "--api-key=k1",
        "--admin-key=k1",
    ]);
    assert!(same.validate().is_err());
    assert!(
        config(&["--cluster-secret=0123456789abcdef", "--admin-key="])
            .validate()
            .is_err()
    );
}

#[test]
fn tls_flags_come_in_sets() {
    let secret = "--cluster-secret=0123456789abcdef";
    config(&[
        secret,
        "--tls-cert=c.pem",
        "--tls-key=k.pem",
        "--tls-ca=ca.pem",
    ])
    .validate()
    .unwrap();
    config(&[
        secret,
        "--peer-tls-cert=c",
        "--peer-tls-key=k",
        "--peer-ca=ca",
    ])
    .validate()
    .unwrap();
    // The API's CA defaults to the peer CA.
    let both = config(&[
        secret,
        "--tls-cert=c",
        "--tls-key=k",
        "--peer-tls-cert=c",
        "--peer-tls-key=k",
        "--peer-ca=ca",
    ]);
    both.validate().unwrap();
    assert_eq!(both.api_ca(), Some(std::path::Path::new("ca")));
    for bad in [
        &["--tls-cert=c", "--tls-key=k"][..],
        &["--peer-tls-cert=c", "--peer-tls-key=k"],
        &["--peer-ca=ca"],
        &["--tls-ca=ca"],
    ] {
        let mut args = vec![secret];
        args.extend_from_slice(bad);
        assert!(config(&args).validate().is_err(), "{bad:?}");
    }
    // clap itself refuses a certificate without its key.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeConfig,
    }
    assert!(<Cli as clap::Parser>::try_parse_from(["n", "--id=1", "--tls-cert=c"]).is_err());
}

#[test]
fn members_parse_and_bad_ones_are_refused() {
    let m = parse_members("1=127.0.0.1:7001/127.0.0.1:8001, 2=h2:7001/h2:8001").unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m[&2].peer, "h2:8001");
    for bad in ["", "1=a", "x=a/b", "0=a/b", "1=a/b,1=c/d", "1=/b"] {
        assert!(parse_members(bad).is_err(), "{bad:?}");
    }
}
