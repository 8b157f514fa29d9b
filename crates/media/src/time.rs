/// Unwraps RTMP's 32-bit millisecond timestamps into a 64-bit timeline (R-IN-6).
///
/// RTMP timestamps are unsigned and wrap every 2^32 ms (49.7 days); encoders that put
/// audio and video on one chunk stream, or interleave them, produce small backward steps.
/// So each new timestamp is placed at the signed 32-bit modular distance from the last
/// one: a step of less than 2^31 ms either way is taken literally, anything larger is a
/// wrap. This never panics and never jumps by 2^32.
use crate::Millis;

#[derive(Debug, Clone, Default)]
pub struct TimestampUnwrapper {
    last: Option<(u32, i64)>,
}

impl TimestampUnwrapper {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn unwrap(&mut self, ts: u32) -> Millis {
        let out = match self.last {
            None => i64::from(ts),
            Some((prev_raw, prev)) => {
                let delta = ts.wrapping_sub(prev_raw) as i32;
                prev.saturating_add(i64::from(delta))
            }
        };
        self.last = Some((ts, out));
        Millis::from_ms(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seq: &[u32]) -> Vec<i64> {
        let mut u = TimestampUnwrapper::new();
        seq.iter().map(|&t| u.unwrap(t).as_ms()).collect()
    }

    #[test]
    fn monotonic_input_is_unchanged() {
        assert_eq!(run(&[0, 33, 66, 100]), vec![0, 33, 66, 100]);
    }

    #[test]
    fn crossing_2_pow_24_is_continuous() {
        let b = (1u32 << 24) - 40;
        assert_eq!(
            run(&[b, b + 20, b + 40, b + 60]),
            vec![b as i64, b as i64 + 20, b as i64 + 40, b as i64 + 60]
        );
    }

    #[test]
    fn crossing_2_pow_31_stays_positive() {
        let b = (1u32 << 31) - 10;
        let out = run(&[b, b + 10, b + 20]);
        assert_eq!(out, vec![b as i64, 1i64 << 31, (1i64 << 31) + 10]);
    }

    #[test]
    fn crossing_2_pow_32_wraps_forward() {
        let b = u32::MAX - 15;
        let out = run(&[b, u32::MAX, 16, 48]);
        let base = b as i64;
        assert_eq!(out, vec![base, base + 15, base + 32, base + 64]);
    }

    #[test]
    fn small_backward_step_is_negative_delta() {
        // Audio and video on one chunk stream: video at 100, then audio at 90.
        assert_eq!(run(&[100, 90, 133]), vec![100, 90, 133]);
        // Backward step across the wrap point.
        let out = run(&[5, u32::MAX - 4]);
        assert_eq!(out, vec![5, -5]);
    }
}
