//! Installing a received snapshot without holding it in memory.
//!
//! A snapshot file (format in [`super::snapshot`]) is read frame by frame, never
//! whole, in two passes:
//! 1. [`decode`]: verify the frame count, the digest and the applied log id while
//!    decoding every record straight into a new [`State`] (payloads, values of their
//!    own, are only checked: the state never holds them). Nothing on disk is touched,
//!    so a corrupted, truncated or undecodable snapshot changes nothing.
//! 2. [`begin`] and [`fill`]: replace the state families with the frames, in write batches
//!    of a few MiB. The replacement cannot be one atomic batch without holding every
//!    record in memory, so it is made crash-safe by a marker instead: one synced
//!    write deletes the old records and sets the marker `installing` (in the `raft`
//!    family) naming the snapshot file; the records follow (without write-ahead log,
//!    as every state write); the families are flushed (atomically); a synced write
//!    clears the marker.
//!    A node that stops with the marker set redoes the replacement from the named
//!    file when it opens ([`resume`]), before it loads its state, so it never starts
//!    on a half-written state. While the families are half written, snapshot builds
//!    wait to take their view (the snapshot files' lock), so no snapshot copies it.
//!
//! Memory at the peak: the old state (still serving reads until it is swapped out at
//! the end) and the new one, plus a read buffer and one write batch. Before, the
//! encoded frames, a write batch of all of them and the decoded records were held
//! too, besides both states.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use rocksdb::{WriteBatch, WriteOptions, DB};
use sha2::{Digest, Sha256};

use super::snapshot::{io_err, END, MAGIC};
use super::state_store::keys;
use super::{CF_RAFT, STATE_FAMILIES};
use crate::codec;
use crate::machine::{Record, State};
use crate::raft::types::{LogId, SnapshotMeta, StoredMembership};

/// In the `raft` family while the state families are being replaced: the snapshot's
/// meta and file name, as the current-snapshot pointer holds them.
pub(super) const KEY_INSTALLING: &[u8] = b"installing";

/// A write batch is written once it holds this many bytes.
const BATCH_BYTES: usize = 4 << 20;

/// The frames of a snapshot file, one at a time, checked as they are read: the last
/// call checks the frame count, the digest and that nothing follows.
pub(super) struct Frames {
    r: BufReader<File>,
    hash: Sha256,
    count: u64,
    done: bool,
}

impl Frames {
    /// Reads from the start of `file`, checking its magic.
    pub(super) fn open(mut file: File) -> std::io::Result<Self> {
        file.seek(std::io::SeekFrom::Start(0))?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(io_err("not a Session Queue snapshot (bad magic)"));
        }
        let mut hash = Sha256::new();
        hash.update(magic);
        Ok(Frames {
            r,
            hash,
            count: 0,
            done: false,
        })
    }

    fn len(&mut self) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        self.r.read_exact(&mut b)?;
        let n = u32::from_le_bytes(b);
        if n != END {
            self.hash.update(b);
        }
        Ok(n)
    }

    fn bytes(&mut self, n: u32, into: &mut Vec<u8>) -> std::io::Result<()> {
        into.clear();
        // Read through `take`, so a corrupted length cannot make us allocate it.
        let got = (&mut self.r).take(n as u64).read_to_end(into)?;
        if got != n as usize {
            return Err(io_err("snapshot is truncated"));
        }
        self.hash.update(&into[..]);
        Ok(())
    }

    /// The next frame into `key` and `value`; `false` after the last one, once the
    /// whole file checked out.
    pub(super) fn next(&mut self, key: &mut Vec<u8>, value: &mut Vec<u8>) -> std::io::Result<bool> {
        if self.done {
            return Ok(false);
        }
        let klen = self.len()?;
        if klen == END {
            self.finish()?;
            return Ok(false);
        }
        self.bytes(klen, key)?;
        let vlen = self.len()?;
        if vlen == END {
            return Err(io_err("snapshot frame without a value"));
        }
        self.bytes(vlen, value)?;
        self.count += 1;
        Ok(true)
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let mut count = [0u8; 8];
        self.r.read_exact(&mut count)?;
        let mut digest = [0u8; 32];
        self.r.read_exact(&mut digest)?;
        if u64::from_le_bytes(count) != self.count {
            return Err(io_err("snapshot is truncated (frame count mismatch)"));
        }
        if self.hash.clone().finalize().as_slice() != digest {
            return Err(io_err("snapshot is corrupted (digest mismatch)"));
        }
        let mut rest = [0u8; 1];
        if self.r.read(&mut rest)? != 0 {
            return Err(io_err("trailing bytes after the snapshot"));
        }
        self.done = true;
        Ok(())
    }
}

/// Pass one: checks the snapshot file and decodes it into a state, record by record.
pub(super) fn decode(
    file: File,
    expected: Option<LogId>,
) -> std::io::Result<(State, Option<LogId>, StoredMembership)> {
    let mut frames = Frames::open(file)?;
    let mut last_applied: Option<LogId> = None;
    let mut membership = StoredMembership::default();
    let mut failed: Option<std::io::Error> = None;
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let records = std::iter::from_fn(|| loop {
        let mut step = || -> std::io::Result<Option<Option<Record>>> {
            if !frames.next(&mut key, &mut value)? {
                return Ok(None);
            }
            if key.as_slice() == keys::APPLIED {
                last_applied = codec::decode(&value).map_err(io_err)?;
            } else if key.as_slice() == keys::MEMBERSHIP {
                membership = codec::decode(&value).map_err(io_err)?;
            } else if !keys::is_meta(&key) && !keys::is_payload(&key) {
                // Payloads are written to the family by `fill`, never held here.
                return Ok(Some(Some(codec::decode_record(&value).map_err(io_err)?)));
            }
            Ok(Some(None))
        };
        match step() {
            Ok(Some(Some(record))) => return Some(record),
            Ok(Some(None)) => continue,
            Ok(None) => return None,
            Err(e) => {
                failed = Some(e);
                return None;
            }
        }
    });
    let state = State::from_records(records);
    if let Some(e) = failed {
        return Err(e);
    }
    if last_applied != expected {
        return Err(io_err(format!(
            "snapshot holds state applied up to {last_applied:?}, its meta says {expected:?}"
        )));
    }
    Ok((state, last_applied, membership))
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

/// Pass two, first step: deletes the records of the state families and sets the
/// marker (`marker` is what [`KEY_INSTALLING`] holds meanwhile), in one synced write.
/// The caller keeps snapshot builds from taking a view until [`fill`] is done.
pub(super) fn begin(db: &DB, marker: &[u8]) -> std::io::Result<()> {
    let raft = db.cf_handle(CF_RAFT).expect("raft column family");
    let mut batch = WriteBatch::default();
    for name in STATE_FAMILIES {
        let family = db.cf_handle(name).expect("state column family");
        batch.delete_range_cf(family, keys::FIRST, keys::END);
    }
    batch.put_cf(raft, KEY_INSTALLING, marker);
    db.write_opt(batch, &synced()).map_err(io_err)
}

/// Pass two, second step: writes the frames of the (already checked) snapshot file at
/// `path` into the emptied state families (each key into its own, see
/// `keys::family`), makes them durable, clears the marker.
pub(super) fn fill(db: &DB, path: &Path) -> std::io::Result<()> {
    let mut frames = Frames::open(File::open(path)?)?;
    let raft = db.cf_handle(CF_RAFT).expect("raft column family");
    let mut unlogged = WriteOptions::default();
    unlogged.disable_wal(true);
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let mut batch = WriteBatch::default();
    while frames.next(&mut key, &mut value)? {
        let family = db
            .cf_handle(keys::family(&key))
            .expect("state column family");
        batch.put_cf(family, &key, &value);
        if batch.size_in_bytes() >= BATCH_BYTES {
            db.write_opt(std::mem::take(&mut batch), &unlogged)
                .map_err(io_err)?;
        }
    }
    db.write_opt(batch, &unlogged).map_err(io_err)?;
    // The records were written without write-ahead log: on disk before the marker goes.
    super::flush_state(db).map_err(io_err)?;
    db.delete_cf_opt(raft, KEY_INSTALLING, &synced())
        .map_err(io_err)?;
    Ok(())
}

/// The replacement a stopped node left unfinished, if any: the snapshot's meta and
/// file name.
pub(super) fn unfinished(db: &DB) -> std::io::Result<Option<(SnapshotMeta, String)>> {
    let raft = db.cf_handle(CF_RAFT).expect("raft column family");
    match db.get_cf(raft, KEY_INSTALLING).map_err(io_err)? {
        Some(bytes) => Ok(Some(codec::decode(&bytes).map_err(io_err)?)),
        None => Ok(None),
    }
}

/// Finishes a replacement a stopped node left unfinished (see [`unfinished`]): the
/// named file was checked and made durable before the replacement began.
pub(super) fn resume(db: &DB, dir: &Path) -> std::io::Result<Option<(SnapshotMeta, String)>> {
    let Some((meta, name)) = unfinished(db)? else {
        return Ok(None);
    };
    tracing::warn!(snapshot = %meta.snapshot_id, "finishing the install of a snapshot interrupted by a stop");
    begin(db, &codec::encode(&(&meta, &name)))?;
    fill(db, &dir.join(&name))?;
    Ok(Some((meta, name)))
}
