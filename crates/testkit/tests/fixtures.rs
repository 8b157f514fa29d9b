//! The committed fixtures are what their .txt files say, and our FLV summary agrees with
//! ffprobe on every one of them. ffprobe is required (the test fails without it).

use liverec_testkit::probe::{fixtures_dir, FIXTURES};
use liverec_testkit::{
    ffprobe_errors, fixture, fixture_tags, flv_summary, frame_hashes_flv, media_duration,
    probe_duration, probe_packets, require_tool,
};
use media::TrackKind;

#[test]
fn probe_packets_and_flv_summary_agree_on_every_fixture() {
    require_tool("ffprobe");
    for name in FIXTURES {
        let path = fixture(name);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 1_500_000, "{name} is {size} bytes (limit 1.5 MB)");
        assert_eq!(ffprobe_errors(&path), "", "{name}: ffprobe errors");

        let pk = probe_packets(&path);
        let s = flv_summary(&path);
        assert!(s.read_error.is_none(), "{name}: {:?}", s.read_error);
        let count = |k| pk.iter().filter(|p| p.kind == k).count();
        assert_eq!(
            count(TrackKind::Video),
            s.video_frames,
            "{name}: video frames"
        );
        assert_eq!(
            count(TrackKind::Audio),
            s.audio_frames,
            "{name}: audio frames"
        );
        let keys = pk
            .iter()
            .filter(|p| p.kind == TrackKind::Video && p.key)
            .count();
        assert_eq!(keys, s.video_keyframes, "{name}: keyframes");

        // Frame by frame: ffprobe's packet size is the tag body minus the FLV/AVC or
        // FLV/AAC header (5 or 2 bytes), in the same order.
        for kind in [TrackKind::Video, TrackKind::Audio] {
            let ours: Vec<usize> = s
                .tags
                .iter()
                .filter(|t| t.is_frame() && t.track() == Some(kind))
                .map(|t| t.size - if kind == TrackKind::Video { 5 } else { 2 })
                .collect();
            let theirs: Vec<usize> = pk
                .iter()
                .filter(|p| p.kind == kind)
                .map(|p| p.size)
                .collect();
            assert_eq!(ours, theirs, "{name}: {kind:?} packet sizes");
        }

        assert!(s.first_tag_is_metadata, "{name}: first tag is onMetaData");
        assert!(s.headers_first, "{name}: sequence headers first");
        let d = s.duration.expect("onMetaData.duration");
        assert!((19.9..20.2).contains(&d), "{name}: metadata duration {d}");
        let pd = probe_duration(&path);
        assert!((19.9..20.2).contains(&pd), "{name}: probed duration {pd}");
        let md = media_duration(&pk);
        assert!((19.9..20.2).contains(&md), "{name}: media duration {md}");
        assert_eq!(
            frame_hashes_flv(&path).len(),
            s.video_frames + s.audio_frames
        );
        assert_eq!(fixture_tags(name).len(), s.tags.len());

        let txt = std::fs::read_to_string(fixtures_dir().join(name.replace(".flv", ".txt")))
            .unwrap_or_else(|e| panic!("{name}: .txt beside it: {e}"));
        let line = format!(
            "packets: video {}, audio {}",
            s.video_frames, s.audio_frames
        );
        assert!(txt.contains(&line), "{name}.txt should say {line:?}");
    }
}

#[test]
fn fixtures_have_the_promised_shape() {
    require_tool("ffprobe");
    let av2 = flv_summary(&fixture("avc_aac_2s.flv"));
    assert_eq!(av2.video_frames, 600);
    assert_eq!(av2.video_keyframes, 10, "2 s GOP at 30 fps over 20 s");
    assert_eq!(av2.first_video_is_key, Some(true));
    let av1 = flv_summary(&fixture("avc_aac_1s.flv"));
    assert_eq!(av1.video_frames, 500);
    assert_eq!(av1.video_keyframes, 20, "1 s GOP at 25 fps over 20 s");
    let a = flv_summary(&fixture("aac_only.flv"));
    assert_eq!((a.video_frames, a.first_video_is_key), (0, None));
    assert!(a.audio_frames > 800);
    let v = flv_summary(&fixture("avc_only.flv"));
    assert_eq!((v.audio_frames, v.video_keyframes), (0, 10));

    // B-frames: some video packets have pts != dts.
    let pk = probe_packets(&fixture("avc_aac_2s.flv"));
    assert!(pk
        .iter()
        .any(|p| p.kind == TrackKind::Video && (p.pts_ms - p.dts_ms).abs() > 1.0));
    // Closed GOP: every keyframe's DTS is 2 s after the previous one.
    let kts = av2
        .tags
        .iter()
        .filter(|t| t.key && t.track() == Some(TrackKind::Video))
        .map(|t| t.timestamp)
        .collect::<Vec<_>>();
    assert!(kts.windows(2).all(|w| w[1] - w[0] == 2000), "{kts:?}");
}
