//! The content of one regular file as the running system sees it: the durable bytes
//! in the backing object file, overlaid with the pages written since the last fsync.
//!
//! Nothing written reaches the object file before [`Content::sync`], so dropping a
//! `Content` is exactly what a power loss does to unsynced data. A truncation is kept
//! in memory too: `zero_from` is the smallest size the file had since its last sync;
//! object bytes at or past it are no longer the file's (they read as zeros unless a
//! dirty page holds newer bytes), yet stay on disk until the next sync.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const PAGE: u64 = 4096;

/// A file's visible content: durable object bytes plus unsynced pages.
#[derive(Debug)]
pub struct Content {
    /// The size the running system sees.
    pub size: u64,
    /// Object bytes at or past this offset are not part of the file (see module doc).
    zero_from: u64,
    /// Pages written since the last sync, by page number; bytes past `size` are zero.
    pages: BTreeMap<u64, Box<[u8]>>,
}

/// Reads `buf.len()` bytes of `obj` at `offset`, zeros past its end.
fn read_object(obj: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = obj.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf[done..].fill(0);
    Ok(())
}

impl Content {
    /// The content of a file whose durable bytes are all of its object.
    pub fn durable(size: u64) -> Self {
        Content {
            size,
            zero_from: size,
            pages: BTreeMap::new(),
        }
    }

    /// Whether anything was written or truncated since the last sync.
    pub fn is_dirty(&self) -> bool {
        !self.pages.is_empty() || self.zero_from != self.size
    }

    /// The visible bytes of page `page`, from `obj` where no dirty page holds them.
    fn load_page(&self, obj: &File, page: u64) -> io::Result<Box<[u8]>> {
        let mut buf = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = page * PAGE;
        let valid = self
            .zero_from
            .min(self.size)
            .saturating_sub(start)
            .min(PAGE) as usize;
        if valid > 0 {
            read_object(obj, start, &mut buf[..valid])?;
        }
        Ok(buf)
    }

    pub fn read(&self, obj: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let page = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let take = ((PAGE - pos % PAGE).min(end - pos)) as usize;
            match self.pages.get(&page) {
                Some(p) => out.extend_from_slice(&p[in_page..in_page + take]),
                None => {
                    let start = out.len();
                    out.resize(start + take, 0);
                    let valid = self.zero_from.saturating_sub(pos).min(take as u64) as usize;
                    if valid > 0 {
                        read_object(obj, pos, &mut out[start..start + valid])?;
                    }
                }
            }
            pos += take as u64;
        }
        Ok(out)
    }

    pub fn write(&mut self, obj: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let page = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let take = (PAGE as usize - in_page).min(rest.len());
            if !self.pages.contains_key(&page) {
                let loaded = self.load_page(obj, page)?;
                self.pages.insert(page, loaded);
            }
            let p = self.pages.get_mut(&page).expect("page just loaded");
            p[in_page..in_page + take].copy_from_slice(&rest[..take]);
            rest = &rest[take..];
            pos += take as u64;
        }
        self.size = self.size.max(offset + data.len() as u64);
        Ok(())
    }

    pub fn truncate(&mut self, size: u64) {
        if size < self.size {
            let first_gone = size.div_ceil(PAGE);
            self.pages.split_off(&first_gone);
            if size % PAGE != 0 {
                if let Some(p) = self.pages.get_mut(&(size / PAGE)) {
                    p[(size % PAGE) as usize..].fill(0);
                }
            }
            self.zero_from = self.zero_from.min(size);
        }
        self.size = size;
    }

    /// Makes the visible content the object's content (an fsync).
    pub fn sync(&mut self, obj: &File) -> io::Result<()> {
        if !self.is_dirty() {
            return Ok(());
        }
        obj.set_len(self.zero_from.min(self.size))?;
        obj.set_len(self.size)?;
        for (&page, bytes) in &self.pages {
            let start = page * PAGE;
            let len = self.size.saturating_sub(start).min(PAGE) as usize;
            obj.write_all_at(&bytes[..len], start)?;
        }
        self.pages.clear();
        self.zero_from = self.size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), bytes).unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .open(f.path())
            .unwrap();
        (f, file)
    }

    #[test]
    fn unsynced_writes_stay_out_of_the_object_until_sync() {
        let (_f, obj) = object(b"hello world");
        let mut c = Content::durable(11);
        c.write(&obj, 6, b"there, friend").unwrap();
        assert_eq!(c.read(&obj, 0, 100).unwrap(), b"hello there, friend");
        assert_eq!(std::fs::read(_f.path()).unwrap(), b"hello world");
        c.sync(&obj).unwrap();
        assert_eq!(std::fs::read(_f.path()).unwrap(), b"hello there, friend");
        assert!(!c.is_dirty());
    }

    #[test]
    fn truncate_then_extend_reads_zeros_not_old_bytes() {
        let (f, obj) = object(&[7u8; 10_000]);
        let mut c = Content::durable(10_000);
        c.truncate(5);
        c.write(&obj, 9_000, b"x").unwrap();
        let all = c.read(&obj, 0, 20_000).unwrap();
        assert_eq!(all.len(), 9_001);
        assert_eq!(&all[..5], &[7u8; 5]);
        assert!(all[5..9_000].iter().all(|&b| b == 0));
        assert_eq!(all[9_000], b'x');
        assert_eq!(std::fs::read(f.path()).unwrap().len(), 10_000);
        c.sync(&obj).unwrap();
        assert_eq!(std::fs::read(f.path()).unwrap(), all);
    }
}
