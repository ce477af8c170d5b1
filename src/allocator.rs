//! What the memory allocator holds, for `/metrics`.
//!
//! The binary's Rust code allocates with mimalloc (see `main.rs`; RocksDB's C++ code
//! allocates with the C library's malloc). mimalloc's committed bytes are the
//! address space it holds for reuse. On Linux that figure still counts pages it
//! gave back to the kernel (`MADV_DONTNEED`), so it is an upper bound of what
//! mimalloc keeps resident, not the resident size: read it beside the resident size
//! and the store's pools ([`crate::store::StoreMemory`]). A committed figure that
//! keeps rising means the allocator's address space grows (fragmentation); a
//! resident size that rises while it stays flat points outside mimalloc. Where the
//! process allocates with another allocator (the test binaries), mimalloc holds
//! next to nothing and reports so.

/// Bytes mimalloc holds committed (read/write memory it reserved and did not
/// release, including pages it reset), and the peak of that since the process
/// started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    pub current: u64,
    pub peak: u64,
}

/// mimalloc's current and peak committed bytes.
pub fn committed() -> Committed {
    let mut v = [0usize; 8];
    let [elapsed, user, system, rss, peak_rss, commit, peak_commit, faults] = &mut v;
    // SAFETY: mimalloc writes one usize through each pointer, all valid and distinct.
    unsafe {
        libmimalloc_sys::mi_process_info(
            elapsed,
            user,
            system,
            rss,
            peak_rss,
            commit,
            peak_commit,
            faults,
        );
    }
    Committed {
        current: *commit as u64,
        peak: *peak_commit as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mimalloc_counts_what_it_commits() {
        // The test binary's global allocator is the system's; allocating through
        // mimalloc directly must show up in its committed bytes.
        let before = committed();
        let size = 64 << 20;
        // SAFETY: a plain allocation, written and then freed with the same allocator.
        let p = unsafe { libmimalloc_sys::mi_malloc(size) } as *mut u8;
        assert!(!p.is_null());
        unsafe { std::ptr::write_bytes(p, 1, size) };
        let during = committed();
        unsafe { libmimalloc_sys::mi_free(p.cast()) };
        assert!(
            during.current >= before.current + size as u64,
            "{before:?} -> {during:?}"
        );
        assert!(during.peak >= during.current);
    }
}
