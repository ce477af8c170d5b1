//! Unit tests of the proposer: how batches are taken, bounded and given back.

use super::*;
use crate::machine::{MinerAuth, MinerId, TaskId};

fn config(max_commands: usize, max_bytes: usize) -> ProposerConfig {
    ProposerConfig {
        max_commands,
        max_bytes,
        max_pending: 1000,
        max_pending_bytes: 1 << 30,
        limits: Limits::default(),
        max_inflight: 1,
        tick: Duration::from_millis(100),
        quorum_lost_after: Duration::from_millis(500),
        lease: Duration::from_millis(300),
    }
}

fn ack(task: u64) -> Command {
    Command::Ack {
        task: TaskId(task),
        auth: MinerAuth {
            miner: MinerId(1),
            token_hash: [0; 32],
        },
    }
}

fn queue(sizes: &[usize]) -> VecDeque<Proposal> {
    let deadline = Instant::now() + Duration::from_secs(10);
    sizes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let commands = (0..*n).map(|j| ack((i * 100 + j) as u64)).collect();
            Proposal::new(commands, deadline, false).0
        })
        .collect()
}

#[test]
fn a_batch_takes_proposals_in_order_up_to_its_bounds() {
    let mut pending = queue(&[2, 3, 1, 4]);
    let (taken, refused) = take_batch(&mut pending, &config(6, 1 << 20), None);
    assert!(refused.is_empty());
    assert_eq!(
        taken.iter().map(|p| p.commands.len()).collect::<Vec<_>>(),
        [2, 3, 1]
    );
    assert!(taken.iter().all(|p| p.fate.maybe_applied()), "marked sent");
    assert_eq!(pending.len(), 1);
    // By encoded bytes: room for five acks besides the entry's framing.
    let ack_bytes = super::super::proposal::encoded_bytes(&[ack(0)]);
    let mut pending = queue(&[4, 1, 1]);
    let bound = ENTRY_FRAMING + 5 * ack_bytes;
    let (taken, _) = take_batch(&mut pending, &config(100, bound), None);
    assert_eq!(taken.len(), 2);
    assert_eq!(pending.len(), 1);
}

#[test]
fn a_full_batch_encodes_to_an_entry_no_larger_than_max_batch_bytes() {
    use crate::raft::types::Entry;
    let max_bytes = 64 << 10;
    let session = crate::machine::SessionId(u64::MAX);
    let submit = |n: usize| Command::SubmitTasks {
        session,
        tasks: vec![crate::machine::NewTask {
            payload: vec![7; n].into(),
            priority: Some(i32::MIN),
            idempotency_key: Some("k".repeat(256)),
            queue_timeout_ms: Some(u64::MAX),
        }],
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending: VecDeque<Proposal> = (0..40)
        .map(|i| Proposal::new(vec![submit(1000 + 37 * i)], deadline, false).0)
        .collect();
    let (taken, _) = take_batch(&mut pending, &config(4096, max_bytes), None);
    assert!(!pending.is_empty(), "the bound was reached");
    let mut commands: Vec<Command> = taken
        .iter()
        .flat_map(|p| p.commands.iter().cloned())
        .collect();
    commands.push(Command::Tick);
    let entry = Entry {
        log_id: openraft::LogId::new(
            openraft::CommittedLeaderId::new(u64::MAX, u64::MAX),
            u64::MAX,
        ),
        payload: openraft::EntryPayload::Normal(Batch {
            now_ms: u64::MAX,
            commands: commands.into(),
            limits: Limits {
                max_state_bytes: u64::MAX - 1,
            },
        }),
    };
    let encoded = crate::codec::encoded_len(&entry);
    assert!(encoded <= max_bytes, "{encoded} > {max_bytes}");
    assert!(
        encoded > max_bytes - 4096,
        "the batch was packed close to the bound"
    );
}

#[test]
fn a_batch_moves_commands_and_gives_each_proposal_its_own_back() {
    let mut taken: Vec<Proposal> = queue(&[2, 3, 1]).into_iter().collect();
    let expected: Vec<Vec<Command>> = taken.iter().map(|p| p.commands.clone()).collect();
    // As propose_here gathers them: moved into one shared list, a tick after.
    let mut all = Vec::new();
    let mut lens = Vec::new();
    for p in taken.iter_mut() {
        lens.push(p.commands.len());
        all.append(&mut p.commands);
    }
    all.push(Command::Tick);
    assert!(
        taken.iter().all(|p| p.commands.is_empty()),
        "moved, not copied"
    );
    let sent = InFlight {
        proposals: taken,
        moved: Some((all.into(), lens)),
    };
    assert_eq!(sent.lens(), [2, 3, 1]);
    let back = sent.put_back();
    let got: Vec<Vec<Command>> = back.iter().map(|p| p.commands.clone()).collect();
    assert_eq!(got, expected);
    // A forwarded batch's proposals kept theirs.
    let kept = InFlight {
        proposals: back,
        moved: None,
    };
    assert_eq!(kept.lens(), [2, 3, 1]);
}

#[test]
fn a_forwarded_batch_encodes_as_one_list_of_commands() {
    let taken: Vec<Proposal> = queue(&[2, 0, 3]).into_iter().collect();
    let list: Vec<Command> = taken
        .iter()
        .flat_map(|p| p.commands.iter().cloned())
        .collect();
    let body = crate::codec::encode(&Concat(&taken));
    assert_eq!(body, crate::codec::encode(&list));
    assert_eq!(crate::codec::decode::<Vec<Command>>(&body), Ok(list));
}

#[test]
fn proposals_whose_callers_gave_up_are_dropped_unsent() {
    let mut pending = queue(&[1, 1, 1]);
    assert!(pending[1].fate.give_up("late").is_some());
    let (taken, _) = take_batch(&mut pending, &config(100, 1 << 20), None);
    assert_eq!(taken.len(), 2);
    assert_eq!(taken[1].commands, vec![ack(200)]);
    assert!(pending.is_empty());
}

#[test]
fn what_the_state_accepts_is_taken_and_ticks_are_never_checked() {
    let state = State::new();
    let limits = Limits::default();
    assert_eq!(all_refused(&state, &[], &limits), None);
    assert_eq!(all_refused(&state, &[Command::Tick], &limits), None);
    // Whatever State::check refuses is set apart with apply's shape of result;
    // what it lets through is proposed.
    let mut pending = queue(&[1, 2]);
    let (taken, refused) = take_batch(&mut pending, &config(100, 1 << 20), Some(&state));
    let expected_refused = [vec![ack(0)], vec![ack(100), ack(101)]]
        .iter()
        .filter(|cmds| cmds.iter().all(|c| state.check(c).is_err()))
        .count();
    assert_eq!(refused.len(), expected_refused);
    assert_eq!(taken.len() + refused.len(), 2);
    for (p, results) in &refused {
        assert_eq!(results.len(), p.commands.len());
        assert!(results.iter().all(Result::is_err));
    }
}
