//! Per miner, the last applied log index at which its assignment list may have
//! changed, so that a miner's long poll (`GET /v1/miners/{id}/assignments?after=`)
//! wakes only for changes that concern it, not for every entry the node applies
//! (other miners' work, heartbeats, submits of other sessions).
//!
//! The index is not replicated and not persisted: it is derived on each node from the
//! transitions the state-machine store applies. A transition concerns every miner
//! that holds (or held) a slot of its task, since the task's state shows in each of
//! their lists; a miner declared gone or forgotten concerns that miner too (its long
//! poll must learn it). Below `floor` nothing is known (before this process started,
//! or before a snapshot replaced the state), so every miner counts as changed there:
//! a poll with an older `after` answers at once, never misses a change.
//!
//! Each miner has a `watch` channel, so a waiting poll sleeps until its own miner
//! changes instead of waking on every applied entry.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::machine::{Event, MinerId, State};

/// The change index of every miner a node has seen change.
pub struct MinerChanges {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Every miner counts as changed at this index (start, or snapshot installed).
    floor: u64,
    miners: HashMap<MinerId, watch::Sender<u64>>,
}

impl MinerChanges {
    /// Nothing known before `floor` (the applied index the node starts from).
    pub fn new(floor: u64) -> Self {
        MinerChanges {
            inner: Mutex::new(Inner {
                floor,
                miners: HashMap::new(),
            }),
        }
    }

    /// The last applied index at which `miner`'s assignment list may have changed.
    pub fn changed_at(&self, miner: MinerId) -> u64 {
        let inner = self.inner.lock().expect("miner changes lock");
        inner
            .miners
            .get(&miner)
            .map_or(inner.floor, |tx| *tx.borrow())
    }

    /// A receiver of `miner`'s change index; it sees every later change. The channel
    /// closes when the miner is forgotten.
    pub fn subscribe(&self, miner: MinerId) -> watch::Receiver<u64> {
        let mut inner = self.inner.lock().expect("miner changes lock");
        let floor = inner.floor;
        inner
            .miners
            .entry(miner)
            .or_insert_with(|| watch::Sender::new(floor))
            .subscribe()
    }

    /// Records that `miner`'s list may have changed at `index` (indexes only grow).
    pub fn touch(&self, miner: MinerId, index: u64) {
        let mut inner = self.inner.lock().expect("miner changes lock");
        let floor = inner.floor;
        let tx = inner
            .miners
            .entry(miner)
            .or_insert_with(|| watch::Sender::new(floor));
        tx.send_if_modified(|at| {
            let newer = index > *at;
            if newer {
                *at = index;
            }
            newer
        });
    }

    /// Forgets a miner the state no longer holds; its waiting polls are woken.
    pub fn forget(&self, miner: MinerId) {
        self.inner
            .lock()
            .expect("miner changes lock")
            .miners
            .remove(&miner);
    }

    /// The whole state was replaced at `index`: every miner may have changed.
    pub fn reset(&self, index: u64) {
        let mut inner = self.inner.lock().expect("miner changes lock");
        inner.floor = index;
        for tx in inner.miners.values() {
            tx.send_replace(index);
        }
    }

    /// Whether no miner is tracked.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.inner
            .lock()
            .expect("miner changes lock")
            .miners
            .is_empty()
    }
}

/// The miners a transition concerns: the one it names, and every miner holding or
/// having held a slot of its task (read from `state` after the transition).
pub fn concerned(state: &State, event: &Event) -> Vec<MinerId> {
    let mut out: Vec<MinerId> = event.miner.into_iter().collect();
    if let Some(task) = state.task(event.task) {
        for a in &task.assignments {
            if !out.contains(&a.miner) {
                out.push(a.miner);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_unknown_miner_counts_as_changed_at_the_floor() {
        let changes = MinerChanges::new(7);
        assert_eq!(changes.changed_at(MinerId(1)), 7);
        changes.touch(MinerId(1), 9);
        assert_eq!(changes.changed_at(MinerId(1)), 9);
        assert_eq!(changes.changed_at(MinerId(2)), 7);
    }

    #[test]
    fn indexes_only_grow() {
        let changes = MinerChanges::new(0);
        changes.touch(MinerId(1), 12);
        changes.touch(MinerId(1), 5);
        assert_eq!(changes.changed_at(MinerId(1)), 12);
    }

    #[tokio::test]
    async fn a_subscriber_wakes_for_its_own_miner_only() {
        let changes = MinerChanges::new(3);
        let mut mine = changes.subscribe(MinerId(1));
        assert_eq!(*mine.borrow_and_update(), 3);
        changes.touch(MinerId(2), 10);
        let woke = tokio::time::timeout(Duration::from_millis(50), mine.changed()).await;
        assert!(woke.is_err(), "another miner's change woke this one");
        changes.touch(MinerId(1), 11);
        tokio::time::timeout(Duration::from_secs(5), mine.changed())
            .await
            .expect("woken by its own change")
            .expect("open");
        assert_eq!(*mine.borrow(), 11);
    }

    #[tokio::test]
    async fn a_reset_wakes_everyone_and_raises_the_floor() {
        let changes = MinerChanges::new(0);
        let mut rx = changes.subscribe(MinerId(4));
        changes.reset(40);
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("woken by the reset")
            .expect("open");
        assert_eq!(changes.changed_at(MinerId(4)), 40);
        assert_eq!(changes.changed_at(MinerId(5)), 40);
    }

    #[tokio::test]
    async fn forgetting_a_miner_closes_its_channel() {
        let changes = MinerChanges::new(0);
        let mut rx = changes.subscribe(MinerId(4));
        changes.forget(MinerId(4));
        assert!(rx.changed().await.is_err());
        assert!(changes.is_empty());
    }
}
