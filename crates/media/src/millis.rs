//! The two clocks liverec keeps apart (issue 10): [`Millis`], a time or a duration on the
//! stream's own (unwrapped RTMP) timeline, and [`WallMillis`], a wall-clock instant
//! (unix-epoch milliseconds) such as the arrival of a packet. They are separate types so
//! a media timestamp can never be used as a date, nor a date mixed into media
//! arithmetic; containers convert media time to their tick rates only through
//! [`Millis::to_ticks`] / [`Millis::from_ticks`].
//!
//! All arithmetic saturates: every value may come from a publisher (hostile input, R-SEC-3)
//! and overflow must neither panic nor wrap (reliability.md T5).

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};

/// The MPEG-TS system clock rate (PTS/DTS ticks per second).
pub const TS_HZ: u32 = 90_000;

/// Milliseconds on the unwrapped 64-bit stream timeline (R-IN-6), or a duration on it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(i64);

impl Millis {
    pub const ZERO: Millis = Millis(0);
    pub const MIN: Millis = Millis(i64::MIN);
    pub const MAX: Millis = Millis(i64::MAX);

    pub const fn from_ms(ms: i64) -> Self {
        Millis(ms)
    }

    pub const fn as_ms(self) -> i64 {
        self.0
    }

    /// Whole seconds, for configuration values; saturates.
    pub const fn from_secs(s: i64) -> Self {
        Millis(s.saturating_mul(1000))
    }

    /// Seconds given as a float (configuration values), rounded toward zero; saturates,
    /// and NaN is zero.
    pub fn from_secs_f64(s: f64) -> Self {
        Millis((s * 1000.0) as i64)
    }

    /// Seconds as a float (playlist durations, FLV `duration`).
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    pub const fn saturating_add(self, d: Millis) -> Self {
        Millis(self.0.saturating_add(d.0))
    }

    pub const fn saturating_sub(self, d: Millis) -> Self {
        Millis(self.0.saturating_sub(d.0))
    }

    /// Distance between two times, whichever comes first.
    pub const fn abs_diff(self, other: Millis) -> u64 {
        self.0.abs_diff(other.0)
    }

    /// The length of a duration, whichever its sign.
    pub const fn unsigned_abs(self) -> u64 {
        self.0.unsigned_abs()
    }

    /// This time in ticks of a `timescale` Hz clock, rounded toward negative infinity.
    /// Wide, so no input can overflow: callers clamp or wrap as their container says.
    pub fn to_ticks(self, timescale: u32) -> i128 {
        (i128::from(self.0) * i128::from(timescale)).div_euclid(1000)
    }

    /// 90 kHz ticks (MPEG-TS PTS/DTS, before the 33-bit wrap).
    pub fn to_ts_ticks(self) -> i128 {
        self.to_ticks(TS_HZ)
    }

    /// The time of `ticks` of a `timescale` Hz clock, rounded toward negative infinity;
    /// saturates. A zero timescale is taken as 1 Hz rather than dividing by zero.
    pub fn from_ticks(ticks: i128, timescale: u32) -> Self {
        let ms = (ticks.saturating_mul(1000)).div_euclid(i128::from(timescale.max(1)));
        Millis(ms.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
    }
}

impl fmt::Debug for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// The bare number, so log fields read as before.
impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Add for Millis {
    type Output = Millis;
    fn add(self, d: Millis) -> Millis {
        self.saturating_add(d)
    }
}

impl AddAssign for Millis {
    fn add_assign(&mut self, d: Millis) {
        *self = *self + d;
    }
}

impl Sub for Millis {
    type Output = Millis;
    fn sub(self, d: Millis) -> Millis {
        self.saturating_sub(d)
    }
}

impl SubAssign for Millis {
    fn sub_assign(&mut self, d: Millis) {
        *self = *self - d;
    }
}

/// A wall-clock instant in unix-epoch milliseconds: when a packet arrived (read from the
/// socket), when a file began. Only durations ([`Millis`]) can be added to it, and the
/// difference of two instants is a duration.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WallMillis(i64);

impl WallMillis {
    pub const fn from_unix_ms(ms: i64) -> Self {
        WallMillis(ms)
    }

    pub const fn as_unix_ms(self) -> i64 {
        self.0
    }
}

impl fmt::Debug for WallMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WallMillis({})", self.0)
    }
}

impl Add<Millis> for WallMillis {
    type Output = WallMillis;
    fn add(self, d: Millis) -> WallMillis {
        WallMillis(self.0.saturating_add(d.as_ms()))
    }
}

impl Sub<Millis> for WallMillis {
    type Output = WallMillis;
    fn sub(self, d: Millis) -> WallMillis {
        WallMillis(self.0.saturating_sub(d.as_ms()))
    }
}

impl Sub for WallMillis {
    type Output = Millis;
    fn sub(self, other: WallMillis) -> Millis {
        Millis::from_ms(self.0.saturating_sub(other.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Millis::MAX + Millis::from_ms(1), Millis::MAX);
        assert_eq!(Millis::MIN - Millis::from_ms(1), Millis::MIN);
        assert_eq!(Millis::from_ms(5) - Millis::from_ms(8), Millis::from_ms(-3));
        assert_eq!(
            WallMillis::from_unix_ms(i64::MAX) + Millis::from_ms(1),
            WallMillis::from_unix_ms(i64::MAX)
        );
        assert_eq!(
            WallMillis::from_unix_ms(1000) - WallMillis::from_unix_ms(400),
            Millis::from_ms(600)
        );
    }

    #[test]
    fn ticks_convert_both_ways() {
        assert_eq!(Millis::from_ms(40).to_ts_ticks(), 3600);
        assert_eq!(Millis::from_ms(-1).to_ts_ticks(), -90);
        assert_eq!(Millis::MAX.to_ts_ticks(), i128::from(i64::MAX) * 90);
        assert_eq!(Millis::from_ms(21).to_ticks(48_000), 1008);
        assert_eq!(Millis::from_ms(1).to_ticks(44_100), 44);
        assert_eq!(Millis::from_ticks(1024, 48_000), Millis::from_ms(21));
        assert_eq!(Millis::from_ticks(3600, TS_HZ), Millis::from_ms(40));
        assert_eq!(Millis::from_ticks(5, 0), Millis::from_ms(5000));
        assert_eq!(Millis::from_ticks(i128::MAX, 1), Millis::MAX);
        assert_eq!(Millis::from_secs_f64(2.5), Millis::from_ms(2500));
        assert_eq!(Millis::from_secs_f64(f64::NAN), Millis::ZERO);
        assert_eq!(Millis::from_secs_f64(1e300), Millis::MAX);
    }
}
