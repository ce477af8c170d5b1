//! Admission to the proposer: what may wait for a Raft entry, decided at the door.
//!
//! Two bounds, each answered at once and with nothing written:
//! - **entry size**: no Raft entry is larger than `--max-batch-bytes`. A proposal
//!   (one command from the API, or a follower's forwarded batch) whose encoded size
//!   would not fit in one entry beside the entry's own framing can never be
//!   proposed, so it is refused as too large (413), all or nothing;
//! - **overload**: the proposals waiting in the proposer (queued, or in a batch on
//!   its way) are bounded by count (`--max-pending-proposals`) and by encoded bytes
//!   (`--max-pending-bytes`). Past either bound a new proposal is refused as
//!   overloaded (429 with `Retry-After`) instead of queueing without limit: a burst
//!   beyond what the log can take is pushed back to the clients, and the node's
//!   memory stays bounded.
//!
//! An [`Admitted`] ticket travels inside its proposal and gives its share back when
//! the proposal is dropped (answered, given up, or refused from the applied state).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::proposer::ProposeError;

/// Bytes of a Raft entry that are not its commands: the log id, the entry's kind,
/// the batch's time, limits and command count, a tick, and the version byte. The
/// commands of one entry may take `--max-batch-bytes` less this.
pub const ENTRY_FRAMING: usize = 128;

/// The bounds of one node's proposer.
#[derive(Clone, Copy, Debug)]
pub struct AdmissionLimits {
    /// Most proposals waiting at once.
    pub max_pending: usize,
    /// Most encoded bytes of proposals waiting at once.
    pub max_pending_bytes: usize,
    /// Largest Raft entry (`--max-batch-bytes`).
    pub max_entry_bytes: usize,
}

impl AdmissionLimits {
    /// The most bytes of commands one entry may carry.
    pub fn max_command_bytes(&self) -> usize {
        self.max_entry_bytes.saturating_sub(ENTRY_FRAMING)
    }
}

/// What is waiting now, against the bounds.
pub struct Admission {
    limits: AdmissionLimits,
    count: AtomicUsize,
    bytes: AtomicUsize,
}

/// One admitted proposal's share of the bounds, given back on drop.
pub struct Admitted {
    admission: Arc<Admission>,
    bytes: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.count.fetch_sub(1, Ordering::AcqRel);
        self.admission.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            count: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        })
    }

    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Proposals and bytes waiting now.
    pub fn pending(&self) -> (usize, usize) {
        (
            self.count.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }

    /// Admits a proposal of `bytes` encoded bytes, or says why not.
    pub fn admit(self: &Arc<Self>, bytes: usize) -> Result<Admitted, ProposeError> {
        let most = self.limits.max_command_bytes();
        if bytes > most {
            return Err(ProposeError::TooLarge(format!(
                "the write encodes to {bytes} bytes, more than one Raft entry carries \
                 ({most} bytes of commands under --max-batch-bytes of {}); nothing was \
                 written: split it into smaller submits",
                self.limits.max_entry_bytes
            )));
        }
        let count = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        let total = self.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        // From here on the ticket gives its share back however this ends.
        let ticket = Admitted {
            admission: self.clone(),
            bytes,
        };
        if count > self.limits.max_pending {
            return Err(overloaded(format!(
                "{} writes are already waiting (--max-pending-proposals)",
                self.limits.max_pending
            )));
        }
        if total > self.limits.max_pending_bytes {
            return Err(overloaded(format!(
                "the writes waiting already hold about {} bytes (--max-pending-bytes of {})",
                total - bytes,
                self.limits.max_pending_bytes
            )));
        }
        Ok(ticket)
    }
}

fn overloaded(why: String) -> ProposeError {
    metrics::counter!("sq_proposals_overloaded_total").increment(1);
    ProposeError::Overloaded(format!(
        "this node is overloaded: {why}; nothing was written, retry after a moment"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_pending: usize, max_pending_bytes: usize) -> Arc<Admission> {
        Admission::new(AdmissionLimits {
            max_pending,
            max_pending_bytes,
            max_entry_bytes: 1024,
        })
    }

    #[test]
    fn past_the_count_bound_a_proposal_is_overloaded_until_one_leaves() {
        let a = admission(2, 1 << 20);
        let first = a.admit(10).unwrap();
        let _second = a.admit(10).unwrap();
        assert!(matches!(a.admit(10), Err(ProposeError::Overloaded(_))));
        assert_eq!(a.pending(), (2, 20), "a refused proposal holds nothing");
        drop(first);
        assert!(a.admit(10).is_ok());
        assert_eq!(
            a.pending(),
            (1, 10),
            "the admitted ticket above was dropped"
        );
    }

    #[test]
    fn past_the_byte_bound_a_proposal_is_overloaded() {
        let a = admission(100, 1000);
        let _held = a.admit(800).unwrap();
        let refused = a.admit(300);
        assert!(
            matches!(&refused, Err(ProposeError::Overloaded(m)) if m.contains("--max-pending-bytes")),
            "{:?}",
            refused.err()
        );
        assert!(a.admit(200).is_ok());
    }

    #[test]
    fn a_proposal_that_cannot_fit_one_entry_is_too_large_whatever_is_waiting() {
        let a = admission(100, 1 << 20);
        let most = a.limits().max_command_bytes();
        assert_eq!(most, 1024 - ENTRY_FRAMING);
        assert!(a.admit(most).is_ok());
        let refused = a.admit(most + 1);
        assert!(
            matches!(&refused, Err(ProposeError::TooLarge(m)) if m.contains("--max-batch-bytes")),
            "{:?}",
            refused.err()
        );
        assert_eq!(a.pending(), (0, 0));
    }
}
