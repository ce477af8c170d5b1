//! The invariants every reachable state keeps, checked after each step of the
//! property tests: counters match the tasks, slots match the miners, each miner holds
//! at most one active slot of a task, deadlines exist where they must, and the derived
//! indexes equal the ones rebuilt from the entities alone.

use std::collections::{BTreeMap, BTreeSet};

use super::super::idempotency;
use super::*;

pub(super) fn assert_indexes_equal(a: &State, b: &State) {
    assert_eq!(a.idx.queues, b.idx.queues, "queues");
    assert_eq!(a.idx.deadlines, b.idx.deadlines, "deadlines");
    assert_eq!(a.idx.pool, b.idx.pool, "pool");
    assert_eq!(a.idx.needy, b.idx.needy, "needy");
    assert_eq!(a.idx.depth, b.idx.depth, "depth");
    assert_eq!(a.idx.tokens, b.idx.tokens, "tokens");
    assert_eq!(a.idx.unfinished, b.idx.unfinished, "unfinished");
    assert_eq!(a.idx.footprint, b.idx.footprint, "footprint");
}

pub(super) fn check_invariants(s: &State) {
    // Payload bytes are held only for tasks that have a payload (none of a finished
    // or purged task that dropped it).
    for id in s.payloads.ids() {
        assert!(
            s.task(id).is_some_and(|t| t.payload_len.is_some()),
            "{id}: payload bytes held without a payload"
        );
    }
    let mut counts: BTreeMap<SessionId, StateCounts> = BTreeMap::new();
    let mut open: BTreeMap<SessionId, u64> = BTreeMap::new();
    let mut active: BTreeMap<SessionId, u64> = BTreeMap::new();
    let mut held: BTreeMap<MinerId, BTreeSet<TaskId>> = BTreeMap::new();
    for t in s.tasks.values() {
        let session = &s.sessions[&t.session];
        counts.entry(t.session).or_default().add(t.state, 1);
        // Filed in exactly the lane its slots say (the queue is the only record of it).
        let filed = s
            .idx
            .queues
            .get(&t.session)
            .and_then(|q| q.lane_of(&t.queue_key()));
        assert_eq!(filed, t.lane(), "{}: filed in the wrong lane", t.id);
        // A miner's slots of a task: all expired but maybe the last, so at most one is
        // active and none follows a reveal (valid or rejected).
        let mut last: BTreeMap<MinerId, usize> = BTreeMap::new();
        for (i, a) in t.assignments.iter().enumerate() {
            if let Some(&before) = last.get(&a.miner) {
                assert_eq!(
                    t.assignments[before].state,
                    SlotState::Expired,
                    "{}: {} took the task again after a slot that had not expired",
                    t.id,
                    a.miner
                );
            }
            last.insert(a.miner, i);
        }
        // The queue deadline runs exactly while the task waits in the queue, if limited.
        assert_eq!(
            t.queue_deadline.is_some(),
            t.lane().is_some() && t.queue_timeout_ms > 0,
            "{}: queue deadline {:?} with lane {:?}",
            t.id,
            t.queue_deadline,
            t.lane()
        );
        // A payload is held while the task is unfinished, and after only if kept.
        assert_eq!(
            t.payload_len.is_some(),
            !t.state.is_terminal() || session.spec.keep_finished_payloads,
            "{}: payload held {} in state {:?}",
            t.id,
            t.payload_len.is_some(),
            t.state
        );
        // Its bytes, while in memory, are the task's payload's.
        if let Some(bytes) = s.unwritten_payload(t.id) {
            assert_eq!(t.payload_len, Some(bytes.len() as u32), "{}", t.id);
        }
        if t.state.is_terminal() {
            assert_eq!(t.open_slots, 0);
            assert!(
                t.phase_deadline.is_none() && t.assignments.iter().all(|a| a.deadline.is_none())
            );
        } else {
            // Every held slot has a deadline of its own, except while the phase is open.
            let phase_open = t.phase_deadline.is_some();
            for a in t.assignments.iter().filter(|a| a.state.is_active()) {
                assert_eq!(
                    a.deadline.is_some(),
                    !phase_open,
                    "{}: slot of {} ({:?}) has deadline {:?}, phase open: {phase_open}",
                    t.id,
                    a.miner,
                    a.state,
                    a.deadline
                );
            }
            *open.entry(t.session).or_default() += t.open_slots as u64;
            let n = t.active_slots();
            *active.entry(t.session).or_default() += n as u64;
            for a in t.assignments.iter().filter(|a| a.state.is_active()) {
                held.entry(a.miner).or_default().insert(t.id);
            }
            assert!(
                n + t.open_slots as usize <= session.k() as usize,
                "{}: more slots than k",
                t.id
            );
            if !t.phase_closed {
                assert_eq!(
                    n + t.open_slots as usize,
                    session.k() as usize,
                    "{}: slots lost before close",
                    t.id
                );
            }
            assert_eq!(
                t.state,
                t.derived_state(),
                "{}: state does not follow its slots",
                t.id
            );
        }
        if t.state == TaskState::Completed {
            let result = t.result().expect("a completed task has a result");
            let agree = t
                .assignments
                .iter()
                .filter(|a| {
                    a.state == SlotState::Committed && a.output_hash == Some(sha256(&[result]))
                })
                .count();
            assert!(
                agree >= session.q() as usize,
                "{}: completed without q agreeing reveals",
                t.id
            );
        }
    }
    let mut depth = StateCounts::default();
    for sess in s.sessions.values() {
        assert_eq!(
            sess.counts,
            counts.get(&sess.id).copied().unwrap_or_default(),
            "{} counts",
            sess.id
        );
        assert_eq!(
            sess.open_slots,
            open.get(&sess.id).copied().unwrap_or(0),
            "{} open slots",
            sess.id
        );
        assert_eq!(
            sess.active_slots,
            active.get(&sess.id).copied().unwrap_or(0),
            "{} active slots",
            sess.id
        );
        assert!(sess.reserved.len() as u32 <= sess.spec.max_nodes);
        assert!(
            sess.counts.live() <= sess.spec.max_queued_tasks,
            "{} holds more unfinished tasks than its max_queued_tasks",
            sess.id
        );
        for m in &sess.reserved {
            let miner = &s.miners[m];
            assert_eq!(miner.reserved_by, Some(sess.id));
            assert_eq!(miner.state, MinerState::Reserved);
        }
        for st in TaskState::ALL {
            let n = match st {
                TaskState::Queued => sess.counts.queued,
                TaskState::Acked => sess.counts.acked,
                TaskState::Precommitted => sess.counts.precommitted,
                TaskState::Committed => sess.counts.committed,
                TaskState::Completed => sess.counts.completed,
                TaskState::Failed => sess.counts.failed,
                TaskState::Cancelled => sess.counts.cancelled,
            };
            depth.add(st, n as i64);
        }
    }
    assert_eq!(s.idx.depth, depth);
    for m in s.miners.values() {
        assert_eq!(
            m.active,
            held.get(&m.id).cloned().unwrap_or_default(),
            "{} active set",
            m.id
        );
        assert!(
            m.active.len() as u32 <= m.capacity,
            "{} over capacity",
            m.id
        );
        match m.state {
            MinerState::Reserved => {
                assert!(s.sessions[&m.reserved_by.unwrap()].reserved.contains(&m.id))
            }
            MinerState::Pooled => assert!(m.reserved_by.is_none() && m.active.is_empty()),
            MinerState::Draining => assert!(m.reserved_by.is_none() && !m.active.is_empty()),
            MinerState::Gone => assert!(m.reserved_by.is_none() && m.active.is_empty()),
        }
    }
    // Keys: remembered by open sessions only, and never forgotten while their task
    // exists; a key names one task.
    for ((sid, hash), k) in &s.keys {
        assert_eq!((k.session, k.key_hash), (*sid, *hash));
        let session = s.sessions.get(sid).expect("a key's session exists");
        assert_eq!(
            session.state,
            SessionState::Open,
            "a closed session keeps keys"
        );
        assert!(k.expires_ms >= k.submitted_ms);
    }
    for t in s.tasks.values() {
        let (Some(key), Some(session)) = (&t.idempotency_key, s.sessions.get(&t.session)) else {
            continue;
        };
        if session.state == SessionState::Open {
            let k = s
                .keys
                .get(&(t.session, idempotency::key_hash(key)))
                .unwrap_or_else(|| panic!("{}: its key {key:?} was forgotten", t.id));
            assert_eq!(k.task, t.id, "key {key:?} names another task");
        }
    }
    // The derived indexes equal the ones rebuilt from the entities alone.
    let mut rebuilt = s.clone();
    rebuilt.rebuild_indexes();
    assert_indexes_equal(s, &rebuilt);
}
