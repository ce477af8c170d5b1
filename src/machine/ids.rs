//! Identifiers of the state machine's entities.
//!
//! Ids are assigned by the state machine from counters it holds, so every replica
//! assigns the same id to the same command. On the wire they are opaque strings with
//! a kind prefix (`s-`, `m-`, `t-`); task ids are ordered by submission.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl $name {
            /// The prefix of this id's string form.
            pub const PREFIX: &'static str = $prefix;
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }

        impl FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                let digits = s.strip_prefix($prefix).ok_or(())?;
                if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                digits.parse().map($name).map_err(|_| ())
            }
        }
    };
}

id_type!(
    /// A session: a user's stream of tasks and the miners reserved for it.
    SessionId,
    "s-"
);
id_type!(
    /// A miner (ephemeral node) of the node pool.
    MinerId,
    "m-"
);
id_type!(
    /// A task, numbered in submission order across the whole cluster.
    TaskId,
    "t-"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings() {
        assert_eq!(TaskId(42).to_string(), "t-42");
        assert_eq!("t-42".parse::<TaskId>(), Ok(TaskId(42)));
        assert_eq!("s-7".parse::<SessionId>(), Ok(SessionId(7)));
        assert!("m-".parse::<MinerId>().is_err());
        assert!("m-1x".parse::<MinerId>().is_err());
        assert!("t-1".parse::<MinerId>().is_err());
        assert!("t-+1".parse::<TaskId>().is_err());
        assert!("t-99999999999999999999999".parse::<TaskId>().is_err());
    }
}
