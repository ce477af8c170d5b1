//! The state's encoding: records borrowed or owned encode alike, and a state restored
//! from its records equals the original, indexes included.

use super::invariants::assert_indexes_equal;
use super::*;

#[test]
fn the_state_round_trips_through_its_encoding() {
    let mut w = World::new();
    let s = w.session(2, 1);
    let (a, _b) = (w.miner(3), w.miner(3));
    let t = w.submit(s, "x");
    w.submit_with(s, "y", Some(3), Some("k"));
    w.ack(t, a);
    // A record encodes to the same bytes borrowed or owned.
    for key in [Key::Header, Key::Session(s), Key::Miner(a), Key::Task(t)] {
        assert_eq!(
            w.s.record_bytes(key),
            w.s.record(key).map(|r| crate::codec::encode_record(&r))
        );
    }
    let restored = State::decode(&w.s.encode()).unwrap();
    assert_eq!(restored, w.s);
    assert_indexes_equal(&restored, &w.s);
    assert_eq!(restored.encode(), w.s.encode());
}

#[test]
fn a_state_with_keys_queue_deadlines_and_slots_held_again_restores_equal() {
    let mut w = World::new();
    let mut sp = spec(3, 2);
    sp.queue_timeout_ms = 600_000;
    sp.idempotency_window_ms = 2 * RETENTION_MS;
    let s = w.session_with(sp);
    // A purged task whose key is still remembered.
    let gone = w.submit_with(s, "y", Some(1), Some("purged"));
    w.ok(Command::CancelTask { task: gone });
    w.advance(RETENTION_MS);
    assert!(w.s.task(gone).is_none());
    // A task whose lost slot went back to the miner that held it.
    let m = [w.miner(1), w.miner(1), w.miner(1)];
    let t = w.submit_with(s, "x", None, Some("held-again"));
    w.ack(t, m[0]);
    w.ack(t, m[1]);
    w.advance(ACK_MS);
    assert_eq!(w.task(t).assignments.len(), 4, "m[2] holds it again");
    // A task waiting in the queue, with a deadline.
    let waiting = w.submit_task(
        s,
        NewTask {
            queue_timeout_ms: Some(5_000),
            ..new_task("z", None, Some("waiting"))
        },
    );
    assert!(w.task(waiting).queue_deadline.is_some());
    assert_eq!(w.s.keys.len(), 3);
    for (sid, hash) in w.s.keys.keys().copied().collect::<Vec<_>>() {
        let key = Key::Idempotency(sid, hash);
        assert_eq!(
            w.s.record_bytes(key),
            w.s.record(key).map(|r| crate::codec::encode_record(&r))
        );
    }
    let restored = State::decode(&w.s.encode()).unwrap();
    assert_eq!(restored, w.s);
    assert_indexes_equal(&restored, &w.s);
    assert_eq!(restored.encode(), w.s.encode());
    let mut records: Vec<Record> =
        w.s.record_keys()
            .map(|k| w.s.record(k).expect("listed keys exist"))
            .collect();
    records.reverse();
    let from_records = State::from_records(records);
    assert_eq!(from_records.encode(), w.s.encode(), "records in any order");
    assert_indexes_equal(&from_records, &w.s);
    // The restored state goes on exactly like the original.
    let mut original = w.s.clone();
    let mut copy = restored;
    for state in [&mut original, &mut copy] {
        let tasks = state.apply(
            &Command::SubmitTasks {
                session: s,
                tasks: vec![new_task("y", Some(1), Some("purged"))],
            },
            w.now,
        );
        assert_eq!(
            tasks.unwrap().response,
            Response::TasksSubmitted {
                tasks: vec![(gone, false)]
            }
        );
        state.apply(&Command::Tick, w.now + 5_000).unwrap();
        assert_eq!(state.task(waiting).unwrap().state, TaskState::Failed);
    }
    assert_eq!(original.encode(), copy.encode());
}
