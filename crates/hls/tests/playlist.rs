//! Render → m3u8-rs parse round trips (R-FM-2, R-SP-1).

use chrono::{DateTime, TimeZone, Utc};
use liverec_hls::{MediaPlaylist, Segment};
use m3u8_rs::MediaPlaylistType;

fn seg(uri: &str, duration: f64, pdt: Option<DateTime<Utc>>, discontinuity: bool) -> Segment {
    Segment {
        uri: uri.into(),
        duration,
        program_date_time: pdt,
        discontinuity,
    }
}

fn sample() -> MediaPlaylist {
    let t0 =
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap() + chrono::Duration::milliseconds(250);
    let mut pl = MediaPlaylist::new();
    pl.push_segment(seg("seg-0.ts", 4.0, Some(t0), false));
    pl.push_segment(seg(
        "seg-1.ts",
        3.5,
        Some(t0 + chrono::Duration::milliseconds(4000)),
        false,
    ));
    // A splice (R-SP-1): discontinuity, new wall clock.
    pl.push_segment(seg(
        "seg-2.ts",
        10.0004,
        Some(t0 + chrono::Duration::milliseconds(60_123)),
        true,
    ));
    pl.push_segment(seg("seg-3.ts", 2.9996, None, false));
    pl
}

#[test]
fn render_parses_back_with_m3u8_rs() {
    let pl = sample();
    let text = pl.render(true);
    let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).expect("m3u8-rs parses it");
    assert_eq!(parsed.version, Some(3));
    // ceil of the longest duration as written (10.000), not of 10.0004.
    assert_eq!(parsed.target_duration, 10);
    assert_eq!(parsed.media_sequence, 0);
    assert_eq!(parsed.playlist_type, Some(MediaPlaylistType::Vod));
    assert!(parsed.end_list);
    assert_eq!(parsed.segments.len(), 4);
    for (got, want) in parsed.segments.iter().zip(pl.segments()) {
        assert_eq!(got.uri, want.uri);
        assert!((f64::from(got.duration) - want.duration).abs() < 0.0006);
        assert_eq!(got.discontinuity, want.discontinuity);
        assert_eq!(
            got.program_date_time.map(|t| t.with_timezone(&Utc)),
            want.program_date_time
        );
    }
    assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:0\n"));
    assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:2025-03-01T12:00:00.250Z\n"));
    assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:2025-03-01T12:01:00.373Z\n"));
    assert!((pl.total_duration() - 20.5).abs() < 1e-9);

    // Our own parser gives the model back (durations at the ms written).
    let (back, ended) = MediaPlaylist::parse(&text).unwrap();
    assert!(ended);
    let mut want = pl.clone();
    let mut rounded = MediaPlaylist::new();
    for s in want.segments() {
        let mut s = s.clone();
        s.duration = (s.duration * 1000.0).round() / 1000.0;
        rounded.push_segment(s);
    }
    want = rounded;
    assert_eq!(back, want);
}

#[test]
fn open_playlist_is_event_without_endlist() {
    let text = sample().render(false);
    let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).unwrap();
    assert_eq!(parsed.playlist_type, Some(MediaPlaylistType::Event));
    assert!(!parsed.end_list);
    assert!(!text.contains("ENDLIST"));
}

#[test]
fn whole_number_durations_keep_decimals() {
    let mut pl = MediaPlaylist::new();
    pl.push_segment(seg("a.ts", 4.0, None, false));
    pl.push_segment(seg("b.ts", 10.0, None, false));
    pl.push_segment(seg("c.ts", 0.5, None, false));
    let text = pl.render(true);
    assert!(text.contains("#EXTINF:4.000,\na.ts\n"), "{text}");
    assert!(text.contains("#EXTINF:10.000,\nb.ts\n"), "{text}");
    assert!(text.contains("#EXTINF:0.500,\nc.ts\n"), "{text}");
    assert!(!text.contains("#EXTINF:4,"));
    let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).unwrap();
    assert_eq!(parsed.target_duration, 10);
    // 10.0011 is written 10.001, which needs 11.
    pl.push_segment(seg("d.ts", 10.0011, None, false));
    let parsed = m3u8_rs::parse_media_playlist_res(pl.render(true).as_bytes()).unwrap();
    assert_eq!(parsed.target_duration, 11);
}

#[test]
fn empty_and_hostile_inputs_still_render_valid_playlists() {
    let pl = MediaPlaylist::new();
    let parsed = m3u8_rs::parse_media_playlist_res(pl.render(false).as_bytes()).unwrap();
    assert!(parsed.segments.is_empty());
    assert_eq!(pl.total_duration(), 0.0);

    let mut pl = MediaPlaylist::new();
    pl.push_segment(seg("x.ts\n#EXT-X-ENDLIST", f64::NAN, None, false));
    pl.push_segment(seg("y.ts", -3.0, None, false));
    let text = pl.render(false);
    assert!(
        !text.lines().any(|l| l.starts_with("#EXT-X-ENDLIST")),
        "{text}"
    );
    let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).unwrap();
    assert_eq!(parsed.segments.len(), 2);
    assert!(!parsed.end_list);
    assert_eq!(parsed.segments[0].duration, 0.0);
}
