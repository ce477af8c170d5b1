//! Bounds on growth that the leader checks before it proposes a command, and that
//! apply never checks: a new session once the state is at `--max-state-bytes`, a
//! new miner once the pool holds [`limits::MAX_MINERS`].
//!
//! Why not at apply, like the bound on new tasks: a rule apply checks decides what
//! a log entry does, so adding one changes how an existing log replays. A node of
//! this version replaying entries an older leader accepted (after a restart, or
//! beside older nodes during a rolling upgrade) would refuse a session the others
//! created, and every later session id would differ between replicas. Checked only
//! before proposing, the rule never changes what a committed entry does, on any
//! version: apply is the same function of the log as before.
//!
//! The price: the bound is checked against the applied state, not counting
//! commands already proposed but not yet applied, so it can be passed by what is in
//! flight (at most the proposer's pending commands, `--max-pending-proposals`), and
//! a leader whose state is not yet caught up after an election proposes unchecked
//! for that moment. Sessions and miners are 2 KiB each in the state's count, so the
//! overshoot stays small next to the bound.

use super::command::{Command, Limits};
use super::footprint;
use super::{limits, Rejection, State};

impl State {
    /// Whether proposing `cmd` would grow the state past a bound on proposals (see
    /// the module doc); `Ok` for every command these bounds do not concern.
    pub fn bound_growth(&self, cmd: &Command, bounds: &Limits) -> Result<(), Rejection> {
        match cmd {
            Command::CreateSession(_) => {
                let held = self.state_bytes();
                if held.saturating_add(footprint::SESSION_BYTES) > bounds.max_state_bytes {
                    return Err(Rejection::StateFull(format!(
                        "the cluster's state holds about {held} bytes; a new session would \
                         pass its --max-state-bytes of {}; nothing was written: retry once \
                         finished tasks and closed sessions have been purged",
                        bounds.max_state_bytes
                    )));
                }
                Ok(())
            }
            Command::RegisterMiner { .. } if self.miners.len() >= limits::MAX_MINERS => {
                Err(Rejection::StateFull(format!(
                    "the pool holds {} miners (gone ones until they are forgotten, an hour \
                     after they went), the most it may; nothing was written: retry later",
                    self.miners.len()
                )))
            }
            _ => Ok(()),
        }
    }
}
