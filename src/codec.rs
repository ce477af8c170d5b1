//! Every binary encoding of the project, in one place: state records, Raft log
//! entries and metadata, node-to-node messages and snapshot streams.
//!
//! All of it is bincode 2 (through serde) with the standard configuration, prefixed
//! by one format-version byte so that a node can refuse data written by a format it
//! does not know instead of misreading it. Keeping every encode and decode here means
//! a change of format is a change of this file.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::machine::Record;

/// The version byte written before every encoded value. Version 2: sessions and tasks
/// carry a queue timeout, sessions an idempotency window, and remembered idempotency
/// keys are records of their own. Version 3: sessions carry their queue bound and
/// whether finished tasks keep their payloads. Version 4: every batch carries the
/// cluster-wide limits its leader enforces. Version 5: a task's record carries its
/// payload's length, not its bytes; the bytes are a value of their own in the `state`
/// family and in snapshots (raw, under a key of their own: see
/// `crate::store::state_store::keys`). Version 6: the state is kept in three
/// RocksDB families instead of one (tasks and payloads apart from the small, often
/// rewritten records: see `crate::store`); the values are as in version 5, but a
/// version-5 store keeps tasks and payloads where this one does not look for them.
/// A store or peer of an older version is refused, not misread.
pub const FORMAT_VERSION: u8 = 6;

/// Decoding refuses values larger than this (1 GiB), whatever a length prefix claims.
const DECODE_LIMIT: usize = 1 << 30;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("empty input")]
    Empty,
    #[error("unknown format version {0} (this build reads version {FORMAT_VERSION})")]
    Version(u8),
    #[error("input is truncated")]
    Truncated,
    #[error("trailing bytes after the value")]
    Trailing,
    #[error("malformed input: {0}")]
    Malformed(String),
}

/// Encodes any serde value with the version prefix.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("encoding into a Vec cannot fail");
    out
}

/// [`encode`] into a buffer sized first (a pass that counts without writing): for
/// large values, which would otherwise grow their buffer a dozen times, copying it
/// each time into freshly faulted memory.
pub fn encode_sized<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(value));
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("encoding into a Vec cannot fail");
    out
}

/// The encoding of an `AppendEntriesRequest` (as [`encode`] writes it) assembled
/// from its parts, its entries given already encoded (each as [`encode`] wrote it):
/// the leader encodes an entry once, for its own log, and sends those bytes to
/// every follower instead of encoding the entry again per request.
pub fn append_request(
    vote: &crate::raft::types::Vote,
    prev_log_id: &Option<crate::raft::types::LogId>,
    entries: &[bytes::Bytes],
    leader_commit: &Option<crate::raft::types::LogId>,
) -> Vec<u8> {
    // Field by field, in the order serde derives for openraft's struct: vote,
    // prev_log_id, entries (a length, then each), leader_commit.
    let body: usize = entries.iter().map(|e| e.len().saturating_sub(1)).sum();
    let mut out = Vec::with_capacity(body + 128);
    out.push(FORMAT_VERSION);
    fn put<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
        bincode::serde::encode_into_std_write(value, out, config())
            .expect("encoding into a Vec cannot fail");
    }
    put(vote, &mut out);
    put(prev_log_id, &mut out);
    put(&(entries.len() as u64), &mut out);
    for entry in entries {
        out.extend_from_slice(&entry[1..]);
    }
    put(leader_commit, &mut out);
    out
}

/// How many bytes [`encode`] would write for `value` (the version byte included),
/// counted without writing them: what bounds a Raft entry's size.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config())
        .expect("counting bytes cannot fail");
    1 + size.bytes_written
}

/// Decodes a value written by [`encode`]; the whole input must be consumed.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_within::<T, DECODE_LIMIT>(bytes)
}

/// Decoding of a small value from a sender not yet authenticated (the peer
/// channel's hello) claims at most this much memory.
const SMALL_DECODE_LIMIT: usize = 4096;

/// [`decode`] for a small value from a sender not yet authenticated: no length
/// prefix may claim more than [`SMALL_DECODE_LIMIT`] bytes. bincode sizes a string
/// or byte vector by its length prefix before reading it, so under the general
/// limit a 30-byte body claiming a 1 GiB string would make the node allocate 1 GiB
/// before finding the input short.
pub fn decode_small<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_within::<T, SMALL_DECODE_LIMIT>(bytes)
}

fn decode_within<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<T, CodecError> {
    let body = versioned_body(bytes)?;
    let (value, used) = decode_prefix::<T, LIMIT>(body)?;
    if used != body.len() {
        return Err(CodecError::Trailing);
    }
    Ok(value)
}

/// What follows the version byte of a value written by [`encode`], once the version
/// is known and the size within the decode limit.
fn versioned_body(bytes: &[u8]) -> Result<&[u8], CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::Version(version));
    }
    if body.len() > DECODE_LIMIT {
        return Err(CodecError::Malformed("value over the decode limit".into()));
    }
    Ok(body)
}

/// Decodes one value from the start of `body` (no version byte): the value and the
/// number of bytes it took.
fn decode_prefix<T: DeserializeOwned, const LIMIT: usize>(
    body: &[u8],
) -> Result<(T, usize), CodecError> {
    bincode::serde::decode_from_slice::<T, _>(body, config().with_limit::<LIMIT>()).map_err(|e| {
        match e {
            bincode::error::DecodeError::UnexpectedEnd { .. } => CodecError::Truncated,
            other => CodecError::Malformed(other.to_string()),
        }
    })
}

/// Decodes an `AppendEntriesRequest` written by [`encode`] (or assembled by
/// [`append_request`]) and gives, beside it, each entry's own encoding (as
/// [`encode`] writes it, version byte first): a follower stores those bytes in its
/// log instead of encoding each entry again. The request decoded is the one
/// [`decode`] gives; the same errors refuse the same inputs.
pub fn decode_append_request(
    bytes: &[u8],
) -> Result<
    (
        openraft::raft::AppendEntriesRequest<crate::raft::types::TypeConfig>,
        Vec<Vec<u8>>,
    ),
    CodecError,
> {
    use crate::raft::types::{Entry, LogId, Vote};
    let body = versioned_body(bytes)?;
    let mut at = 0;
    // Field by field, in the order serde derives for openraft's struct (as
    // `append_request` writes them), each from where the previous one ended.
    fn next<T: DeserializeOwned>(body: &[u8], at: &mut usize) -> Result<T, CodecError> {
        let (value, used) = decode_prefix::<_, DECODE_LIMIT>(&body[*at..])?;
        *at += used;
        Ok(value)
    }
    let vote: Vote = next(body, &mut at)?;
    let prev_log_id: Option<LogId> = next(body, &mut at)?;
    let count: u64 = next(body, &mut at)?;
    // A count is only a claim: never reserve more than the bytes could hold.
    let room = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(body.len() - at);
    let mut entries = Vec::with_capacity(room);
    let mut encoded = Vec::with_capacity(room);
    for _ in 0..count {
        let start = at;
        let entry: Entry = next(body, &mut at)?;
        let mut own = Vec::with_capacity(1 + at - start);
        own.push(FORMAT_VERSION);
        own.extend_from_slice(&body[start..at]);
        entries.push(entry);
        encoded.push(own);
    }
    let leader_commit: Option<LogId> = next(body, &mut at)?;
    if at != body.len() {
        return Err(CodecError::Trailing);
    }
    Ok((
        openraft::raft::AppendEntriesRequest {
            vote,
            prev_log_id,
            entries,
            leader_commit,
        },
        encoded,
    ))
}

/// One record of the state machine.
pub fn encode_record(record: &Record) -> Vec<u8> {
    encode(record)
}

pub fn decode_record(bytes: &[u8]) -> Result<Record, CodecError> {
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Batch, Command, NewTask, SessionId};

    #[test]
    fn a_small_decode_refuses_a_length_prefix_over_its_bound_before_allocating() {
        use crate::raft::peer_auth::Hello;
        // A hello whose cluster id claims a string of 256 MiB but carries none.
        let mut body = vec![FORMAT_VERSION, 1, 2, 1]; // from 1, to 2, Some(
        body.push(252); // a varint u32 follows
        body.extend_from_slice(&(1u32 << 28).to_le_bytes());
        // The general decode sizes the string from its prefix, then finds the input
        // short (after asking for the memory); the small one refuses the claim.
        assert_eq!(decode::<Hello>(&body).unwrap_err(), CodecError::Truncated);
        match decode_small::<Hello>(&body).unwrap_err() {
            CodecError::Malformed(why) => assert!(why.contains("imit"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A real hello decodes the same both ways.
        let hello = Hello {
            from: 1,
            to: 2,
            cluster: Some("c-1f2e3d".into()),
            nonce: [7; 16],
        };
        let bytes = encode(&hello);
        let (a, b) = (
            decode::<Hello>(&bytes).unwrap(),
            decode_small::<Hello>(&bytes).unwrap(),
        );
        assert_eq!(
            (a.from, a.to, a.cluster, a.nonce),
            (b.from, b.to, b.cluster, b.nonce)
        );
    }

    #[test]
    fn an_append_request_assembled_from_encoded_entries_is_the_request_encoded() {
        use crate::raft::types::{Entry, TypeConfig};
        use openraft::raft::AppendEntriesRequest;
        use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
        let log_id = |term, index| LogId::new(CommittedLeaderId::new(term, 2), index);
        let entry = |index: u64, n: usize| Entry {
            log_id: log_id(3, index),
            payload: if n == 0 {
                EntryPayload::Blank
            } else {
                EntryPayload::Normal(Batch {
                    limits: Default::default(),
                    now_ms: 1_000 + index,
                    commands: (0..n)
                        .map(|i| Command::SubmitTasks {
                            session: SessionId(9),
                            tasks: vec![NewTask {
                                payload: vec![i as u8; 300 + i].into(),
                                priority: None,
                                idempotency_key: None,
                                queue_timeout_ms: Some(5),
                            }],
                        })
                        .collect(),
                })
            },
        };
        for (entries, prev, commit) in [
            (vec![], None, None),
            (vec![entry(1, 0)], None, Some(log_id(1, 1))),
            (
                vec![entry(300, 3), entry(301, 0), entry(302, 200)],
                Some(log_id(2, 299)),
                Some(log_id(3, 300)),
            ),
        ] {
            let encoded: Vec<bytes::Bytes> = entries.iter().map(|e| encode(e).into()).collect();
            let rpc = AppendEntriesRequest::<TypeConfig> {
                vote: Vote::new_committed(3, 2),
                prev_log_id: prev,
                entries,
                leader_commit: commit,
            };
            let assembled =
                append_request(&rpc.vote, &rpc.prev_log_id, &encoded, &rpc.leader_commit);
            assert_eq!(assembled, encode(&rpc));
            // A follower's decode gives the request and each entry's own bytes.
            let (decoded, own) = decode_append_request(&assembled).expect("decodes");
            assert_eq!(encode(&decoded), assembled);
            let own: Vec<bytes::Bytes> = own.into_iter().map(Into::into).collect();
            assert_eq!(own, encoded);
            // Whatever decode refuses, this refuses; nothing panics.
            for cut in 0..assembled.len() {
                assert!(decode_append_request(&assembled[..cut]).is_err());
            }
            let mut longer = assembled.clone();
            longer.push(0);
            assert_eq!(
                decode_append_request(&longer).map(|_| ()),
                Err(CodecError::Trailing)
            );
        }
        // A count no body could hold is refused without reserving for it.
        let mut claim = vec![FORMAT_VERSION];
        claim.extend_from_slice(&encode(&Vote::new_committed(3, 2))[1..]);
        claim.extend_from_slice(&encode(&None::<crate::raft::types::LogId>)[1..]);
        claim.extend_from_slice(&encode(&u64::MAX)[1..]);
        assert!(decode_append_request(&claim).is_err());
    }

    #[test]
    fn values_round_trip_and_bad_input_is_refused() {
        let batch = Batch {
            limits: Default::default(),
            now_ms: 7,
            commands: vec![Command::SubmitTasks {
                session: SessionId(1),
                tasks: vec![NewTask {
                    payload: vec![1, 2, 3].into(),
                    priority: Some(-4),
                    idempotency_key: Some("k".into()),
                    queue_timeout_ms: None,
                }],
            }]
            .into(),
        };
        let bytes = encode(&batch);
        assert_eq!(encode_sized(&batch), bytes);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(encoded_len(&batch), bytes.len());
        assert_eq!(decode::<Batch>(&bytes), Ok(batch.clone()));
        // A task's payload encodes as bytes (a length, then the bytes), as the
        // `serde_bytes` vector it was before it became shared `Bytes`.
        let Command::SubmitTasks { tasks, .. } = &batch.commands[0] else {
            unreachable!()
        };
        assert_eq!(
            encode(&tasks[0]),
            encode(&(
                serde_bytes::ByteBuf::from(vec![1u8, 2, 3]),
                Some(-4i32),
                Some("k"),
                None::<u64>
            ))
        );
        assert_eq!(
            decode::<NewTask>(&encode(&tasks[0])).as_ref(),
            Ok(&tasks[0])
        );
        // The shared list of commands encodes as a plain list would.
        assert_eq!(
            &bytes[1..],
            &encode(&(7u64, batch.commands.to_vec(), batch.limits))[1..]
        );
        assert_eq!(decode::<Batch>(&[]), Err(CodecError::Empty));
        assert_eq!(decode::<Batch>(&[9, 0]), Err(CodecError::Version(9)));
        assert_eq!(
            decode::<Batch>(&bytes[..bytes.len() - 1]),
            Err(CodecError::Truncated)
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode::<Batch>(&longer), Err(CodecError::Trailing));
        // A length prefix claiming far more than the input must not allocate it.
        assert!(decode::<Vec<u8>>(&[
            FORMAT_VERSION,
            0xfd,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x0f
        ])
        .is_err());
    }
}
