//! The namespace and contents the running system sees, and what a power loss leaves.
//!
//! The backing directory always holds the durable state, the one a power loss
//! returns to: a tree of directories whose regular files are hard links to objects
//! (`.lossyfs/objects/<n>`, one per file, holding its last fsynced bytes). In memory:
//! every directory's entries as the system sees them, and every file's unsynced pages
//! ([`Content`]). An fsync of a file writes its pages into its object (so every
//! durable name of it sees them); an fsync of a directory makes the backing
//! directory's file entries match the in-memory ones (links, replacements and
//! unlinks). A file created and fsynced but whose directory never was is therefore
//! lost with its data; one renamed without a directory fsync is back at its old name.
//!
//! Directories themselves (mkdir, rmdir, renaming a directory) are made durable at
//! once: a simplification that only makes this filesystem kinder than a real one,
//! and the systems under test create their directories once, at start.
//!
//! [`Tree::lose_power`] drops all of it and reloads from the backing directory, with
//! fresh inode numbers (the kernel's cached ones of the old tree then fail).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::content::Content;

pub const ROOT: u64 = 1;
const META_DIR: &str = ".lossyfs";

pub type Errno = i32;

fn errno(e: io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

pub struct FileNode {
    /// The object holding its durable bytes.
    pub object: u64,
    pub content: Content,
    /// Names it has in the running system's namespace.
    pub nlink: u32,
    pub open: u32,
    handle: Option<File>,
}

pub enum Kind {
    File(FileNode),
    /// A directory, durable at `path` (relative to the backing root).
    Dir {
        path: PathBuf,
        entries: BTreeMap<OsString, u64>,
        parent: u64,
    },
}

pub struct Node {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    pub ctime: SystemTime,
    lookups: u64,
}

/// The whole filesystem state (see the module doc).
pub struct Tree {
    backing: PathBuf,
    pub nodes: HashMap<u64, Node>,
    next_ino: u64,
    next_object: u64,
    /// Objects by their inode number in the backing filesystem.
    object_by_backing_ino: HashMap<u64, u64>,
    /// How many power losses this tree went through.
    pub power_losses: u64,
}

impl Tree {
    pub fn open(backing: &Path) -> io::Result<Self> {
        let mut tree = Tree {
            backing: backing.to_path_buf(),
            nodes: HashMap::new(),
            next_ino: ROOT + 1,
            next_object: 1,
            object_by_backing_ino: HashMap::new(),
            power_losses: 0,
        };
        tree.load()?;
        Ok(tree)
    }

    fn objects_dir(&self) -> PathBuf {
        self.backing.join(META_DIR).join("objects")
    }

    fn object_path(&self, object: u64) -> PathBuf {
        self.objects_dir().join(object.to_string())
    }

    /// Drops everything not fsynced and reloads the durable state.
    pub fn lose_power(&mut self) -> io::Result<()> {
        self.power_losses += 1;
        self.load()
    }

    /// Builds the in-memory tree from the backing directory (the durable state).
    fn load(&mut self) -> io::Result<()> {
        self.nodes.clear();
        self.object_by_backing_ino.clear();
        let objects = self.objects_dir();
        fs::create_dir_all(&objects)?;
        let mut backing_ino_to_object = HashMap::new();
        for entry in fs::read_dir(&objects)? {
            let entry = entry?;
            let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                fs::remove_file(entry.path())?;
                continue;
            };
            self.next_object = self.next_object.max(n + 1);
            backing_ino_to_object.insert(entry.metadata()?.ino(), n);
        }
        let now = SystemTime::now();
        let root_meta = fs::metadata(&self.backing)?;
        self.nodes
            .insert(ROOT, dir_node(PathBuf::new(), ROOT, &root_meta, now));
        let mut reached = std::collections::HashSet::new();
        let mut file_nodes: HashMap<u64, u64> = HashMap::new();
        let mut stack = vec![ROOT];
        while let Some(dir_ino) = stack.pop() {
            let rel = match &self.nodes[&dir_ino].kind {
                Kind::Dir { path, .. } => path.clone(),
                Kind::File(_) => unreachable!("only directories are stacked"),
            };
            let mut entries = BTreeMap::new();
            for entry in fs::read_dir(self.backing.join(&rel))? {
                let entry = entry?;
                let name = entry.file_name();
                if dir_ino == ROOT && name == META_DIR {
                    continue;
                }
                let meta = fs::symlink_metadata(entry.path())?;
                if meta.is_dir() {
                    let ino = self.alloc_ino();
                    self.nodes
                        .insert(ino, dir_node(rel.join(&name), dir_ino, &meta, now));
                    entries.insert(name, ino);
                    stack.push(ino);
                } else if meta.is_file() {
                    let object = match backing_ino_to_object.get(&meta.ino()) {
                        Some(&o) => o,
                        None => {
                            // A file put into the backing directory from outside.
                            let o = self.next_object;
                            self.next_object += 1;
                            fs::hard_link(entry.path(), self.object_path(o))?;
                            backing_ino_to_object.insert(meta.ino(), o);
                            o
                        }
                    };
                    reached.insert(meta.ino());
                    let ino = match file_nodes.get(&object) {
                        Some(&ino) => ino,
                        None => {
                            let ino = self.alloc_ino();
                            self.nodes.insert(ino, file_node(object, &meta, 0));
                            file_nodes.insert(object, ino);
                            ino
                        }
                    };
                    if let Kind::File(f) = &mut self.nodes.get_mut(&ino).expect("node").kind {
                        f.nlink += 1;
                    }
                    entries.insert(name, ino);
                }
                // Other kinds (symlinks, devices) are not supported and stay hidden.
            }
            if let Kind::Dir { entries: e, .. } =
                &mut self.nodes.get_mut(&dir_ino).expect("dir").kind
            {
                *e = entries;
            }
        }
        // Objects no durable name reaches were lost with the power.
        for (backing_ino, object) in backing_ino_to_object {
            if reached.contains(&backing_ino) {
                self.object_by_backing_ino.insert(backing_ino, object);
            } else {
                fs::remove_file(self.object_path(object))?;
            }
        }
        Ok(())
    }

    fn alloc_ino(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    pub fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(libc::EIO)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(libc::EIO)
    }

    fn dir_entries(&self, ino: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.node(ino)?.kind {
            Kind::Dir { entries, .. } => Ok(entries),
            Kind::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_entries_mut(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match &mut self.node_mut(ino)?.kind {
            Kind::Dir { entries, .. } => Ok(entries),
            Kind::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_path(&self, ino: u64) -> Result<PathBuf, Errno> {
        match &self.node(ino)?.kind {
            Kind::Dir { path, .. } => Ok(self.backing.join(path)),
            Kind::File(_) => Err(libc::ENOTDIR),
        }
    }

    pub fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        let ino = *self.dir_entries(parent)?.get(name).ok_or(libc::ENOENT)?;
        self.node_mut(ino)?.lookups += 1;
        Ok(ino)
    }

    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        self.maybe_drop(ino);
    }

    /// Forgets a file no name, handle or kernel reference reaches any more, and
    /// deletes its object when no durable name has it either.
    fn maybe_drop(&mut self, ino: u64) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        let Kind::File(f) = &node.kind else { return };
        if f.nlink > 0 || f.open > 0 || node.lookups > 0 {
            return;
        }
        let object = f.object;
        self.nodes.remove(&ino);
        self.gc_object(object);
    }

    fn gc_object(&mut self, object: u64) {
        let in_use = self
            .nodes
            .values()
            .any(|n| matches!(&n.kind, Kind::File(f) if f.object == object));
        if in_use {
            return;
        }
        let path = self.object_path(object);
        if let Ok(meta) = fs::metadata(&path) {
            if meta.nlink() == 1 {
                let _ = fs::remove_file(&path);
                self.object_by_backing_ino.remove(&meta.ino());
            }
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<(&mut Content, &File), Errno> {
        let path = match &self.node(ino)?.kind {
            Kind::File(f) => self.object_path(f.object),
            Kind::Dir { .. } => return Err(libc::EISDIR),
        };
        let Kind::File(f) = &mut self.node_mut(ino)?.kind else {
            unreachable!()
        };
        if f.handle.is_none() {
            f.handle = Some(
                File::options()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(errno)?,
            );
        }
        Ok((&mut f.content, f.handle.as_ref().expect("opened")))
    }

    pub fn read(&mut self, ino: u64, offset: u64, len: u64) -> Result<Vec<u8>, Errno> {
        let (content, obj) = self.file_mut(ino)?;
        content.read(obj, offset, len).map_err(errno)
    }

    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let (content, obj) = self.file_mut(ino)?;
        content.write(obj, offset, data).map_err(errno)?;
        self.node_mut(ino)?.mtime = SystemTime::now();
        Ok(())
    }

    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        self.file_mut(ino)?.0.truncate(size);
        self.node_mut(ino)?.mtime = SystemTime::now();
        Ok(())
    }

    pub fn set_mode(&mut self, ino: u64, mode: u32) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        node.mode = mode & 0o7777;
        node.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_times(
        &mut self,
        ino: u64,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        if let Some(t) = atime {
            node.atime = t;
        }
        if let Some(t) = mtime {
            node.mtime = t;
        }
        Ok(())
    }

    pub fn fsync(&mut self, ino: u64) -> Result<(), Errno> {
        if matches!(self.node(ino)?.kind, Kind::Dir { .. }) {
            return self.fsync_dir(ino);
        }
        let (content, obj) = self.file_mut(ino)?;
        content.sync(obj).map_err(errno)
    }

    pub fn opened(&mut self, ino: u64) -> Result<(), Errno> {
        if let Kind::File(f) = &mut self.node_mut(ino)?.kind {
            f.open += 1;
        }
        Ok(())
    }

    pub fn released(&mut self, ino: u64) {
        if let Some(Node {
            kind: Kind::File(f),
            ..
        }) = self.nodes.get_mut(&ino)
        {
            f.open = f.open.saturating_sub(1);
            if f.open == 0 {
                f.handle = None;
            }
        }
        self.maybe_drop(ino);
    }

    /// A new, empty regular file named `name` in `parent` (replacing a file there).
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<u64, Errno> {
        let replaced = self.dir_entries(parent)?.get(name).copied();
        if let Some(old) = replaced {
            if matches!(self.node(old)?.kind, Kind::Dir { .. }) {
                return Err(libc::EISDIR);
            }
        }
        let object = self.next_object;
        self.next_object += 1;
        let path = self.object_path(object);
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(errno)?;
        let meta = file.metadata().map_err(errno)?;
        self.object_by_backing_ino.insert(meta.ino(), object);
        let ino = self.alloc_ino();
        let mut node = file_node(object, &meta, 1);
        node.mode = mode & 0o7777;
        node.uid = uid;
        node.gid = gid;
        node.lookups = 1;
        self.nodes.insert(ino, node);
        self.dir_entries_mut(parent)?.insert(name.to_owned(), ino);
        if let Some(old) = replaced {
            self.unlinked(old);
        }
        Ok(ino)
    }

    fn unlinked(&mut self, ino: u64) {
        if let Some(Node {
            kind: Kind::File(f),
            ..
        }) = self.nodes.get_mut(&ino)
        {
            f.nlink = f.nlink.saturating_sub(1);
        }
        self.maybe_drop(ino);
    }

    pub fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> Result<(), Errno> {
        if self.dir_entries(parent)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        match &mut self.node_mut(ino)?.kind {
            Kind::File(f) => f.nlink += 1,
            Kind::Dir { .. } => return Err(libc::EPERM),
        }
        self.node_mut(ino)?.lookups += 1;
        self.dir_entries_mut(parent)?.insert(name.to_owned(), ino);
        Ok(())
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = *self.dir_entries(parent)?.get(name).ok_or(libc::ENOENT)?;
        if matches!(self.node(ino)?.kind, Kind::Dir { .. }) {
            return Err(libc::EISDIR);
        }
        self.dir_entries_mut(parent)?.remove(name);
        self.unlinked(ino);
        Ok(())
    }

    /// A directory, made durable at once (see the module doc).
    pub fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> Result<u64, Errno> {
        if self.dir_entries(parent)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let path = self.dir_path(parent)?.join(name);
        // A durable file entry of that name (unlinked, not yet synced) goes first.
        if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir()) {
            fs::remove_file(&path).map_err(errno)?;
        }
        fs::create_dir(&path).map_err(errno)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(errno)?;
        let meta = fs::metadata(&path).map_err(errno)?;
        let rel = path
            .strip_prefix(&self.backing)
            .expect("under backing")
            .to_path_buf();
        let ino = self.alloc_ino();
        let mut node = dir_node(rel, parent, &meta, SystemTime::now());
        node.lookups = 1;
        self.nodes.insert(ino, node);
        self.dir_entries_mut(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = *self.dir_entries(parent)?.get(name).ok_or(libc::ENOENT)?;
        if !self.dir_entries(ino)?.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        // Durable file entries still in it (unlinked, not yet synced) go with it.
        fs::remove_dir_all(self.dir_path(ino)?).map_err(errno)?;
        self.dir_entries_mut(parent)?.remove(name);
        self.nodes.remove(&ino);
        Ok(())
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(libc::EINVAL);
        }
        let ino = *self.dir_entries(parent)?.get(name).ok_or(libc::ENOENT)?;
        let target = self.dir_entries(new_parent)?.get(new_name).copied();
        if target == Some(ino) {
            return Ok(());
        }
        if target.is_some() && flags & libc::RENAME_NOREPLACE != 0 {
            return Err(libc::EEXIST);
        }
        let is_dir = matches!(self.node(ino)?.kind, Kind::Dir { .. });
        if let Some(t) = target {
            match (&self.node(t)?.kind, is_dir) {
                (Kind::Dir { entries, .. }, true) if entries.is_empty() => {}
                (Kind::Dir { .. }, true) => return Err(libc::ENOTEMPTY),
                (Kind::Dir { .. }, false) => return Err(libc::EISDIR),
                (Kind::File(_), true) => return Err(libc::ENOTDIR),
                (Kind::File(_), false) => {}
            }
        }
        if is_dir {
            // Directories move at once (see the module doc).
            let from = self.dir_path(ino)?;
            let to = self.dir_path(new_parent)?.join(new_name);
            if let Some(t) = target {
                fs::remove_dir_all(self.dir_path(t)?).map_err(errno)?;
                self.nodes.remove(&t);
            } else if fs::symlink_metadata(&to).is_ok() {
                fs::remove_file(&to).map_err(errno)?;
            }
            fs::rename(&from, &to).map_err(errno)?;
            let rel = to
                .strip_prefix(&self.backing)
                .expect("under backing")
                .to_path_buf();
            self.move_dir(ino, rel, new_parent);
        }
        self.dir_entries_mut(parent)?.remove(name);
        self.dir_entries_mut(new_parent)?
            .insert(new_name.to_owned(), ino);
        if let (Some(t), false) = (target, is_dir) {
            self.unlinked(t);
        }
        Ok(())
    }

    /// Points directory `ino` and everything under it at their new backing paths.
    fn move_dir(&mut self, ino: u64, rel: PathBuf, new_parent: u64) {
        let mut stack = vec![(ino, rel, new_parent)];
        while let Some((ino, rel, parent_ino)) = stack.pop() {
            if let Some(Node {
                kind:
                    Kind::Dir {
                        path,
                        entries,
                        parent,
                    },
                ..
            }) = self.nodes.get_mut(&ino)
            {
                *path = rel.clone();
                *parent = parent_ino;
                for (name, &child) in entries.iter() {
                    stack.push((child, rel.join(name), ino));
                }
            }
        }
    }

    /// Makes the backing directory's file entries match the in-memory ones.
    pub fn fsync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        let dir = self.dir_path(ino)?;
        let wanted: Vec<(OsString, u64)> = self
            .dir_entries(ino)?
            .iter()
            .filter_map(|(name, &child)| match &self.nodes.get(&child)?.kind {
                Kind::File(f) => Some((name.clone(), f.object)),
                Kind::Dir { .. } => None,
            })
            .collect();
        let mut dropped = Vec::new();
        for entry in fs::read_dir(&dir).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let name = entry.file_name();
            if ino == ROOT && name == META_DIR {
                continue;
            }
            let meta = fs::symlink_metadata(entry.path()).map_err(errno)?;
            if meta.is_dir() {
                continue;
            }
            let object = self.object_by_backing_ino.get(&meta.ino()).copied();
            let keep = wanted.iter().any(|(n, o)| *n == name && Some(*o) == object);
            if !keep {
                fs::remove_file(entry.path()).map_err(errno)?;
                dropped.extend(object);
            }
        }
        for (name, object) in wanted {
            let path = dir.join(&name);
            if fs::symlink_metadata(&path).is_ok() {
                continue; // the right object, or it would have been removed above
            }
            fs::hard_link(self.object_path(object), &path).map_err(errno)?;
        }
        for object in dropped {
            self.gc_object(object);
        }
        Ok(())
    }

    pub fn statfs(&self) -> Result<libc::statvfs, Errno> {
        let path = std::ffi::CString::new(self.backing.as_os_str().as_encoded_bytes())
            .map_err(|_| libc::EINVAL)?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a zeroed out-parameter of the right type.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(errno(io::Error::last_os_error()));
        }
        Ok(st)
    }
}

fn dir_node(path: PathBuf, parent: u64, meta: &fs::Metadata, now: SystemTime) -> Node {
    Node {
        kind: Kind::Dir {
            path,
            entries: BTreeMap::new(),
            parent,
        },
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.modified().unwrap_or(now),
        atime: now,
        ctime: now,
        lookups: 0,
    }
}

fn file_node(object: u64, meta: &fs::Metadata, nlink: u32) -> Node {
    let now = SystemTime::now();
    Node {
        kind: Kind::File(FileNode {
            object,
            content: Content::durable(meta.len()),
            nlink,
            open: 0,
            handle: None,
        }),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.modified().unwrap_or(now),
        atime: now,
        ctime: now,
        lookups: 0,
    }
}

impl Node {
    pub fn parent(&self) -> Option<u64> {
        match &self.kind {
            Kind::Dir { parent, .. } => Some(*parent),
            Kind::File(_) => None,
        }
    }
}
