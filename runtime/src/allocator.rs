//! The one allocator knob ztunnel turns: after a large xDS update, hand the
//! pages it freed back to the kernel now.
//!
//! The `ztunnel` binary allocates with mimalloc. mimalloc purges free pages
//! lazily, from later allocation calls, once they have been free for its
//! purge delay (1 s). After the first sync an idle ztunnel makes almost no
//! allocations, so the transient garbage of that sync (the decoded response,
//! the snapshot being built) stayed resident: 4.4 KiB of RSS per workload
//! held at 10,000 workloads, about half of it free pages (benches/README.md).
//! Setting the purge delay to 0 instead would purge on every free in the
//! data path too, which is what made glibc malloc fault buffers back in on
//! every burst.

/// Responses carrying at least this many resource bytes are followed by a
/// collection: about 400 workloads' worth. A one-workload delta is ~150
/// bytes and never pays for one.
pub const BULK_UPDATE_BYTES: usize = 64 * 1024;

/// Frees this thread's cached free pages and purges free memory to the OS
/// now. In a process whose global allocator is not mimalloc (tests, the
/// in-process xDS clients of `xds-bench`) this only touches mimalloc's own,
/// empty heap.
pub fn release_free_memory() {
    // SAFETY: mi_collect has no preconditions; it may be called from any
    // thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
