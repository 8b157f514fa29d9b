//! HLS media playlist model (R-FM-2) with discontinuities for splicing (R-SP-1).
//!
//! The text is written by hand rather than with `m3u8_rs::MediaPlaylist::write_to`:
//! m3u8-rs 6 omits `#EXT-X-MEDIA-SEQUENCE` when it is 0, stores durations as `f32`, and
//! its `#EXTINF` precision is a process-global atomic (`WRITE_OPT_FLOAT_PRECISION`) that
//! a library must not flip under other users. The format is a dozen lines; m3u8-rs
//! parses every playlist we render in the tests, and [`MediaPlaylist::parse`] reads one
//! back (to reopen a spliced recording).
//!
//! Decisions:
//! - `#EXT-X-VERSION:3`: decimal `#EXTINF` durations need version 3; nothing we write
//!   needs more (PROGRAM-DATE-TIME and DISCONTINUITY are version 1).
//! - `#EXT-X-PLAYLIST-TYPE:EVENT` while the recording is open and `VOD` once ended.
//!   RFC 8216 4.3.3.5 forbids any change to a VOD playlist, while an EVENT playlist may
//!   only be appended to, which is exactly what rewriting after each segment does; the
//!   finalized file is a VOD playlist with `#EXT-X-ENDLIST` (R-FM-2).
//! - Durations are written with exactly 3 decimals (`4.000`, never `4`), and the target
//!   duration is the ceiling of the longest duration *as written*, so a rounding of
//!   10.0004 to "10.000" does not raise it to 11 (RFC 8216 4.3.3.1 compares the rounded
//!   EXTINF with the target).

mod recording;

pub use recording::{LivePlaylist, PlaylistKey};

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HlsError {
    #[error("not an HLS media playlist: {0}")]
    Parse(String),
    #[error("a master playlist, not a media playlist")]
    NotMedia,
}

/// One media segment of the playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// URI relative to the playlist (a file name such as `seg-00001.ts`).
    pub uri: String,
    /// Seconds.
    pub duration: f64,
    /// Wall-clock time of the segment's first frame (`#EXT-X-PROGRAM-DATE-TIME`).
    pub program_date_time: Option<DateTime<Utc>>,
    /// `#EXT-X-DISCONTINUITY` before this segment (R-SP-1 splicing: timestamps, codecs or
    /// sample rate may change here).
    pub discontinuity: bool,
}

/// A VOD (EVENT while open) media playlist.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaPlaylist {
    segments: Vec<Segment>,
}

/// Durations are written in milliseconds precision; negative or non-finite values
/// (never produced by a sane recorder) are written as 0 rather than as invalid text.
fn millis(duration: f64) -> u64 {
    if duration.is_finite() && duration > 0.0 {
        (duration * 1000.0).round() as u64
    } else {
        0
    }
}

/// URIs go on their own line: a CR or LF inside one would inject tags, so they are
/// percent-encoded.
fn safe_uri(uri: &str) -> std::borrow::Cow<'_, str> {
    if uri.contains(['\r', '\n']) {
        uri.replace('\r', "%0D").replace('\n', "%0A").into()
    } else {
        uri.into()
    }
}

impl MediaPlaylist {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push_segment(&mut self, seg: Segment) {
        self.segments.push(seg);
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Sum of the segment durations as written (ms precision), in seconds.
    pub fn total_duration(&self) -> f64 {
        let ms: u64 = self.segments.iter().map(|s| millis(s.duration)).sum();
        ms as f64 / 1000.0
    }

    /// `#EXT-X-TARGETDURATION`: ceiling of the longest written duration; 1 for an empty
    /// playlist (0 is not a meaningful target).
    /// The sum of the durations as written (ms each), which is what a player adds up.
    pub fn duration_ms(&self) -> u64 {
        self.segments.iter().map(|s| millis(s.duration)).sum()
    }

    pub fn target_duration(&self) -> u64 {
        let max_ms = self
            .segments
            .iter()
            .map(|s| millis(s.duration))
            .max()
            .unwrap_or(0);
        max_ms.div_ceil(1000).max(1)
    }

    /// The playlist text; `ended` adds `#EXT-X-ENDLIST` and makes the type VOD.
    pub fn render(&self, ended: bool) -> String {
        let mut s = String::with_capacity(128 + self.segments.len() * 96);
        // Writing to a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(s, "#EXTM3U");
        let _ = writeln!(s, "#EXT-X-VERSION:3");
        let _ = writeln!(s, "#EXT-X-TARGETDURATION:{}", self.target_duration());
        let _ = writeln!(s, "#EXT-X-MEDIA-SEQUENCE:0");
        let kind = if ended { "VOD" } else { "EVENT" };
        let _ = writeln!(s, "#EXT-X-PLAYLIST-TYPE:{kind}");
        for seg in &self.segments {
            if seg.discontinuity {
                let _ = writeln!(s, "#EXT-X-DISCONTINUITY");
            }
            if let Some(t) = seg.program_date_time {
                let _ = writeln!(
                    s,
                    "#EXT-X-PROGRAM-DATE-TIME:{}",
                    t.to_rfc3339_opts(SecondsFormat::Millis, true)
                );
            }
            let ms = millis(seg.duration);
            let _ = writeln!(s, "#EXTINF:{}.{:03},", ms / 1000, ms % 1000);
            let _ = writeln!(s, "{}", safe_uri(&seg.uri));
        }
        if ended {
            let _ = writeln!(s, "#EXT-X-ENDLIST");
        }
        s
    }

    /// Reads a media playlist (ours, to continue a spliced recording after a restart,
    /// R-SP-1). Returns the model and whether it had `#EXT-X-ENDLIST`.
    pub fn parse(text: &str) -> Result<(Self, bool), HlsError> {
        let pl = match m3u8_rs::parse_playlist_res(text.as_bytes()) {
            Ok(m3u8_rs::Playlist::MediaPlaylist(pl)) => pl,
            Ok(m3u8_rs::Playlist::MasterPlaylist(_)) => return Err(HlsError::NotMedia),
            Err(e) => return Err(HlsError::Parse(format!("{e:?}"))),
        };
        let segments = pl
            .segments
            .into_iter()
            .map(|s| Segment {
                uri: s.uri,
                // f32 in m3u8-rs: round back to the ms we wrote.
                duration: (f64::from(s.duration) * 1000.0).round() / 1000.0,
                program_date_time: s.program_date_time.map(|t| t.with_timezone(&Utc)),
                discontinuity: s.discontinuity,
            })
            .collect();
        Ok((MediaPlaylist { segments }, pl.end_list))
    }
}
