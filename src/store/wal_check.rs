//! A check of RocksDB's write-ahead logs before the store opens: damage followed by
//! intact records is refused, as RocksDB itself refuses a damaged record body.
//!
//! Why: the store opens with `TolerateCorruptedTailRecords`, so that a record torn
//! by a power loss (never acknowledged: every append is synced before it is
//! reported) is dropped, and anything else refused. RocksDB tells the two apart
//! only partly. A record whose data fails its checksum is refused. But a record
//! whose *header* is damaged, so that its length runs past the bytes read, looks
//! exactly like a torn tail when it lies in the file's last read (for a WAL under
//! 32 KiB, anywhere in it): RocksDB stops there and drops every record after it,
//! acknowledged entries and votes included, and the node would start without them.
//!
//! So before opening, each WAL is read through: its 32 KiB blocks, each record a
//! 7-byte header (masked CRC32C of type and data, length, type) and its data. At
//! the first point that does not parse or fails its checksum, the rest of the file
//! is searched for any intact record; a torn tail has none (the writes after it
//! were never made), damage in the middle has some, and is refused with the offset.
//! Logs in RocksDB's recyclable format (not used here) are left to RocksDB.

use std::path::{Path, PathBuf};

const BLOCK: usize = 32 * 1024;
const HEADER: usize = 7;

/// What a WAL holds where it stops parsing.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wal {
    /// Every record intact, up to the end or to zeroes (preallocated space).
    Intact,
    /// Unreadable from this offset on, with nothing intact after it: a torn tail.
    TornTail(usize),
    /// Unreadable at `at`, yet an intact record follows at `next`.
    Damaged { at: usize, next: usize },
}

/// Checks every `*.log` file in the RocksDB directory `db`; the first damaged one
/// with the offsets, if any.
pub(super) fn damaged_wal(db: &Path) -> std::io::Result<Option<(PathBuf, usize, usize)>> {
    let entries = match std::fs::read_dir(db) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let bytes = std::fs::read(&log)?;
        if let Wal::Damaged { at, next } = check(&bytes) {
            return Ok(Some((log, at, next)));
        }
    }
    Ok(None)
}

/// Reads one WAL through (see the module doc).
pub(super) fn check(bytes: &[u8]) -> Wal {
    let mut pos = 0;
    while pos < bytes.len() {
        let left = BLOCK - pos % BLOCK;
        if left < HEADER {
            // A block's last bytes, too few for a header: padding.
            pos += left;
            continue;
        }
        if pos + HEADER > bytes.len() {
            return tail_or_damage(bytes, pos);
        }
        let len = u16::from_le_bytes([bytes[pos + 4], bytes[pos + 5]]) as usize;
        let kind = bytes[pos + 6];
        if kind == 0 && len == 0 && bytes[pos..pos + 4] == [0; 4] {
            // Zeroes: the end of what was written, if nothing intact follows.
            return match tail_or_damage(bytes, pos) {
                Wal::TornTail(_) => Wal::Intact,
                damaged => damaged,
            };
        }
        if pos == 0 && recyclable(kind) {
            // The other format, told by the first record (a damaged header later
            // on is damage, whatever its type byte says).
            return Wal::Intact;
        }
        if !intact_at(bytes, pos) {
            return tail_or_damage(bytes, pos);
        }
        pos += HEADER + len;
    }
    Wal::Intact
}

/// Record types of RocksDB's recyclable format (an 11-byte header).
fn recyclable(kind: u8) -> bool {
    matches!(kind, 5..=8 | 11 | 131)
}

/// Whether an intact record in the plain format starts at `pos`: a known type, a
/// length that stays in its block, and a matching checksum.
fn intact_at(bytes: &[u8], pos: usize) -> bool {
    if pos + HEADER > bytes.len() {
        return false;
    }
    let len = u16::from_le_bytes([bytes[pos + 4], bytes[pos + 5]]) as usize;
    let kind = bytes[pos + 6];
    if !matches!(kind, 1..=4 | 9 | 10 | 130) {
        return false;
    }
    let end = pos + HEADER + len;
    if end > bytes.len() || pos % BLOCK + HEADER + len > BLOCK {
        return false;
    }
    let stored = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes"));
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), &bytes[pos + HEADER..end]);
    unmask(stored) == crc
}

/// RocksDB stores checksums masked (`crc32c::Mask`).
fn unmask(masked: u32) -> u32 {
    let rot = masked.wrapping_sub(0xa282_ead8);
    rot.rotate_left(15)
}

/// Whether any intact record starts after `at`.
fn tail_or_damage(bytes: &[u8], at: usize) -> Wal {
    match (at + 1..bytes.len()).find(|&p| intact_at(bytes, p)) {
        Some(next) => Wal::Damaged { at, next },
        None => Wal::TornTail(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(crc: u32) -> u32 {
        crc.rotate_right(15).wrapping_add(0xa282_ead8)
    }

    /// A WAL of these records, as RocksDB writes them: a record that does not fit
    /// in what is left of a block is cut into first, middle and last fragments;
    /// fewer than 7 bytes left are padded.
    fn wal(records: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for data in records {
            let mut rest: &[u8] = data;
            let mut first = true;
            loop {
                let left = BLOCK - out.len() % BLOCK;
                if left < HEADER {
                    out.resize(out.len() + left, 0);
                    continue;
                }
                let n = rest.len().min(left - HEADER);
                let last = n == rest.len();
                let kind = match (first, last) {
                    (true, true) => 1,
                    (true, false) => 2,
                    (false, false) => 3,
                    (false, true) => 4,
                };
                let crc = mask(crc32c::crc32c_append(crc32c::crc32c(&[kind]), &rest[..n]));
                out.extend_from_slice(&crc.to_le_bytes());
                out.extend_from_slice(&(n as u16).to_le_bytes());
                out.push(kind);
                out.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                first = false;
                if last {
                    break;
                }
            }
        }
        out
    }

    fn records() -> Vec<Vec<u8>> {
        (0..40u8).map(|i| vec![i; 20 + i as usize]).collect()
    }

    fn refs(r: &[Vec<u8>]) -> Vec<&[u8]> {
        r.iter().map(|v| v.as_slice()).collect()
    }

    #[test]
    fn an_intact_log_with_preallocated_zeroes_is_intact() {
        let r = records();
        let mut bytes = wal(&refs(&r));
        assert_eq!(check(&bytes), Wal::Intact);
        bytes.resize(bytes.len() + 4096, 0);
        assert_eq!(check(&bytes), Wal::Intact);
        assert_eq!(check(&[]), Wal::Intact);
    }

    #[test]
    fn a_torn_last_record_is_a_torn_tail() {
        let r = records();
        let bytes = wal(&refs(&r));
        let last = bytes.len() - (HEADER + r[39].len());
        // Cut inside the last record's data, or its header.
        assert_eq!(check(&bytes[..bytes.len() - 5]), Wal::TornTail(last));
        assert_eq!(check(&bytes[..last + 3]), Wal::TornTail(last));
        // Garbage written over the last record, with zeroes after it.
        let mut garbled = bytes.clone();
        garbled[last + 4] ^= 0xff;
        garbled.resize(garbled.len() + 100, 0);
        assert_eq!(check(&garbled), Wal::TornTail(last));
    }

    #[test]
    fn a_damaged_header_or_body_in_the_middle_is_damage() {
        let r = records();
        let bytes = wal(&refs(&r));
        let tenth: usize = r[..10].iter().map(|d| HEADER + d.len()).sum();
        // A header whose length runs past the file: what RocksDB takes for a tail.
        let mut header = bytes.clone();
        header[tenth + 4] = 0x5a;
        header[tenth + 5] = 0x5a;
        let next = tenth + HEADER + r[10].len();
        assert_eq!(check(&header), Wal::Damaged { at: tenth, next });
        // A body that fails its checksum.
        let mut body = bytes.clone();
        body[tenth + HEADER + 3] ^= 1;
        assert_eq!(check(&body), Wal::Damaged { at: tenth, next });
        // A header garbled into a type of the recyclable format: still damage.
        let mut recyclable_type = bytes.clone();
        recyclable_type[tenth + 6] = 5;
        assert_eq!(check(&recyclable_type), Wal::Damaged { at: tenth, next });
        // Zeroes over a record in the middle: not the end of the log.
        let mut zeroed = bytes;
        zeroed[tenth..next].fill(0);
        assert_eq!(check(&zeroed), Wal::Damaged { at: tenth, next });
    }

    #[test]
    fn records_span_blocks_with_padding() {
        let big: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 9000]).collect();
        let bytes = wal(&refs(&big));
        assert!(bytes.len() > 2 * BLOCK);
        assert_eq!(check(&bytes), Wal::Intact);
        let mut damaged = bytes.clone();
        damaged[HEADER + 10] ^= 1;
        assert!(matches!(check(&damaged), Wal::Damaged { at: 0, .. }));
    }
}
