//! What the memory allocator holds, for `/metrics`.
//!
//! The binary allocates with mimalloc (see `main.rs`). A node's resident memory is
//! what its live objects use plus what the allocator keeps committed for reuse
//! (freed pages are given back to the kernel after a delay). Exporting the
//! allocator's committed bytes next to the resident size and the store's pools
//! ([`crate::store::StoreMemory`]) tells a growing node's live data from retained
//! pages. Where the process allocates with another allocator (the test binaries),
//! mimalloc holds next to nothing and reports so.

/// Bytes mimalloc holds committed (read/write memory it reserved and did not give
/// back), and the peak of that since the process started.
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
