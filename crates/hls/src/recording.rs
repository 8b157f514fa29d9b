//! One HLS recording's names and timeline, shared by the live recorder, crash recovery and
//! the catalog so they cannot disagree: segments are stored beside their playlist as
//! `{stem}_{n}.ts` and listed by file name (R-ST-3), and each segment's
//! PROGRAM-DATE-TIME is the arrival of the playlist's first packet plus the segment's
//! media offset (issue 10), so a late writer or a slow disk never shifts it.

use chrono::{DateTime, Utc};
use media::Millis;

use crate::{MediaPlaylist, Segment};

/// A playlist's object key, split into the directory its segments share and its stem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaylistKey {
    dir: String,
    stem: String,
}

impl PlaylistKey {
    /// `a/b/name.m3u8` → dir `a/b`, stem `name` (a key without `.m3u8` keeps its name).
    pub fn new(key: &str) -> PlaylistKey {
        let (dir, file) = key.rsplit_once('/').unwrap_or(("", key));
        PlaylistKey {
            dir: dir.to_string(),
            stem: file.strip_suffix(".m3u8").unwrap_or(file).to_string(),
        }
    }

    pub fn stem(&self) -> &str {
        &self.stem
    }

    /// Segment `n`'s name without its extension (what a collision suffix is added to).
    pub fn segment_name(&self, n: u64) -> String {
        format!("{}_{n}", self.stem)
    }

    /// Segment `n`'s key.
    pub fn segment_key(&self, n: u64) -> String {
        self.key_of(&format!("{}.ts", self.segment_name(n)))
    }

    /// The key of a file the playlist lists by `uri`.
    pub fn key_of(&self, uri: &str) -> String {
        if self.dir.is_empty() {
            uri.to_string()
        } else {
            format!("{}/{uri}", self.dir)
        }
    }

    /// The keys of every segment `playlist` lists, in order.
    pub fn segment_keys(&self, playlist: &MediaPlaylist) -> Vec<String> {
        playlist
            .segments()
            .iter()
            .map(|s| self.key_of(&s.uri))
            .collect()
    }
}

/// The playlist of a recording being written.
#[derive(Debug, Clone)]
pub struct LivePlaylist {
    playlist: MediaPlaylist,
    /// Arrival of the playlist's first packet, and its decode time.
    started: DateTime<Utc>,
    start_dts: Millis,
}

impl LivePlaylist {
    pub fn new(started: DateTime<Utc>, start_dts: Millis) -> LivePlaylist {
        LivePlaylist {
            playlist: MediaPlaylist::new(),
            started,
            start_dts,
        }
    }

    /// A segment starting at `start_dts` and lasting `duration`, placed on the wall
    /// clock by its offset from the playlist's first packet.
    pub fn segment(&self, uri: String, start_dts: Millis, duration: Millis) -> Segment {
        let offset = chrono::Duration::milliseconds((start_dts - self.start_dts).as_ms());
        Segment {
            uri,
            duration: duration.as_secs_f64(),
            program_date_time: self.started.checked_add_signed(offset),
            discontinuity: false,
        }
    }

    /// The open playlist's text with `next` appended, to be stored before `next` is
    /// [`push`](Self::push)ed: a crash between the two leaves a playlist that lists only
    /// complete segments (R-FM-2).
    pub fn render_with(&self, next: &Segment) -> String {
        let mut with = self.playlist.clone();
        with.push_segment(next.clone());
        with.render(false)
    }

    pub fn push(&mut self, seg: Segment) {
        self.playlist.push_segment(seg);
    }

    pub fn playlist(&self) -> &MediaPlaylist {
        &self.playlist
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_sit_beside_their_playlist() {
        let k = PlaylistKey::new("d/live/cam/cam_2026.m3u8");
        assert_eq!(k.stem(), "cam_2026");
        assert_eq!(k.segment_name(3), "cam_2026_3");
        assert_eq!(k.segment_key(3), "d/live/cam/cam_2026_3.ts");
        let mut pl = MediaPlaylist::new();
        for uri in ["cam_2026_0.ts", "cam_2026_1_1.ts"] {
            pl.push_segment(Segment {
                uri: uri.into(),
                duration: 4.0,
                program_date_time: None,
                discontinuity: false,
            });
        }
        assert_eq!(
            k.segment_keys(&pl),
            vec!["d/live/cam/cam_2026_0.ts", "d/live/cam/cam_2026_1_1.ts"]
        );
        assert_eq!(pl.duration_ms(), 8000);
        assert_eq!(PlaylistKey::new("x.m3u8").segment_key(0), "x_0.ts");
    }

    #[test]
    fn program_date_time_follows_the_media_offset_from_the_first_packet() {
        let t0 = DateTime::from_timestamp_millis(1_764_000_000_000).unwrap();
        let mut live = LivePlaylist::new(t0, Millis::from_ms(90_000));
        let first = live.segment(
            "a_0.ts".into(),
            Millis::from_ms(90_000),
            Millis::from_ms(4000),
        );
        assert_eq!(first.program_date_time, Some(t0));
        let text = live.render_with(&first);
        assert!(
            text.contains("a_0.ts") && !text.contains("ENDLIST"),
            "{text}"
        );
        assert!(live.playlist().segments().is_empty());
        live.push(first);
        let second = live.segment(
            "a_1.ts".into(),
            Millis::from_ms(94_000),
            Millis::from_ms(4000),
        );
        assert_eq!(
            second.program_date_time,
            Some(t0 + chrono::Duration::milliseconds(4000))
        );
        assert_eq!(second.duration, 4.0);
    }
}
