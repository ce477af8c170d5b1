//! Whole-cluster power loss under writers: three nodes whose data directories are
//! power-loss filesystems (`tests/lossyfs`, see [`common::lossy`]) take submits
//! from several writers; then every node is SIGKILLed and every disk drops what was
//! not fsynced, twice. Every node must start again, and every task whose submit was
//! answered 2xx must be readable afterwards: an acknowledged write was on a
//! majority's disk. Small snapshots make log purges and snapshot builds part of it.
//!
//! Needs root, /dev/fuse and fusermount3: elsewhere it is skipped (and fails under
//! CI=true).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::lossy::LossyDisks;
use common::{Options, TestCluster};
use reqwest::Method;

const TEST: &str = "a_whole_cluster_power_loss_loses_no_acknowledged_task";

/// Writers submitting tasks until told to stop; returns the acknowledged task ids.
fn writers(
    cluster: &TestCluster,
    session: &str,
    round: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for w in 0..4 {
        let client = cluster.client().pinned(w);
        let (session, stop, acked) = (session.to_string(), stop.clone(), acked.clone());
        set.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let payload = format!("round {round} writer {w} task {n}");
                // Keyed, so a retry after an unknown outcome cannot create a twin.
                let key = format!("r{round}-w{w}-{n}");
                match client
                    .submit(&session, payload.as_bytes(), Some(&key))
                    .await
                {
                    Ok(id) => {
                        acked.lock().unwrap().push(id);
                        n += 1;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_power_loss_loses_no_acknowledged_task() {
    let disks = match LossyDisks::create(3) {
        Ok(d) => d,
        Err(why) => return common::cannot_run(TEST, &why),
    };
    let options = Options {
        nodes: 3,
        data_root: Some(disks.root()),
        flags: vec!["--snapshot-entries=200".into()],
        ..Options::default()
    };
    let mut cluster = TestCluster::start_with(options).await;
    let session = cluster
        .client()
        .create_session(&common::session_spec(1, 1))
        .await
        .expect("create a session");
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..2 {
        let stop = Arc::new(AtomicBool::new(false));
        let mut set = writers(&cluster, &session, round, stop.clone(), acked.clone());
        // Writes flow (and snapshots are built) for a while, then the power goes
        // with submits in flight.
        tokio::time::sleep(Duration::from_secs(6)).await;
        for i in 0..3 {
            cluster.kill(i);
        }
        for i in 0..3 {
            disks.lose_power(i);
        }
        stop.store(true, Ordering::Relaxed);
        while set.join_next().await.is_some() {}
        eprintln!(
            "[power-loss] round {round}: power lost with {} tasks acknowledged so far",
            acked.lock().unwrap().len()
        );
        for i in 0..3 {
            cluster.restart(i);
        }
        // Every node starts again on what its disk kept.
        cluster.wait_for_leader(Duration::from_secs(60)).await;
        for i in 0..3 {
            assert!(
                cluster.exited(i).is_none(),
                "node {} did not start again after the power loss:\n{}",
                i + 1,
                cluster.logs()
            );
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "too few submits were acknowledged ({}) for the test to mean anything",
        acked.len()
    );
    // Every acknowledged task is there, read linearizably, on every node.
    let mut lost = Vec::new();
    for i in 0..3 {
        let client = cluster.client_of(i);
        for id in &acked {
            let path = format!("/v1/tasks/{id}?consistency=linearizable");
            let mut found = None;
            for _ in 0..20 {
                match client.call(Method::GET, &path, None, None).await {
                    Ok((status, _)) if status.is_success() => {
                        found = Some(true);
                        break;
                    }
                    Ok((status, _)) if status.as_u16() == 404 => {
                        found = Some(false);
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
            match found {
                Some(true) => {}
                Some(false) => lost.push(format!("node {}: {id}", i + 1)),
                None => panic!("node {} does not answer reads:\n{}", i + 1, cluster.logs()),
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged tasks lost after power losses: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    for i in 0..3 {
        cluster.kill(i);
    }
    drop(cluster);
    drop(disks);
}
