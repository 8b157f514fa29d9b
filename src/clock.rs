//! Wall-clock time, injected: the task scheduler and the recording supervisor take a
//! [`Clock`] so their rules run in unit tests on tokio's paused clock (milliseconds of
//! real time for hours of schedule), while the daemon reads the system clock.

use std::sync::Arc;

use media::WallMillis;

/// Wall-clock now: typed, so it cannot be mixed with stream time (`media::Millis`).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> WallMillis;

    /// Unix milliseconds now, for the task table's serialized times.
    fn now_ms(&self) -> i64 {
        self.now().as_unix_ms()
    }
}

/// The system clock (what the daemon runs on).
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> WallMillis {
        WallMillis::from_unix_ms(chrono::Utc::now().timestamp_millis())
    }
}

pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A wall clock that follows tokio's clock from a fixed start, so `tokio::time::pause`
/// and `advance` move it (tests).
#[cfg(test)]
pub struct TokioClock {
    start_ms: i64,
    start: tokio::time::Instant,
}

#[cfg(test)]
impl TokioClock {
    pub fn starting_at(start_ms: i64) -> Arc<Self> {
        Arc::new(TokioClock {
            start_ms,
            start: tokio::time::Instant::now(),
        })
    }
}

#[cfg(test)]
impl Clock for TokioClock {
    fn now(&self) -> WallMillis {
        WallMillis::from_unix_ms(self.start_ms + self.start.elapsed().as_millis() as i64)
    }
}
