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
//! changes instead of waking on every applied entry. Only miners the state holds
//! are tracked: a forgotten miner's entry goes when it is forgotten, and a snapshot
//! install drops those the new state lacks, so the map is bounded by the pool.

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

    /// The whole state was replaced at `index`: every miner may have changed, and
    /// those the new state does not hold (`holds` says which it does) are forgotten.
    pub fn reset(&self, index: u64, holds: impl Fn(MinerId) -> bool) {
        let mut inner = self.inner.lock().expect("miner changes lock");
        inner.floor = index;
        inner.miners.retain(|miner, _| holds(*miner));
        for tx in inner.miners.values() {
            tx.send_replace(index);
        }
    }

    /// How many miners are tracked.
    #[cfg(test)]
    pub(super) fn tracked(&self) -> usize {
        self.inner.lock().expect("miner changes lock").miners.len()
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
/// having held a slot of its task (read from `state` after the transition), of
/// those the state still holds. A task keeps its past slots for its whole life
/// (up to 30 days), while a gone miner is forgotten an hour after it went: tracking
/// a forgotten one would keep its entry here for the life of the process.
pub fn concerned(state: &State, event: &Event) -> Vec<MinerId> {
    let mut out: Vec<MinerId> = event.miner.into_iter().collect();
    if let Some(task) = state.task(event.task) {
        for a in &task.assignments {
            if !out.contains(&a.miner) {
                out.push(a.miner);
            }
        }
    }
    out.retain(|m| state.miner(*m).is_some());
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
        let mut gone = changes.subscribe(MinerId(6));
        changes.reset(40, |m| m != MinerId(6));
        assert!(
            gone.changed().await.is_err(),
            "a miner the new state lacks is forgotten"
        );
        assert_eq!(changes.tracked(), 1);
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("woken by the reset")
            .expect("open");
        assert_eq!(changes.changed_at(MinerId(4)), 40);
        assert_eq!(changes.changed_at(MinerId(5)), 40);
    }

    #[test]
    fn a_forgotten_miner_that_held_a_slot_of_a_live_task_is_not_tracked_again() {
        use crate::machine::{limits, Command, NewTask, Response, TaskState};
        let mut state = State::new();
        let mut now = 1_000_000;
        let run = |state: &mut State, now: u64, c: Command| {
            state
                .apply(&c, now)
                .unwrap_or_else(|e| panic!("{c:?}: {e}"))
        };
        let session = match run(
            &mut state,
            now,
            Command::CreateSession(super::super::tests::spec()),
        )
        .response
        {
            Response::SessionCreated { session } => session,
            r => panic!("{r:?}"),
        };
        let token = crate::machine::sha256(&[b"m1"]);
        run(
            &mut state,
            now,
            Command::RegisterMiner {
                name: "m1".into(),
                capacity: 1,
                tags: vec![],
                token_hash: token,
                heartbeat_timeout_ms: 1000,
            },
        );
        let miner = MinerId(1);
        run(
            &mut state,
            now,
            Command::SubmitTasks {
                session,
                tasks: vec![NewTask {
                    payload: b"p".to_vec().into(),
                    priority: None,
                    idempotency_key: None,
                    queue_timeout_ms: None,
                }],
            },
        );
        let task = state
            .assignments_of(miner)
            .first()
            .expect("assigned at submit")
            .0
            .id;
        // The miner misses its heartbeats: gone, its slot back in the queue; an hour
        // later it is forgotten, while the task (no queue timeout) lives on.
        now += 2_000;
        run(&mut state, now, Command::Tick);
        now += limits::GONE_MINER_RETENTION_MS + 1;
        run(&mut state, now, Command::Tick);
        assert!(state.miner(miner).is_none());
        let t = state.task(task).expect("the task lives on");
        assert!(t.assignments.iter().any(|a| a.miner == miner));
        let event = Event {
            task,
            session,
            state: TaskState::Queued,
            miner: None,
            what: crate::machine::EventKind::Submitted,
            at_ms: now,
        };
        assert!(concerned(&state, &event).is_empty());
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
