//! Small files of a data directory that say which cluster it belongs to and which
//! peers it has seen hold state: `CLUSTER_ID` and `PARTICIPANTS`.
//!
//! Both are tiny, written rarely (the cluster id once per data directory, a
//! participant once per peer) and must survive a power loss once relied upon, so
//! each write goes to a temporary file, is synced, renamed into place, and the
//! rename made durable with a directory sync. The meaning of the contents lives in
//! [`crate::raft::identity`]; this module only keeps them.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use super::snapshot::sync_dir;

/// The cluster id this data directory belongs to.
const CLUSTER_ID_FILE: &str = "CLUSTER_ID";
/// The ids of peers this node has seen vote or hold entries, one per line.
const PARTICIPANTS_FILE: &str = "PARTICIPANTS";

fn write_durably(dir: &Path, name: &str, contents: &str) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, contents.as_bytes())?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn read_optional(dir: &Path, name: &str) -> io::Result<Option<String>> {
    match std::fs::read_to_string(dir.join(name)) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The cluster id stored in `dir`, if any.
pub fn load_cluster_id(dir: &Path) -> io::Result<Option<String>> {
    Ok(read_optional(dir, CLUSTER_ID_FILE)?
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// Stores the cluster id durably.
pub fn save_cluster_id(dir: &Path, id: &str) -> io::Result<()> {
    write_durably(dir, CLUSTER_ID_FILE, &format!("{id}\n"))
}

/// The participants stored in `dir` (unreadable lines are skipped).
pub fn load_participants(dir: &Path) -> io::Result<BTreeSet<u64>> {
    Ok(read_optional(dir, PARTICIPANTS_FILE)?
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Stores the participants durably.
pub fn save_participants(dir: &Path, ids: &BTreeSet<u64>) -> io::Result<()> {
    let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
    write_durably(dir, PARTICIPANTS_FILE, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_id_and_participants_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_cluster_id(dir.path()).unwrap(), None);
        assert!(load_participants(dir.path()).unwrap().is_empty());
        save_cluster_id(dir.path(), "abc").unwrap();
        assert_eq!(load_cluster_id(dir.path()).unwrap().as_deref(), Some("abc"));
        save_participants(dir.path(), &BTreeSet::from([3, 1])).unwrap();
        assert_eq!(
            load_participants(dir.path()).unwrap(),
            BTreeSet::from([1, 3])
        );
        assert!(!dir.path().join("CLUSTER_ID.tmp").exists());
    }
}
