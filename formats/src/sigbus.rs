//! A shard truncated by another process while srcache has it mapped makes the next read of the lost pages
//! raise SIGBUS, which by default kills the process without a word (exit 135). `Shard::check_unchanged`
//! catches most such cases as an error before each tensor access; this handler covers the window between that
//! check and the read: it names the shard whose mapping faulted and exits, instead of dying silently.
//!
//! Mapped shards register their address range in a fixed, lock-free table; the handler (installed once by
//! the binary with [`install`]) only reads that table and calls async-signal-safe `write` and `_exit`.

use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

const SLOTS: usize = 4096;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    path: AtomicPtr<libc::c_char>,
}

#[allow(clippy::declare_interior_mutable_const, reason = "array initialiser of a static table")]
const EMPTY: Slot = Slot { start: AtomicUsize::new(0), len: AtomicUsize::new(0), path: AtomicPtr::new(std::ptr::null_mut()) };
static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];

/// A mapped range in the table; removed on drop.
pub(crate) struct Registration {
    slot: Option<usize>,
}

impl Registration {
    pub(crate) fn new(start: usize, len: usize, path: &Path) -> Registration {
        if start == 0 || len == 0 {
            return Registration { slot: None };
        }
        let Ok(c) = CString::new(path.to_string_lossy().into_owned()) else { return Registration { slot: None } };
        for (k, s) in TABLE.iter().enumerate() {
            // Claim a free slot: len 0 -> usize::MAX marks it taken while it is filled in.
            if s.len.compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                s.path.store(c.into_raw(), Ordering::Release);
                s.start.store(start, Ordering::Release);
                s.len.store(len, Ordering::Release);
                return Registration { slot: Some(k) };
            }
        }
        Registration { slot: None } // table full: the fault is still reported, without the shard's name
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(k) = self.slot {
            let s = &TABLE[k];
            s.start.store(0, Ordering::Release);
            let p = s.path.swap(std::ptr::null_mut(), Ordering::AcqRel);
            s.len.store(0, Ordering::Release);
            if !p.is_null() {
                // SAFETY: `p` came from CString::into_raw in `new` and was swapped out, so it is freed once.
                drop(unsafe { CString::from_raw(p) });
            }
        }
    }
}

fn write_all(fd: libc::c_int, b: &[u8]) {
    // SAFETY: write(2) on a valid buffer; async-signal-safe.
    unsafe {
        libc::write(fd, b.as_ptr().cast(), b.len());
    }
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in TABLE.iter() {
        let (start, len) = (s.start.load(Ordering::Acquire), s.len.load(Ordering::Acquire));
        if start != 0 && len != usize::MAX && addr >= start && addr < start.saturating_add(len) {
            write_all(2, b"error: ");
            let p = s.path.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: a NUL-terminated string owned by the table entry.
                let n = unsafe { libc::strlen(p) };
                // SAFETY: `p` points to `n` readable bytes.
                write_all(2, unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) });
                write_all(2, b": ");
            }
            write_all(2, b"shard changed on disk while being read (truncated?): its mapped bytes are gone. Shards must not change while in use; run `srcache verify` on the dataset.\n");
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(1) };
        }
    }
    // Not a shard: fall back to the default action (the faulting access re-raises SIGBUS).
    // SAFETY: resetting a signal disposition is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}

/// Installs the SIGBUS handler (process-wide; the `srcache` binary calls it once at start).
pub fn install() {
    // SAFETY: a zeroed sigaction with a valid SA_SIGINFO handler and an empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}
