//! The event window: the most recent task transitions this node applied, each with
//! an id that names it on every node, kept in memory so an event stream can resume
//! where a client left off (on this node or any other).
//!
//! An event's id is `<index>-<pos>`: the log index of the entry that caused it and
//! its position among that entry's events (0-based, over every command of the
//! entry's batch, whatever session). The state machine is a pure function of the
//! log, so the same entry yields the same events in the same order everywhere: ids
//! are the same on every node, and ordered as the log is.
//!
//! The window holds at most `capacity` events; the oldest *entries* leave first,
//! whole, so the window always holds every event of the entries after its floor
//! index and none of those at or below it. A node holds nothing from before it
//! started (its floor is then the index it had applied when it opened its state)
//! nor from before a snapshot it installed (the snapshot's index).
//!
//! Why the window is also the live stream (rather than a broadcast channel beside
//! it): a subscriber is just a cursor into it, so resuming, following live and
//! falling behind are one mechanism, and nothing can be missed or sent twice between
//! a replay and the live part. Every event gets a sequence number (`seq`, this
//! node's own, never on the wire) and the sequence number of the next event is
//! published on a `watch`, which wakes subscribers. A subscriber whose cursor the
//! window evicted is told it lagged; one from before a snapshot install, to resync.
//!
//! Recording costs one lock and a push per event, always (not only while someone
//! listens): a client may resume on a node it never listened to.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::machine::{Event, SessionId};

/// The default number of events a window holds (about 64 bytes each).
pub const DEFAULT_CAPACITY: usize = 65_536;

/// The most events one [`EventWindow::read`] scans, so a reader far behind never
/// holds the lock (and apply) for long.
const SCAN_LIMIT: usize = 4096;

/// The id of an event: its entry's log index and its position among that entry's
/// events. Ordered as the log is. Written `<index>-<pos>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub index: u64,
    pub pos: u32,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.index, self.pos)
    }
}

impl FromStr for EventId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("bad event id {text:?}: expected <log index>-<position>, e.g. 42-0");
        let (index, pos) = text.trim().split_once('-').ok_or_else(bad)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(index) || !digits(pos) {
            return Err(bad());
        }
        Ok(EventId {
            index: index.parse().map_err(|_| bad())?,
            pos: pos.parse().map_err(|_| bad())?,
        })
    }
}

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub id: EventId,
    pub event: Event,
}

/// Where a new subscriber starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// At this sequence number: the first event after the requested id (or, with
    /// none requested, the next event to be applied).
    At(u64),
    /// The window no longer holds every event after the requested id: the client
    /// must re-read what it cares about. It holds the events of entries after
    /// `floor`; the subscriber goes on with the next event to be applied, `next`.
    Resync { floor: u64, next: u64 },
}

/// What a subscriber gets from one read at its cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// The matching events at and after the cursor (maybe none), and where to read
    /// next.
    Events { events: Vec<Recorded>, next: u64 },
    /// The window evicted `missed` events the cursor had not reached; reading goes on
    /// from the oldest one it holds, `next`.
    Lagged { missed: u64, next: u64 },
    /// A snapshot up to `index` replaced the state since the cursor: the events in
    /// between were never applied here one by one. Reading goes on at `next`.
    Resync { index: u64, next: u64 },
}

struct Inner {
    capacity: usize,
    events: VecDeque<Recorded>,
    /// Sequence number of `events[0]` (or of the next event when empty).
    first_seq: u64,
    /// Every event of the entries after this index is held (or still to come); none
    /// at or below it.
    floor: u64,
    /// The last position of the evicted entry `floor`, when the window evicted it
    /// (rather than starting above it): a client that saw it lost nothing of it.
    floor_last_pos: Option<u32>,
    /// The sequence number a snapshot install used up (none is an event), and the
    /// snapshot's index: a cursor at or below it must resync.
    reset: Option<(u64, u64)>,
}

impl Inner {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.events.len() as u64
    }

    /// Whether every event after `after` is held (or still to come).
    fn covers(&self, after: EventId) -> bool {
        after.index > self.floor
            || (after.index == self.floor && self.floor_last_pos.is_some_and(|p| after.pos >= p))
    }

    /// Evicts whole entries, oldest first, until at most `capacity` events remain.
    fn trim(&mut self) {
        while self.events.len() > self.capacity {
            let Some(oldest) = self.events.front().map(|r| r.id.index) else {
                break;
            };
            while let Some(front) = self.events.front() {
                if front.id.index != oldest {
                    break;
                }
                self.floor_last_pos = Some(front.id.pos);
                self.events.pop_front();
                self.first_seq += 1;
            }
            self.floor = oldest;
        }
    }
}

/// The recent events of one node.
pub struct EventWindow {
    inner: Mutex<Inner>,
    next: watch::Sender<u64>,
}

impl EventWindow {
    /// An empty window over a state applied up to `applied`.
    pub fn new(capacity: usize, applied: u64) -> Self {
        EventWindow {
            inner: Mutex::new(Inner {
                capacity: capacity.max(1),
                events: VecDeque::new(),
                first_seq: 0,
                floor: applied,
                floor_last_pos: None,
                reset: None,
            }),
            next: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets how many events the window holds (`--event-window`).
    pub fn set_capacity(&self, capacity: usize) {
        let mut inner = self.lock();
        inner.capacity = capacity.max(1);
        inner.trim();
    }

    /// Records the events of applied entries, in log order, and wakes subscribers.
    pub fn record(&self, events: impl IntoIterator<Item = Recorded>) {
        let next = {
            let mut inner = self.lock();
            let before = inner.next_seq();
            inner.events.extend(events);
            if inner.next_seq() == before {
                return;
            }
            inner.trim();
            inner.next_seq()
        };
        self.next.send_replace(next);
    }

    /// Forgets every event: a snapshot up to `index` replaced the state.
    pub fn reset(&self, index: u64) {
        let next = {
            let mut inner = self.lock();
            let used = inner.next_seq();
            inner.events.clear();
            inner.first_seq = used + 1;
            inner.floor = index;
            inner.floor_last_pos = None;
            inner.reset = Some((used, index));
            inner.next_seq()
        };
        self.next.send_replace(next);
    }

    /// The sequence number of the next event, as it changes. Take it before
    /// [`Self::start`] and wait on it for `> cursor`: nothing is missed in between.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.next.subscribe()
    }

    /// Where a subscriber resuming after `after` (or starting now, with `None`)
    /// begins.
    pub fn start(&self, after: Option<EventId>) -> Start {
        let inner = self.lock();
        let next = inner.next_seq();
        let Some(after) = after else {
            return Start::At(next);
        };
        if !inner.covers(after) {
            return Start::Resync {
                floor: inner.floor,
                next,
            };
        }
        let skip = inner.events.partition_point(|r| r.id <= after);
        Start::At(inner.first_seq + skip as u64)
    }

    /// The events of `session` from sequence number `cursor` on (at most a bounded
    /// scan), or why the cursor cannot go on as it is.
    pub fn read(&self, cursor: u64, session: SessionId) -> Read {
        let inner = self.lock();
        if let Some((used, index)) = inner.reset {
            if cursor <= used {
                return Read::Resync {
                    index,
                    next: inner.next_seq(),
                };
            }
        }
        if cursor < inner.first_seq {
            return Read::Lagged {
                missed: inner.first_seq - cursor,
                next: inner.first_seq,
            };
        }
        let from = (cursor - inner.first_seq) as usize;
        let to = inner.events.len().min(from.saturating_add(SCAN_LIMIT));
        let events = inner
            .events
            .range(from.min(to)..to)
            .filter(|r| r.event.session == session)
            .cloned()
            .collect();
        Read::Events {
            events,
            next: inner.first_seq + to as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{EventKind, TaskId, TaskState};

    fn event(session: u64, task: u64) -> Event {
        Event {
            task: TaskId(task),
            session: SessionId(session),
            state: TaskState::Queued,
            miner: None,
            what: EventKind::Submitted,
            at_ms: 0,
        }
    }

    fn rec(index: u64, pos: u32, session: u64) -> Recorded {
        Recorded {
            id: EventId { index, pos },
            event: event(session, index * 10 + pos as u64),
        }
    }

    fn ids(read: Read) -> (Vec<String>, u64) {
        match read {
            Read::Events { events, next } => {
                (events.iter().map(|r| r.id.to_string()).collect(), next)
            }
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[test]
    fn ids_print_and_parse_and_bad_ones_are_refused() {
        let id: EventId = "42-3".parse().unwrap();
        assert_eq!(id, EventId { index: 42, pos: 3 });
        assert_eq!(id.to_string(), "42-3");
        for bad in [
            "",
            "42",
            "42-",
            "-3",
            "a-b",
            "4 2-1",
            "1-2-3",
            "+1-2",
            "1--2",
            "99999999999999999999-0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
        assert!("1-0".parse::<EventId>().unwrap() < "1-1".parse().unwrap());
        assert!("1-9".parse::<EventId>().unwrap() < "2-0".parse().unwrap());
    }

    #[test]
    fn a_resume_gets_exactly_the_events_after_its_id_for_its_session() {
        let w = EventWindow::new(100, 10);
        w.record([rec(11, 0, 1), rec(11, 1, 2), rec(11, 2, 1), rec(12, 0, 1)]);
        let Start::At(seq) = w.start(Some(EventId { index: 11, pos: 0 })) else {
            panic!()
        };
        assert_eq!(
            ids(w.read(seq, SessionId(1))),
            (vec!["11-2".into(), "12-0".into()], 4)
        );
        // Live from now: nothing yet, then what comes.
        let Start::At(now) = w.start(None) else {
            panic!()
        };
        assert_eq!(ids(w.read(now, SessionId(1))), (vec![], 4));
        w.record([rec(13, 0, 1)]);
        assert_eq!(ids(w.read(now, SessionId(1))), (vec!["13-0".into()], 5));
        // An id past everything held (a client coming from a node further ahead)
        // starts after the newest event.
        assert_eq!(w.start(Some(EventId { index: 50, pos: 0 })), Start::At(5));
    }

    #[test]
    fn ids_from_before_the_window_resync_and_whole_entries_leave() {
        let w = EventWindow::new(3, 10);
        // At or below the index the node started from: unknown, resync.
        assert_eq!(
            w.start(Some(EventId { index: 10, pos: 0 })),
            Start::Resync { floor: 10, next: 0 }
        );
        w.record([rec(11, 0, 1), rec(11, 1, 1), rec(12, 0, 1), rec(12, 1, 1)]);
        // Entry 11 left whole: the window holds 12-0 and 12-1 only.
        assert_eq!(
            ids(w.read(2, SessionId(1))),
            (vec!["12-0".into(), "12-1".into()], 4)
        );
        assert_eq!(
            w.start(Some(EventId { index: 11, pos: 0 })),
            Start::Resync { floor: 11, next: 4 }
        );
        // Whoever saw the last event of entry 11 lost nothing.
        assert_eq!(w.start(Some(EventId { index: 11, pos: 1 })), Start::At(2));
        // A reader whose cursor was evicted lagged.
        assert_eq!(w.read(0, SessionId(1)), Read::Lagged { missed: 2, next: 2 });
    }

    #[test]
    fn a_snapshot_install_resyncs_readers_and_forgets_the_window() {
        let w = EventWindow::new(100, 0);
        w.record([rec(1, 0, 1)]);
        let rx = w.watch();
        w.reset(500);
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            w.read(1, SessionId(1)),
            Read::Resync {
                index: 500,
                next: 2
            }
        );
        assert_eq!(
            w.start(Some(EventId { index: 1, pos: 0 })),
            Start::Resync {
                floor: 500,
                next: 2
            }
        );
        w.record([rec(501, 0, 1)]);
        assert_eq!(ids(w.read(2, SessionId(1))), (vec!["501-0".into()], 3));
        assert_eq!(
            w.start(Some(EventId { index: 500, pos: 7 })),
            Start::Resync {
                floor: 500,
                next: 3
            }
        );
        assert_eq!(w.start(Some(EventId { index: 501, pos: 0 })), Start::At(3));
    }
}
