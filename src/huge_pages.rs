//! Transparent huge pages, turned off for the whole process at start.
//!
//! mimalloc asks the kernel for transparent huge pages on the memory it maps
//! (`madvise(MADV_HUGEPAGE)`), and Linux then backs each first touch of such memory
//! with a 2 MiB page, zeroed whole. A node churns through large short-lived buffers
//! (request bodies, encoded entries and replication requests of hundreds of KiB),
//! and mimalloc gives freed memory back to the kernel after a delay; touched again,
//! it is zeroed again, 2 MiB at a time however little of it is used. Under batch
//! submits that zeroing (`clear_page_erms` under `do_huge_pmd_anonymous_page`) was
//! the largest item of every node's profile: 24 % of the leader's CPU and 29 % of a
//! follower's (docs/PERFORMANCE.md, "A leaner write path"). With 4 KiB pages only
//! what is touched is zeroed.
//!
//! `PR_SET_THP_DISABLE` is checked by the kernel at each fault, so it covers memory
//! mapped before it was set too, and it is inherited by child processes. It is the
//! same switch mimalloc flips itself when run with `MIMALLOC_ALLOW_THP=0`.

/// Turns transparent huge pages off for this process; false if the kernel refused
/// (or the system has none), which changes nothing else.
pub fn disable_transparent_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with these arguments only sets a flag of this process.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_process_runs_without_transparent_huge_pages_once_disabled() {
        assert!(disable_transparent_huge_pages());
        // SAFETY: reads a flag of this process.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
