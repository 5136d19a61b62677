//! The memory bound of the decode workers: images in flight may hold at most [`budget_bytes`] of working
//! memory together (decoded pixels, the RGB8 copy, the LR, the variants and the cut patches, estimated from
//! the header as [`cost`]), plus the one image at the head of the stream, which always proceeds.
//!
//! Without it, memory is workers × image size: two 20000×20000 PNGs on two workers took 7.6 GB. With it, an
//! image whose estimate is over the budget waits until it is at the head of the stream (every earlier image
//! handed on), so such images are processed one at a time beside at most a budget's worth of others; the run
//! says so in a warning. The budget only changes when work happens, never what is produced.
//!
//! Why the head always proceeds: the consumer hands images on in order, so holding back the head image would
//! deadlock a stream whose later images hold the budget.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Environment variable overriding the budget, in MiB.
pub const BUDGET_ENV: &str = "SRCACHE_DECODE_BUDGET_MIB";

/// Default budget: 4 GiB, about 80 DF2K-sized images (2040×1404) at once, far more than the queue holds, so
/// ordinary datasets never wait; a 20000×20000 image (≈7 GB estimated) is processed alone.
pub const DEFAULT_BUDGET_MIB: u64 = 4096;

/// The budget in bytes: [`BUDGET_ENV`] when set to a positive number of MiB, else [`DEFAULT_BUDGET_MIB`].
pub fn budget_bytes() -> u64 {
    let mib = std::env::var(BUDGET_ENV).ok().and_then(|v| v.trim().parse::<u64>().ok()).filter(|&m| m > 0).unwrap_or(DEFAULT_BUDGET_MIB);
    mib.saturating_mul(1 << 20)
}

/// Estimated working memory of one image of `width`×`height` with `variants` degradation variants: the
/// decoder's buffer (up to 6 bytes a pixel for 16-bit RGB), the RGB8 image and its mod-crop (3 + 3), and per
/// variant a degraded copy and its patches (3 + 3).
pub fn cost(width: u32, height: u32, variants: usize) -> u64 {
    let px = width as u64 * height as u64;
    px.saturating_mul(12 + 6 * variants.max(1) as u64)
}

#[derive(Default)]
struct State {
    used: u64,
    /// Lowest image index not yet handed on by the consumer.
    head: usize,
    closed: bool,
    held: HashMap<usize, u64>,
}

/// The shared budget of one stream's workers.
pub(crate) struct Budget {
    limit: u64,
    state: Mutex<State>,
    cv: Condvar,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Budget {
        Budget { limit, state: Mutex::new(State::default()), cv: Condvar::new() }
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a worker panicked holding it; the counts are still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until image `i` may start (`cost` fits, nothing else is in flight, or `i` is the head); false
    /// when the stream was dropped meanwhile.
    pub(crate) fn acquire(&self, i: usize, cost: u64) -> bool {
        let mut st = self.lock();
        loop {
            if st.closed {
                return false;
            }
            if i <= st.head || st.used == 0 || st.used.saturating_add(cost) <= self.limit {
                st.used = st.used.saturating_add(cost);
                st.held.insert(i, cost);
                return true;
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The consumer handed image `i` on (its memory now belongs to the samples being consumed) and the head
    /// is now `head`.
    pub(crate) fn release(&self, i: usize, head: usize) {
        let mut st = self.lock();
        if let Some(c) = st.held.remove(&i) {
            st.used = st.used.saturating_sub(c);
        }
        st.head = head;
        self.cv.notify_all();
    }

    /// The stream is gone: waiting workers give up.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn an_image_over_the_budget_waits_and_the_head_never_waits() {
        let b = Arc::new(Budget::new(100));
        assert!(b.acquire(0, 60));
        // Image 2 (60) does not fit beside image 0 and is not the head: it waits.
        let b2 = b.clone();
        let waiter = std::thread::spawn(move || b2.acquire(2, 60));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "image 2 started over the budget");
        // Image 0 handed on: nothing is in flight, image 2 starts.
        b.release(0, 1);
        assert!(waiter.join().expect("join"));
        // The head (image 1) starts at once, over the budget and beside image 2.
        assert!(b.acquire(1, 500), "the head image must never wait");
        // Image 3 waits (over the budget, not the head) until the stream is dropped.
        let b3 = b.clone();
        let w = std::thread::spawn(move || b3.acquire(3, 10));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!w.is_finished());
        b.close();
        assert!(!w.join().expect("join"));
    }
}
