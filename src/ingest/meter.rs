//! What `/v1/streams` and the console's Live view say about a publish (issue 16): its
//! tracks as their sequence headers describe them, and its bitrate and frame rate over
//! the last seconds.
//!
//! The connection's task measures in its own [`Meter`] (plain integers, no lock or
//! atomic per packet: this is the hot path issue 17 measures) and publishes the
//! window's rates into the shared [`LiveInfo`] once per second of arrivals; readers only
//! ever see whole seconds.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use media::{AudioCodec, Codec, TrackConfig, VideoCodec};
use serde::Serialize;

/// Whole seconds the rates are averaged over.
const WINDOW_S: usize = 5;

/// The video track as its decoder configuration says (H.264: from the SPS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VideoDesc {
    pub codec: &'static str,
    pub profile: Option<&'static str>,
    pub level: Option<String>,
    pub width: Option<u16>,
    pub height: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AudioDesc {
    pub codec: &'static str,
    pub sample_rate: Option<u32>,
    pub channels: Option<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracks {
    pub video: Option<VideoDesc>,
    pub audio: Option<AudioDesc>,
}

/// A publish's description, shared by its connection (writer) and the API (readers).
#[derive(Default)]
pub struct LiveInfo {
    tracks: Mutex<Tracks>,
    bits_per_s: AtomicU64,
    /// Frames per second × 1000.
    frames_per_ks: AtomicU64,
    /// The arrival second the rates were last published at (unix s).
    published_s: AtomicI64,
}

impl LiveInfo {
    pub fn tracks(&self) -> Tracks {
        self.tracks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// (kbit/s, frames/s) over the last [`WINDOW_S`] whole seconds; zeros when nothing
    /// arrived for longer than the window (a stalled encoder shows as stalled, not as
    /// its last rate).
    pub fn rates(&self, now_ms: i64) -> (f64, f64) {
        let at = self.published_s.load(Ordering::Relaxed);
        if now_ms.div_euclid(1000) - at > WINDOW_S as i64 + 1 {
            return (0.0, 0.0);
        }
        (
            self.bits_per_s.load(Ordering::Relaxed) as f64 / 1000.0,
            self.frames_per_ks.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }
}

/// The connection's side: counts the current second and keeps the last [`WINDOW_S`].
pub struct Meter {
    shared: Arc<LiveInfo>,
    second: i64,
    bytes: u64,
    frames: u64,
    /// (bytes, video frames) of the last whole seconds, oldest overwritten first.
    window: [(u64, u64); WINDOW_S],
    next: usize,
    filled: usize,
}

impl Meter {
    pub fn new(shared: Arc<LiveInfo>) -> Self {
        Meter {
            shared,
            second: i64::MIN,
            bytes: 0,
            frames: 0,
            window: [(0, 0); WINDOW_S],
            next: 0,
            filled: 0,
        }
    }

    /// A media packet of `len` body bytes arrived at `at_ms` (unix ms).
    pub fn packet(&mut self, at_ms: i64, len: usize, video: bool) {
        let s = at_ms.div_euclid(1000);
        if s != self.second {
            self.roll(s);
        }
        self.bytes += len as u64;
        self.frames += u64::from(video);
    }

    fn roll(&mut self, s: i64) {
        if self.second != i64::MIN {
            // The finished second, then an empty one for each second nothing arrived in
            // (at most a window's worth; a clock stepping back starts afresh).
            let empty = if s > self.second {
                usize::try_from(s - self.second - 1).unwrap_or(WINDOW_S)
            } else {
                WINDOW_S
            };
            self.push((self.bytes, self.frames));
            for _ in 0..empty.min(WINDOW_S) {
                self.push((0, 0));
            }
            let n = self.filled.max(1) as u64;
            let (bytes, frames) = self.window[..self.filled]
                .iter()
                .fold((0, 0), |(b, f), (wb, wf)| (b + wb, f + wf));
            self.shared
                .bits_per_s
                .store(bytes * 8 / n, Ordering::Relaxed);
            self.shared
                .frames_per_ks
                .store(frames * 1000 / n, Ordering::Relaxed);
            self.shared.published_s.store(s, Ordering::Relaxed);
        }
        self.second = s;
        self.bytes = 0;
        self.frames = 0;
    }

    fn push(&mut self, sample: (u64, u64)) {
        self.window[self.next] = sample;
        self.next = (self.next + 1) % WINDOW_S;
        self.filled = (self.filled + 1).min(WINDOW_S);
    }

    /// A sequence header: the track's description (rare: once per track and push).
    pub fn config(&self, cfg: &TrackConfig) {
        let mut t = self.shared.tracks.lock().unwrap_or_else(|p| p.into_inner());
        match cfg.codec {
            Codec::Video(v) => t.video = Some(describe_video(v, cfg)),
            Codec::Audio(a) => t.audio = Some(describe_audio(a, cfg)),
        }
    }
}

fn describe_video(v: VideoCodec, cfg: &TrackConfig) -> VideoDesc {
    let mut d = VideoDesc {
        codec: Codec::Video(v).name(),
        profile: None,
        level: None,
        width: None,
        height: None,
    };
    if v == VideoCodec::H264 {
        // A record the encoder got wrong still leaves the codec name; the recorders
        // report the error itself.
        if let Ok(avc) = media::avc::AvcConfig::parse(&cfg.record) {
            d.profile = h264_profile(avc.profile);
            d.level = Some(format!("{}.{}", avc.level / 10, avc.level % 10));
            if let Some((w, h)) = avc.sps.first().and_then(|s| media::avc::sps_size(s)) {
                d.width = Some(w);
                d.height = Some(h);
            }
        }
    }
    d
}

/// profile_idc names (ITU-T H.264 Annex A.2).
fn h264_profile(idc: u8) -> Option<&'static str> {
    Some(match idc {
        66 => "Baseline",
        77 => "Main",
        88 => "Extended",
        100 => "High",
        110 => "High 10",
        122 => "High 4:2:2",
        244 => "High 4:4:4",
        _ => return None,
    })
}

fn describe_audio(a: AudioCodec, cfg: &TrackConfig) -> AudioDesc {
    let mut d = AudioDesc {
        codec: Codec::Audio(a).name(),
        sample_rate: None,
        channels: None,
    };
    if a == AudioCodec::Aac {
        if let Ok(asc) = media::aac::AudioSpecificConfig::parse(&cfg.record) {
            d.sample_rate = Some(asc.sample_rate);
            // 0: "defined in the program config element", i.e. not said here.
            d.channels = (asc.channel_config != 0).then_some(asc.channel_config);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use media::Millis;

    #[test]
    fn rates_are_the_average_of_the_last_whole_seconds() {
        let info = Arc::new(LiveInfo::default());
        let mut m = Meter::new(info.clone());
        // 25 video frames of 1000 bytes and 50 audio packets of 100 bytes per second,
        // for 8 s: 25 fps and (25 000 + 5 000) × 8 = 240 kbit/s.
        for s in 0..8i64 {
            for i in 0..25 {
                m.packet(s * 1000 + i * 40, 1000, true);
            }
            for i in 0..50 {
                m.packet(s * 1000 + i * 20, 100, false);
            }
        }
        m.packet(8000, 1, false);
        let (kbps, fps) = info.rates(8500);
        assert_eq!(kbps, 240.0);
        assert_eq!(fps, 25.0);
    }

    #[test]
    fn seconds_without_packets_count_as_empty_and_a_stall_reads_zero() {
        let info = Arc::new(LiveInfo::default());
        let mut m = Meter::new(info.clone());
        for i in 0..10 {
            m.packet(i * 100, 1000, true);
        }
        // Nothing for two seconds, then a packet: the window holds 10 frames, 0, 0.
        m.packet(3000, 1, true);
        let (_, fps) = info.rates(3000);
        assert!((fps - 10.0 / 3.0).abs() < 0.01, "{fps}");
        // Nobody pushes for longer than the window: zeros, not the last rate.
        assert_eq!(info.rates(3000 + 7000), (0.0, 0.0));
    }

    #[test]
    fn an_h264_and_aac_pair_is_described_from_their_configs() {
        // avcC around the SPS x264 writes for `ffmpeg -f lavfi -i testsrc=size=640x360
        // -pix_fmt yuv420p -c:v libx264 -profile:v high -level 3.0`, and AAC-LC 44.1 kHz
        // stereo (ISO/IEC 14496-3 1.6.2.1: object 2, index 4, 2 channels).
        let sps = [
            0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00,
            0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x0f, 0x16, 0x2d, 0x96,
        ];
        let mut rec = vec![1, 0x64, 0x00, 0x1e, 0xff, 0xe1, 0, sps.len() as u8];
        rec.extend_from_slice(&sps);
        rec.extend_from_slice(&[1, 0, 4, 0x68, 0xeb, 0xe3, 0xcb]);
        let info = Arc::new(LiveInfo::default());
        let m = Meter::new(info.clone());
        m.config(&TrackConfig {
            codec: Codec::Video(VideoCodec::H264),
            record: Bytes::from(rec),
            flv: Bytes::new(),
            dts: Millis::ZERO,
        });
        m.config(&TrackConfig {
            codec: Codec::Audio(AudioCodec::Aac),
            record: Bytes::from_static(&[0x12, 0x10]),
            flv: Bytes::new(),
            dts: Millis::ZERO,
        });
        let t = info.tracks();
        assert_eq!(
            t.video,
            Some(VideoDesc {
                codec: "h264",
                profile: Some("High"),
                level: Some("3.0".into()),
                width: Some(640),
                height: Some(360),
            })
        );
        assert_eq!(
            t.audio,
            Some(AudioDesc {
                codec: "aac",
                sample_rate: Some(44100),
                channels: Some(2),
            })
        );
    }
}
