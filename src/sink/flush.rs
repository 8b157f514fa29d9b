//! When an open spool file's buffered bytes are written to the kernel (issue 11, R-ST-4).
//!
//! Appends are buffered so 100 streams cost a few writes per second each, not one per
//! frame. A size threshold alone bounds the loss in bytes, not in time: at 64 kb/s a
//! 256 KiB buffer is half a minute of media, and a `kill -9` lost all of it. So a buffer
//! is written when it reaches [`FLUSH_BYTES`] or when its oldest byte has waited
//! `[spool] flush_interval`, whichever comes first: at 3 Mb/s the size rule fires (about
//! 1.4 writes a second), at low bitrates the time rule does (one a second by default).
//!
//! The time rule must also hold when no byte follows (a stalled or slow publisher), so it
//! is a deadline the recorder task sleeps until ([`FlushPolicy::due_at`]), not a check
//! made on the next append. Nothing polls: a recorder with nothing buffered has no
//! deadline.

use std::time::Duration;

use tokio::time::Instant;

/// Bytes buffered per open file before a write regardless of age: ~0.7 s at 3 Mb/s.
pub const FLUSH_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    pub bytes: usize,
    pub interval: Duration,
}

impl FlushPolicy {
    pub fn new(interval: Duration) -> Self {
        Self {
            bytes: FLUSH_BYTES,
            interval,
        }
    }

    /// When a buffer of `pending` bytes, the oldest buffered at `oldest`, must be
    /// written: at once when it is full, else `interval` after its oldest byte; never
    /// when it is empty.
    pub fn due_at(&self, pending: usize, oldest: Option<Instant>) -> Option<Instant> {
        let oldest = oldest.filter(|_| pending > 0)?;
        if pending >= self.bytes {
            Some(oldest)
        } else {
            Some(oldest + self.interval)
        }
    }

    pub fn is_due(&self, pending: usize, oldest: Option<Instant>, now: Instant) -> bool {
        self.due_at(pending, oldest).is_some_and(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_small_buffer_is_due_one_interval_after_its_oldest_byte() {
        let p = FlushPolicy::new(SECOND);
        let t0 = Instant::now();
        assert_eq!(p.due_at(100, Some(t0)), Some(t0 + SECOND));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!p.is_due(100, Some(t0), Instant::now()));
        // Later bytes do not move the deadline: it is the oldest byte's.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(p.is_due(5_000, Some(t0), Instant::now()));
        // A sleep until the deadline wakes exactly there (the recorder's timer).
        let t1 = Instant::now();
        let due = p.due_at(1, Some(t1)).expect("deadline");
        tokio::time::sleep_until(due).await;
        assert_eq!(Instant::now() - t1, SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_buffer_is_due_at_once_and_an_empty_one_never() {
        let p = FlushPolicy::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(p.due_at(FLUSH_BYTES, Some(t0)), Some(t0));
        assert!(p.is_due(FLUSH_BYTES + 1, Some(t0), t0));
        assert!(!p.is_due(FLUSH_BYTES - 1, Some(t0), t0));
        assert_eq!(p.due_at(0, Some(t0)), None);
        assert_eq!(p.due_at(10, None), None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!p.is_due(0, Some(t0), Instant::now()));
    }
}
