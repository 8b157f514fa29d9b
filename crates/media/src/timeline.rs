//! Keeps one push's timeline monotonic across encoder clock jumps (R-IN-6).
//!
//! Encoders reset their clock without reconnecting (an OBS output restart, a relay that
//! switches sources, a camera that reboots its encoder) or jump forward (a paused source
//! resuming with wall-clock timestamps). Written as they arrive, those timestamps make
//! files whose DTS goes backwards (ffmpeg: "non monotonically increasing dts"), playlists
//! shorter than their media, and segments that never end. So each track's decode times
//! pass through a [`Rebaser`] after unwrapping: a step back by more than
//! [`BACKWARD_TOLERANCE`], or forward by more than the configured maximum jump, starts a
//! new *epoch* whose offset makes the stream continue one frame after the later of its
//! tracks' last frames. Small
//! backward steps (jitter of interleaving encoders) are not jumps: the frame is placed
//! just after the previous one of its track instead, without moving the offset, so
//! nothing accumulates.
//!
//! Audio and video jump together when an encoder resets, one after the other in the
//! stream. The second track to jump first tries the offset the first one chose: when it
//! places the track just after its previous frame (within the tolerance), both keep
//! their relative timing exactly, so A/V sync survives the jump; otherwise it gets its
//! own offset (within one frame of the other's).

use crate::{Millis, TrackKind};

/// A step back within one track by up to this much is jitter, not a new timeline.
pub const BACKWARD_TOLERANCE: Millis = Millis::from_ms(1000);

/// Frame duration assumed for a track before two of its frames were seen.
const DEFAULT_FRAME: [i64; 2] = [33, 23];

#[derive(Debug, Clone, Copy, Default)]
struct Track {
    /// Last input and output decode time.
    last: Option<(i64, i64)>,
    /// The next frame starts a new epoch whatever its step (a spliced push, R-SP-1).
    force: bool,
    /// Added to this track's input times.
    offset: i64,
    /// Last positive step, for placing the first frame after a jump.
    frame: Option<i64>,
}

/// The result of mapping one decode time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub dts: Millis,
    /// This frame starts a new epoch: the stream's timeline jumped right before it (a
    /// second track joining an epoch the other track started does not say so again).
    pub jumped: bool,
}

/// Per-push timeline keeper; see the module docs.
#[derive(Debug, Clone)]
pub struct Rebaser {
    max_jump: i64,
    tracks: [Track; 2],
}

fn slot(kind: TrackKind) -> usize {
    match kind {
        TrackKind::Video => 0,
        TrackKind::Audio => 1,
    }
}

impl Rebaser {
    /// `max_jump`: a forward step within one track longer than this is a new timeline.
    pub fn new(max_jump: Millis) -> Self {
        Rebaser {
            max_jump: max_jump.as_ms().max(1),
            tracks: [Track::default(); 2],
        }
    }

    /// A new push continues the timeline (splicing, R-SP-1/3): each track's next frame
    /// starts a new epoch one frame after the stream's last, whatever its timestamp —
    /// an encoder that kept its clock across the reconnect would otherwise leave the
    /// interruption in the file as a gap. The tracks share the new offset when they
    /// can, as for a jump.
    pub fn splice(&mut self) {
        for t in &mut self.tracks {
            if t.last.is_some() {
                t.force = true;
            }
        }
    }

    /// Maps the decode time of a frame of track `kind`.
    pub fn map(&mut self, kind: TrackKind, dts: Millis) -> Mapped {
        let i = slot(kind);
        let d = dts.as_ms();
        let t = self.tracks[i];
        let Some((last_in, last_out)) = t.last else {
            // A track's first frame: the other track's offset, so a track that starts
            // late lines up with the timeline the stream already has.
            let offset = self.tracks[1 - i].offset;
            self.tracks[i] = Track {
                last: Some((d, d.saturating_add(offset))),
                offset,
                frame: None,
                force: false,
            };
            return Mapped {
                dts: Millis::from_ms(d.saturating_add(offset)),
                jumped: false,
            };
        };
        let step = d.saturating_sub(last_in);
        let jump = t.force || step < -BACKWARD_TOLERANCE.as_ms() || step > self.max_jump;
        let (out, offset, jumped) = if jump {
            // The new timeline starts one frame after the later of the two tracks, as a
            // continuous encoder would have gone on: neither track is moved back under
            // the other's last frame.
            let want = self
                .tracks
                .iter()
                .enumerate()
                .filter_map(|(k, tr)| {
                    let (_, o) = tr.last?;
                    Some(o.saturating_add(tr.frame.unwrap_or(DEFAULT_FRAME[k])))
                })
                .max()
                .unwrap_or(last_out);
            let other = self.tracks[1 - i].offset;
            let joined = d.saturating_add(other);
            // (A track still due for a splice has not chosen its new offset yet.)
            let other_chosen = !self.tracks[1 - i].force;
            // Joining the other track's epoch keeps A/V sync exact when it lands this
            // track just after its last frame.
            if other_chosen
                && other != t.offset
                && joined > last_out
                && joined.saturating_sub(want) <= BACKWARD_TOLERANCE.as_ms()
            {
                (joined, other, false)
            } else {
                (want, want.saturating_sub(d), true)
            }
        } else {
            // Within tolerance: never back, never on the same instant as the previous
            // frame of the track (a zero-length sample), offset unchanged.
            let out = d.saturating_add(t.offset).max(last_out.saturating_add(1));
            (out, t.offset, false)
        };
        let frame = if !jump && step > 0 {
            Some(step)
        } else {
            t.frame
        };
        self.tracks[i] = Track {
            last: Some((d, out)),
            offset,
            frame,
            force: false,
        };
        Mapped {
            dts: Millis::from_ms(out),
            jumped,
        }
    }

    /// Maps a codec configuration's time: in its track's current epoch, never before the
    /// track's last frame. It does not move the timeline (a sequence header's timestamp
    /// is often 0 or stale).
    pub fn map_config(&self, kind: TrackKind, dts: Millis) -> Millis {
        let t = &self.tracks[slot(kind)];
        let out = dts.as_ms().saturating_add(t.offset);
        Millis::from_ms(match t.last {
            Some((_, last_out)) => out.max(last_out),
            None => out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TrackKind::{Audio, Video};

    fn run(r: &mut Rebaser, frames: &[(TrackKind, i64)]) -> Vec<(i64, bool)> {
        frames
            .iter()
            .map(|&(k, d)| {
                let m = r.map(k, Millis::from_ms(d));
                (m.dts.as_ms(), m.jumped)
            })
            .collect()
    }

    fn ten_s() -> Rebaser {
        Rebaser::new(Millis::from_ms(10_000))
    }

    #[test]
    fn a_steady_stream_passes_unchanged() {
        let mut r = ten_s();
        let v: Vec<(TrackKind, i64)> = (0..100)
            .flat_map(|i| [(Video, i * 40), (Audio, i * 40 + 3)])
            .collect();
        let out = run(&mut r, &v);
        for ((_, d), (o, j)) in v.iter().zip(out) {
            assert_eq!((o, j), (*d, false));
        }
    }

    #[test]
    fn a_clock_reset_continues_one_frame_later_with_av_sync_kept() {
        let mut r = ten_s();
        let mut frames = Vec::new();
        for i in 0..500 {
            frames.push((Video, 1000 + i * 40));
            frames.push((Audio, 1010 + i * 40));
        }
        // The encoder restarts at 0: video first, audio right after.
        for i in 0..100 {
            frames.push((Video, i * 40));
            frames.push((Audio, 10 + i * 40));
        }
        let out = run(&mut r, &frames);
        let jumps: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, (_, j))| *j)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(jumps, vec![1000], "one jump, said once");
        let last_v = 1000 + 499 * 40;
        // Audio's last frame (last_v + 10) is the later one: video continues one frame
        // after it, and audio keeps its 10 ms lead.
        assert_eq!(
            out[1000].0,
            last_v + 10 + 40,
            "one frame after the later track"
        );
        assert_eq!(
            out[1001].0,
            last_v + 10 + 40 + 10,
            "audio keeps its 10 ms lead"
        );
        for pair in out.chunks(2) {
            assert_eq!(pair[1].0 - pair[0].0, 10, "A/V offset kept: {pair:?}");
        }
        for k in [0, 1] {
            let track: Vec<i64> = out.iter().skip(k).step_by(2).map(|x| x.0).collect();
            assert!(track.windows(2).all(|w| w[1] > w[0]), "monotonic");
        }
    }

    #[test]
    fn a_jump_forward_past_the_limit_is_closed_but_a_shorter_gap_is_kept() {
        let mut r = ten_s();
        let out = run(
            &mut r,
            &[(Video, 0), (Video, 40), (Video, 5040), (Video, 5080)],
        );
        assert_eq!(
            out,
            vec![(0, false), (40, false), (5040, false), (5080, false)]
        );
        let hour = 3_600_000;
        let out = run(&mut r, &[(Video, 5080 + hour), (Video, 5120 + hour)]);
        assert_eq!(out, vec![(5120, true), (5160, false)]);
    }

    #[test]
    fn small_backward_jitter_never_goes_back_and_never_accumulates() {
        let mut r = ten_s();
        let out = run(
            &mut r,
            &[
                (Audio, 100),
                (Audio, 123),
                (Audio, 120),
                (Audio, 146),
                (Audio, 146),
                (Audio, 169),
            ],
        );
        assert_eq!(
            out,
            vec![
                (100, false),
                (123, false),
                (124, false),
                (146, false),
                (147, false),
                (169, false)
            ]
        );
    }

    #[test]
    fn a_late_track_lines_up_with_a_rebased_timeline() {
        let mut r = ten_s();
        run(&mut r, &[(Video, 50_000), (Video, 50_040), (Video, 0)]);
        // Video is now offset by +50 080; audio appearing later at its raw 40 lines up.
        let a = r.map(Audio, Millis::from_ms(40));
        assert_eq!(
            a,
            Mapped {
                dts: Millis::from_ms(50_120),
                jumped: false
            }
        );
    }

    #[test]
    fn configs_follow_their_track_and_never_go_back() {
        let mut r = ten_s();
        run(&mut r, &[(Video, 20_000), (Video, 20_040), (Video, 0)]);
        // A sequence header sent with the reset, stamped 0.
        assert_eq!(r.map_config(Video, Millis::from_ms(0)).as_ms(), 20_080);
        // One stamped in the old epoch.
        assert_eq!(r.map_config(Video, Millis::from_ms(5)).as_ms(), 20_085);
    }

    #[test]
    fn a_splice_continues_one_frame_later_even_when_the_clock_kept_running() {
        let mut r = Rebaser::new(Millis::MAX);
        run(&mut r, &[(Video, 0), (Audio, 5), (Video, 40), (Audio, 28)]);
        r.splice();
        // The encoder reconnected 3 s later with its clock still running.
        let out = run(&mut r, &[(Video, 3040), (Audio, 3045), (Video, 3080)]);
        assert_eq!(out, vec![(80, true), (85, false), (120, false)]);
        // Nothing more is forced.
        assert_eq!(run(&mut r, &[(Video, 3120)]), vec![(160, false)]);
    }

    #[test]
    fn absurd_timestamps_do_not_overflow() {
        let mut r = Rebaser::new(Millis::from_ms(10_000));
        let out = run(
            &mut r,
            &[
                (Video, i64::MAX - 5),
                (Video, i64::MIN + 5),
                (Video, 0),
                (Audio, i64::MAX),
            ],
        );
        assert_eq!(out.len(), 4);
        assert!(out[1].0 >= out[0].0);
    }
}
