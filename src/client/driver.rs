//! How a simulated miner drives each of its assignments: what it knows of each one (a
//! [`Track`], kept in a [`Book`]), what a new assignment list changes in that, and the
//! steps it takes (ack, precommit, reveal); [`super::drive`] takes them over HTTP.
//!
//! The rules of a good client live here:
//! - a step is taken only when the list says it is open (the task's state tells whether
//!   the precommit phase has opened or closed), so a miner is rarely refused;
//! - a refused step (409, or another 4xx) parks the assignment until the list shows a
//!   change for it, and the next attempt waits out a growing backoff: the miner never
//!   repeats a refused write at once;
//! - a step that got no answer, or 429 or 5xx, is retried after a growing backoff;
//! - a list may lag the miner's own writes (a follower answered the poll, the leader
//!   the write): a slot never moves back, so a list showing it behind what the miner
//!   already knows is stale and ignored; a later `assigned_ms` is a new slot;
//! - a precommit's output and nonce are chosen once per slot and kept, so a precommit
//!   whose answer was lost can still be revealed.
//!
//! [`Book`] does no I/O, so these rules are tested directly below.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::backoff::Backoff;
use super::miner::{MinerSpec, MinerStats};
use super::Client;

/// Retries of a refused or failed step: 100 ms, doubling, at most 10 s.
const STEP_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
/// An assignment missing from the lists this long is forgotten, even with a secret.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Where a miner's slot is; slots only move forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Slot {
    Assigned,
    Acked,
    Precommitted,
    Committed,
    /// Expired, rejected, or a state this client does not know: nothing to do.
    Over,
}

impl Slot {
    fn parse(s: &str) -> Slot {
        match s {
            "assigned" => Slot::Assigned,
            "acked" => Slot::Acked,
            "precommitted" => Slot::Precommitted,
            "committed" => Slot::Committed,
            _ => Slot::Over,
        }
    }
}

/// An assignment as the miner knows it: its slot and its task's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct View {
    pub slot: Slot,
    pub task_state: String,
}

impl View {
    pub fn new(slot: Slot, task_state: &str) -> Self {
        View {
            slot,
            task_state: task_state.to_string(),
        }
    }
}

/// One step a miner can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Ack,
    Precommit,
    Reveal,
}

/// The step open to the miner, if any: ack an assigned slot; precommit once the
/// precommit phase has opened (the task is no longer `queued`); reveal once it has
/// closed (`precommitted` or `committed`), with the secret of the precommit.
pub(super) fn next_step(view: &View, has_secret: bool) -> Option<Step> {
    match view.slot {
        Slot::Assigned => Some(Step::Ack),
        Slot::Acked if view.task_state != "queued" => Some(Step::Precommit),
        Slot::Precommitted
            if has_secret && matches!(view.task_state.as_str(), "precommitted" | "committed") =>
        {
            Some(Step::Reveal)
        }
        _ => None,
    }
}

/// The output and nonce of a slot's precommit.
pub(super) type Secret = (Vec<u8>, Vec<u8>);

/// One entry of an assignment list.
#[derive(Clone, Debug)]
pub(super) struct Listed {
    pub task: String,
    /// When the slot was assigned: a later one is a new slot of the same task.
    pub slot_ms: u64,
    pub view: View,
    /// The task's payload, base64.
    pub payload: String,
}

/// `GET /v1/miners/{id}/assignments`, as the miner reads it: typed, so a poll costs
/// one parse into these structs and no `serde_json::Value` tree.
#[derive(Debug, Deserialize)]
pub(super) struct Page {
    #[serde(default)]
    assignments: Vec<PageEntry>,
    /// Pass as `after` to wait for the next change.
    pub applied_index: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct PageEntry {
    task_id: String,
    state: String,
    #[serde(default)]
    task_state: Option<String>,
    #[serde(default)]
    assigned_ms: Option<u64>,
    #[serde(default)]
    payload: Option<String>,
}

impl Page {
    /// How many entries it carries.
    pub fn len(&self) -> usize {
        self.assignments.len()
    }

    /// Its entries, as the book takes them.
    pub fn into_list(self) -> Vec<Listed> {
        self.assignments
            .into_iter()
            .map(|a| Listed {
                view: View::new(
                    Slot::parse(&a.state),
                    a.task_state.as_deref().unwrap_or_default(),
                ),
                task: a.task_id,
                slot_ms: a.assigned_ms.unwrap_or(0),
                payload: a.payload.unwrap_or_default(),
            })
            .collect()
    }
}

/// The answer to a step (`TaskUpdated`): the task's state after it.
#[derive(Debug, Deserialize)]
pub(super) struct Updated {
    #[serde(default)]
    pub state: String,
}

/// The bodies of the steps.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum StepBody {
    Ack {},
    Precommit { hash: String },
    Reveal { output: String, nonce: String },
}

/// What the miner knows of one assignment.
#[derive(Debug)]
struct Track {
    slot_ms: u64,
    view: Option<View>,
    /// The newest listed view seen while a drive was running.
    listed: Option<View>,
    payload: String,
    secret: Option<Secret>,
    /// Something is open to do (or to retry) once `retry_at` has passed.
    want: bool,
    running: bool,
    /// This slot is ignored on purpose ([`MinerSpec::ignore_first`]).
    ignored: bool,
    /// The miner's part is over (revealed, or its reveal was rejected).
    done: bool,
    retry_at: Option<Instant>,
    backoff: Backoff,
    last_listed: Instant,
}

impl Track {
    fn new(slot_ms: u64, payload: String, now: Instant) -> Self {
        Track {
            slot_ms,
            view: None,
            listed: None,
            payload,
            secret: None,
            want: false,
            running: false,
            ignored: false,
            done: false,
            retry_at: None,
            backoff: STEP_BACKOFF,
            last_listed: now,
        }
    }

    /// Takes in a listed view of this slot (not while a drive runs).
    fn consider(&mut self, listed: View) {
        if self.ignored {
            return;
        }
        if let Some(known) = &self.view {
            // Nothing new; or a list older than what the miner's own writes told it.
            if *known == listed || listed.slot < known.slot {
                return;
            }
        }
        self.done = false;
        self.want = next_step(&listed, self.secret.is_some()).is_some();
        self.view = Some(listed);
    }
}

/// One drive of one assignment: as many steps as are open now.
#[derive(Debug)]
pub(super) struct Drive {
    pub task: String,
    pub slot_ms: u64,
    pub view: View,
    pub payload: String,
    pub secret: Option<Secret>,
}

/// How a drive ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// No step is open any more (some may have been taken).
    Idle,
    /// The miner's part is over: revealed, or its reveal was rejected (422).
    Finished,
    /// A step was refused (409 or another 4xx): wait for the list to change.
    Refused,
    /// A step got no answer, or 429 or 5xx: retry later.
    Failed,
    /// The cluster says this miner is gone (or does not know it).
    Gone(String),
}

/// The end of a drive: what the miner knows now.
#[derive(Debug)]
pub(super) struct DriveEnd {
    pub task: String,
    pub slot_ms: u64,
    pub view: View,
    pub secret: Option<Secret>,
    /// At least one step was answered with success.
    pub wrote: bool,
    pub outcome: Outcome,
}

/// Every assignment the miner is following.
#[derive(Debug, Default)]
pub(super) struct Book {
    tracks: HashMap<String, Track>,
    /// New slots still to be ignored on purpose.
    ignore_left: u32,
    /// New slots seen in lists, all told.
    pub new_slots: u64,
}

impl Book {
    pub fn new(ignore_first: u32) -> Self {
        Book {
            tracks: HashMap::new(),
            ignore_left: ignore_first,
            new_slots: 0,
        }
    }

    /// Takes in a fresh assignment list. Returns how many new slots it ignores on
    /// purpose.
    pub fn on_list(&mut self, list: Vec<Listed>, now: Instant) -> u32 {
        let mut present = std::collections::HashSet::with_capacity(list.len());
        let before = self.ignore_left;
        let ignore_left = &mut self.ignore_left;
        // The first slots seen are ignored on purpose, when the miner is told to.
        let mut ignore = |view: &View| {
            let yes = *ignore_left > 0 && view.slot == Slot::Assigned;
            if yes {
                *ignore_left -= 1;
            }
            yes
        };
        for entry in list {
            present.insert(entry.task.clone());
            let track = match self.tracks.entry(entry.task) {
                Entry::Vacant(v) => {
                    self.new_slots += 1;
                    let mut track = Track::new(entry.slot_ms, entry.payload, now);
                    track.ignored = ignore(&entry.view);
                    v.insert(track)
                }
                Entry::Occupied(o) => {
                    let track = o.into_mut();
                    if entry.slot_ms < track.slot_ms {
                        continue; // a list older than the slot the miner follows
                    }
                    if entry.slot_ms > track.slot_ms {
                        // A new slot of the same task: start over (a drive still
                        // running for the old slot is disregarded when it ends).
                        self.new_slots += 1;
                        let running = track.running;
                        *track = Track::new(entry.slot_ms, entry.payload, now);
                        track.running = running;
                        track.ignored = ignore(&entry.view);
                    }
                    track
                }
            };
            track.last_listed = now;
            if track.running {
                track.listed = Some(entry.view);
            } else {
                track.consider(entry.view);
            }
        }
        self.tracks.retain(|task, t| {
            present.contains(task)
                || t.running
                || (!t.done
                    && !t.ignored
                    && t.secret.is_some()
                    && now.duration_since(t.last_listed) < FORGET_AFTER)
        });
        before - self.ignore_left
    }

    /// The drives due now (marked running), and when the next one falls due.
    pub fn due(&mut self, now: Instant) -> (Vec<Drive>, Option<Instant>) {
        let mut drives = Vec::new();
        let mut next: Option<Instant> = None;
        for (task, t) in self.tracks.iter_mut() {
            if !t.want || t.running || t.ignored {
                continue;
            }
            let Some(view) = t.view.clone() else {
                continue;
            };
            match t.retry_at {
                Some(at) if at > now => {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
                _ => {
                    t.running = true;
                    t.want = false;
                    t.listed = None;
                    drives.push(Drive {
                        task: task.clone(),
                        slot_ms: t.slot_ms,
                        view,
                        payload: t.payload.clone(),
                        secret: t.secret.clone(),
                    });
                }
            }
        }
        (drives, next)
    }

    /// Takes in the end of a drive. Returns why the miner is gone, if it is.
    pub fn on_end(&mut self, end: DriveEnd, now: Instant) -> Option<String> {
        if let Outcome::Gone(reason) = end.outcome {
            return Some(reason);
        }
        let track = self.tracks.get_mut(&end.task)?;
        track.running = false;
        let listed = track.listed.take();
        if end.slot_ms == track.slot_ms {
            if end.secret.is_some() {
                track.secret = end.secret;
            }
            track.view = Some(end.view);
            if end.wrote {
                track.backoff.reset();
                track.retry_at = None;
            }
            match end.outcome {
                Outcome::Idle => track.want = false,
                Outcome::Finished => {
                    track.want = false;
                    track.done = true;
                }
                Outcome::Refused => {
                    track.want = false;
                    track.retry_at = Some(now + track.backoff.fail());
                }
                Outcome::Failed => {
                    track.want = true;
                    track.retry_at = Some(now + track.backoff.fail());
                }
                Outcome::Gone(_) => unreachable!("handled above"),
            }
        }
        if let Some(view) = listed {
            track.consider(view);
        }
        None
    }

    /// Assignments followed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.tracks.len()
    }
}

/// What every drive of one miner shares.
pub(super) struct Ctx {
    pub client: Client,
    /// The miner's id (the path of its steps calls).
    pub id: String,
    pub token: String,
    pub spec: MinerSpec,
    pub stats: Arc<MinerStats>,
}

impl Step {
    /// Its name in the API: the single-step route's last segment, and a steps
    /// call's `op`.
    pub(super) fn op(self) -> &'static str {
        match self {
            Step::Ack => "ack",
            Step::Precommit => "precommit",
            Step::Reveal => "commit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::b64;

    fn listed(task: &str, slot_ms: u64, slot: Slot, task_state: &str) -> Listed {
        Listed {
            task: task.into(),
            slot_ms,
            view: View::new(slot, task_state),
            payload: b64(b"p"),
        }
    }

    fn end(d: &Drive, view: View, wrote: bool, outcome: Outcome) -> DriveEnd {
        DriveEnd {
            task: d.task.clone(),
            slot_ms: d.slot_ms,
            view,
            secret: d.secret.clone(),
            wrote,
            outcome,
        }
    }

    #[test]
    fn steps_open_with_the_phase() {
        use Slot::*;
        assert_eq!(
            next_step(&View::new(Assigned, "queued"), false),
            Some(Step::Ack)
        );
        assert_eq!(next_step(&View::new(Acked, "queued"), false), None);
        assert_eq!(
            next_step(&View::new(Acked, "acked"), false),
            Some(Step::Precommit)
        );
        assert_eq!(next_step(&View::new(Precommitted, "acked"), true), None);
        assert_eq!(
            next_step(&View::new(Precommitted, "precommitted"), true),
            Some(Step::Reveal)
        );
        assert_eq!(
            next_step(&View::new(Precommitted, "committed"), false),
            None
        );
        assert_eq!(next_step(&View::new(Over, "committed"), true), None);
    }

    #[test]
    fn a_refused_step_waits_for_a_change_and_then_for_its_backoff() {
        let t0 = Instant::now();
        let mut book = Book::new(0);
        book.on_list(vec![listed("t-1", 5, Slot::Acked, "acked")], t0);
        let (drives, _) = book.due(t0);
        assert_eq!(drives.len(), 1);
        let d = &drives[0];
        let e = end(d, d.view.clone(), false, Outcome::Refused);
        assert_eq!(book.on_end(e, t0), None);
        // The same list again, however often and however late: nothing to do.
        for s in [0, 1, 60] {
            let at = t0 + Duration::from_secs(s);
            book.on_list(vec![listed("t-1", 5, Slot::Acked, "acked")], at);
            let (drives, next) = book.due(at);
            assert!(
                drives.is_empty() && next.is_none(),
                "retried a refused step"
            );
        }
        // A change: due again, but only after the backoff.
        let t1 = t0 + Duration::from_millis(1);
        book.on_list(vec![listed("t-1", 5, Slot::Acked, "precommitted")], t1);
        let (drives, next) = book.due(t1);
        assert!(drives.is_empty(), "a change must not cut the backoff short");
        let at = next.expect("due later");
        assert!(at > t1 && at <= t0 + Duration::from_millis(100));
        let (drives, _) = book.due(at);
        assert_eq!(drives.len(), 1);
    }

    #[test]
    fn failed_steps_back_off_exponentially_and_a_success_resets() {
        let t0 = Instant::now();
        let mut book = Book::new(0);
        book.on_list(vec![listed("t-1", 5, Slot::Assigned, "queued")], t0);
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            let (drives, next) = book.due(now);
            let d = match drives.into_iter().next() {
                Some(d) => d,
                None => {
                    let at = next.expect("a failed step is retried");
                    gaps.push(at - now);
                    now = at;
                    book.due(now).0.into_iter().next().expect("due")
                }
            };
            let e = end(&d, d.view.clone(), false, Outcome::Failed);
            book.on_end(e, now);
        }
        assert_eq!(gaps.len(), 5);
        // Nominal 100, 200, 400, 800, 1600 ms, each drawn from its upper half.
        for (i, gap) in gaps.iter().enumerate() {
            let nominal = Duration::from_millis(100 << i);
            assert!(*gap >= nominal / 2 && *gap <= nominal, "{gaps:?}");
        }
        // It finally answers: the next refusal starts from 100 ms again.
        let at = now + Duration::from_secs(10);
        let d = book.due(at).0.into_iter().next().expect("due");
        let e = end(&d, View::new(Slot::Acked, "acked"), true, Outcome::Refused);
        book.on_end(e, at);
        book.on_list(vec![listed("t-1", 5, Slot::Acked, "precommitted")], at);
        let next = book.due(at).1.expect("after the backoff");
        assert!(next - at <= Duration::from_millis(100));
    }

    #[test]
    fn a_list_behind_the_miners_own_writes_is_ignored() {
        let t0 = Instant::now();
        let mut book = Book::new(0);
        book.on_list(vec![listed("t-1", 5, Slot::Assigned, "queued")], t0);
        let d = book.due(t0).0.pop().expect("ack due");
        // A list read while the drive ran, before its ack was applied there.
        book.on_list(vec![listed("t-1", 5, Slot::Assigned, "queued")], t0);
        let mut e = end(
            &d,
            View::new(Slot::Committed, "completed"),
            true,
            Outcome::Finished,
        );
        e.secret = Some((b"o".to_vec(), b"n".to_vec()));
        book.on_end(e, t0);
        assert!(book.due(t0).0.is_empty(), "acked again from a stale list");
        book.on_list(
            vec![listed("t-1", 5, Slot::Precommitted, "precommitted")],
            t0,
        );
        assert!(
            book.due(t0).0.is_empty(),
            "revealed twice from a stale list"
        );
        // The slot left the list: it is forgotten.
        book.on_list(vec![], t0);
        assert_eq!(book.len(), 0);
    }

    #[test]
    fn a_new_slot_of_the_same_task_starts_over() {
        let t0 = Instant::now();
        let mut book = Book::new(0);
        book.on_list(vec![listed("t-1", 5, Slot::Assigned, "queued")], t0);
        let d = book.due(t0).0.pop().expect("ack due");
        let e = end(&d, View::new(Slot::Acked, "queued"), true, Outcome::Idle);
        book.on_end(e, t0);
        // The slot expired and the task came back to this miner: a later assigned_ms.
        book.on_list(vec![listed("t-1", 9, Slot::Assigned, "queued")], t0);
        let d = book.due(t0).0.pop().expect("the new slot is acked");
        assert_eq!(d.slot_ms, 9);
        assert!(d.secret.is_none());
    }

    #[test]
    fn ignored_slots_are_never_driven_and_later_ones_are() {
        let t0 = Instant::now();
        let mut book = Book::new(1);
        book.on_list(vec![listed("t-1", 5, Slot::Assigned, "queued")], t0);
        assert!(book.due(t0).0.is_empty());
        book.on_list(vec![listed("t-1", 5, Slot::Assigned, "queued")], t0);
        assert!(book.due(t0).0.is_empty());
        book.on_list(
            vec![
                listed("t-1", 8, Slot::Assigned, "queued"),
                listed("t-2", 8, Slot::Assigned, "queued"),
            ],
            t0,
        );
        assert_eq!(book.due(t0).0.len(), 2, "only the first slot is ignored");
    }

    #[test]
    fn a_change_seen_while_driving_is_taken_in_at_the_end() {
        let t0 = Instant::now();
        let mut book = Book::new(0);
        book.on_list(vec![listed("t-1", 5, Slot::Assigned, "queued")], t0);
        let d = book.due(t0).0.pop().expect("ack due");
        // Meanwhile the other miners acked: the phase is open.
        book.on_list(vec![listed("t-1", 5, Slot::Acked, "acked")], t0);
        let mut e = end(&d, View::new(Slot::Acked, "queued"), true, Outcome::Idle);
        e.secret = Some((b"o".to_vec(), b"n".to_vec()));
        book.on_end(e, t0);
        let d = book.due(t0).0.pop().expect("precommit due");
        assert_eq!(d.view, View::new(Slot::Acked, "acked"));
        assert!(
            d.secret.is_some(),
            "the secret computed after the ack is kept"
        );
    }

    #[test]
    fn an_assignments_answer_and_the_step_bodies_are_typed() {
        let page: Page = serde_json::from_str(
            r#"{"assignments":[{"task_id":"t-7","session_id":"s-1","payload":"cA==",
                "state":"acked","task_state":"acked","assigned_ms":42},
               {"task_id":"t-8","session_id":"s-1","payload":null,"state":"expired",
                "task_state":"queued","assigned_ms":null}],
               "next_after_task":null,"applied_index":99}"#,
        )
        .expect("an assignments page");
        assert_eq!(page.applied_index, Some(99));
        assert_eq!(page.len(), 2);
        let list = page.into_list();
        assert_eq!(list[0].task, "t-7");
        assert_eq!(list[0].slot_ms, 42);
        assert_eq!(list[0].view, View::new(Slot::Acked, "acked"));
        assert_eq!(list[0].payload, "cA==");
        assert_eq!(list[1].view.slot, Slot::Over);
        assert_eq!(list[1].payload, "");
        let json = |b: &StepBody| serde_json::to_string(b).unwrap();
        assert_eq!(json(&StepBody::Ack {}), "{}");
        assert_eq!(
            json(&StepBody::Precommit { hash: "ab".into() }),
            r#"{"hash":"ab"}"#
        );
        assert_eq!(
            json(&StepBody::Reveal {
                output: "o".into(),
                nonce: "n".into()
            }),
            r#"{"output":"o","nonce":"n"}"#
        );
    }

    #[test]
    fn gone_ends_the_miner() {
        let t0 = Instant::now();
        let mut book = Book::new(0);
        book.on_list(vec![listed("t-1", 5, Slot::Assigned, "queued")], t0);
        let d = book.due(t0).0.pop().expect("ack due");
        let e = end(&d, d.view.clone(), false, Outcome::Gone("409: gone".into()));
        assert_eq!(book.on_end(e, t0).as_deref(), Some("409: gone"));
    }
}
