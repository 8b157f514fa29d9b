//! Issue 12, R-IN-6: timestamp discontinuities inside one push. An encoder that resets its
//! clock, or jumps forward an hour, without reconnecting must still produce files with
//! monotonic DTS, the media's real duration, every frame once, and an HLS playlist that
//! marks the jump with `#EXT-X-DISCONTINUITY` and reads as one timeline. The 32-bit RTMP
//! timestamp wrap is no discontinuity at all.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use amf0::Value;
use common::Daemon;
use flv::{FileTag, TagType};
use media::TrackKind;
use testkit::chunk::{encode_message, msg_type};
use testkit::conn::csid;
use testkit::{
    ffprobe_errors, media_duration, probe_codecs, probe_packet_hashes, probe_packets, require_tool,
    HashedPacket, PublishOptions, RawConn,
};

const FIXTURE: &str = "avc_aac_2s.flv";
/// Copies of the fixture before and after the jump.
const COPIES: u32 = 4;

const ALL_FORMATS: &str = "[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = { enable = true, record_interval = 600 }\nmp4 = { enable = true, record_interval = 600 }\naac = { enable = true, record_interval = 600 }\nhls = { enable = true, record_interval = 600, segment_duration = 2 }\n";

/// The fixture's loop period as the test publisher loops it: its span plus one video
/// frame, so copies placed `period` apart continue each other seamlessly.
fn period(tags: &[FileTag]) -> u32 {
    // Coded frames only: the fixture ends with an AVC end-of-sequence tag (packet type
    // 2) stamped like the last frame.
    let v: Vec<u32> = tags
        .iter()
        .filter(|t| t.tag_type == TagType::Video && t.body.get(1) == Some(&1))
        .map(|t| t.timestamp)
        .collect();
    let frame = v[v.len() - 1] - v[v.len() - 2];
    tags.iter().map(|t| t.timestamp).max().expect("tags") + frame
}

fn is_sequence_header(t: &FileTag) -> bool {
    // AVC/AAC packet type 0 right after the codec byte.
    matches!(t.tag_type, TagType::Video | TagType::Audio) && t.body.get(1) == Some(&0)
}

/// `COPIES` copies of the fixture from timestamp `start` (wrapping at 2^32 like RTMP),
/// sequence headers only in the first copy (`headers`: as an encoder restarting sends
/// them again).
fn copies(base: &[FileTag], start: u32, headers: bool) -> Vec<FileTag> {
    let p = period(base);
    let mut out = Vec::new();
    for k in 0..COPIES {
        for t in base {
            if t.tag_type == TagType::Script {
                continue;
            }
            if is_sequence_header(t) && (k > 0 || !headers) {
                continue;
            }
            let mut t = t.clone();
            t.timestamp = start.wrapping_add(k * p).wrapping_add(t.timestamp);
            out.push(t);
        }
    }
    out
}

/// The fixture's packets (ffprobe's view, with hashes) repeated `n` times on one
/// continuous timeline: what a file must hold, at one constant shift.
fn continuous(n: u32) -> Vec<HashedPacket> {
    let base = testkit::fixture_tags(FIXTURE);
    let p = f64::from(period(&base));
    let one = probe_packet_hashes(&testkit::fixture(FIXTURE));
    (0..n)
        .flat_map(|k| {
            one.iter().map(move |h| HashedPacket {
                pts_ms: h.pts_ms + f64::from(k) * p,
                dts_ms: h.dts_ms + f64::from(k) * p,
                ..h.clone()
            })
        })
        .collect()
}

fn push(d: &Daemon, stream: &str, tags: Vec<FileTag>) {
    let url = d.url("live", stream);
    let tags = Arc::new(tags);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move { testkit::publish_flv(&url, &tags, &PublishOptions::default()).await })
        .expect("publish");
}

fn one(d: &Daemon, stream: &str, ext: &str) -> PathBuf {
    let files = d.wait_files("localhost", "live", stream, ext, 1, Duration::from_secs(30));
    assert_eq!(files.len(), 1, "{ext}: {files:?}; log:\n{}", d.log());
    files[0].clone()
}

/// Pushes `tags` in one connection and checks every format against `copies` continuous
/// copies of the fixture; returns the playlist's discontinuity count.
fn record_one_timeline(stream: &str, tags: Vec<FileTag>, copies: u32) -> usize {
    require_tool("ffprobe");
    let d = Daemon::start(ALL_FORMATS);
    push(&d, stream, tags);
    let want = continuous(copies);
    let want_s = {
        let base = testkit::fixture_tags(FIXTURE);
        f64::from(period(&base) * copies) / 1000.0
    };
    let audio: Vec<HashedPacket> = want
        .iter()
        .filter(|p| p.kind == TrackKind::Audio)
        .cloned()
        .collect();
    // The jump closes to about one frame after the later track, as the publisher's own
    // loop continues a copy: each packet at the continuous timeline's time, to within
    // one frame (the rebaser's frame estimate vs the loop's period).
    for ext in ["flv", "mp4"] {
        let f = one(&d, stream, ext);
        common::assert_monotonic(&f);
        common::assert_follows_packets(std::slice::from_ref(&f), &want, true, 45.0);
        let got = media_duration(&probe_packets(&f));
        assert!(
            (got - want_s).abs() < 0.2,
            "{ext}: {got:.2} s of media, pushed {want_s:.2} s"
        );
    }
    // Raw AAC has no timestamps (ffprobe counts samples): every frame, in order, once.
    let aac = one(&d, stream, "aac");
    assert!(ffprobe_errors(&aac).is_empty(), "{}", ffprobe_errors(&aac));
    assert_eq!(
        probe_packets(&aac).len(),
        audio.len(),
        "every audio frame once"
    );
    let playlist = one(&d, stream, "m3u8");
    common::assert_monotonic(&playlist);
    common::assert_follows_packets(std::slice::from_ref(&playlist), &want, false, 45.0);
    let (pl, ended) = hls::MediaPlaylist::parse(&std::fs::read_to_string(&playlist).expect("read"))
        .expect("playlist parses");
    assert!(ended);
    let listed: f64 = pl.segments().iter().map(|s| s.duration).sum();
    assert!(
        (listed - want_s).abs() < 0.3,
        "the playlist lists {listed:.2} s for {want_s:.2} s of media"
    );
    common::discontinuities(&playlist)
}

#[test]
fn an_encoder_clock_reset_mid_push_keeps_every_file_on_one_timeline() {
    let base = testkit::fixture_tags(FIXTURE);
    let mut tags = copies(&base, 0, true);
    // The encoder restarts its clock at 0 (and sends its sequence headers again).
    tags.extend(copies(&base, 0, true));
    let jumps = record_one_timeline("reset", tags, 2 * COPIES);
    assert_eq!(jumps, 1, "one #EXT-X-DISCONTINUITY where the clock reset");
}

#[test]
fn a_one_hour_jump_forward_mid_push_is_closed_up() {
    let base = testkit::fixture_tags(FIXTURE);
    let p = period(&base);
    let mut tags = copies(&base, 0, true);
    tags.extend(copies(&base, COPIES * p + 3_600_000, false));
    let jumps = record_one_timeline("jump", tags, 2 * COPIES);
    assert_eq!(jumps, 1, "one #EXT-X-DISCONTINUITY where the clock jumped");
}

#[test]
fn the_32_bit_rtmp_timestamp_wrap_is_no_discontinuity() {
    let base = testkit::fixture_tags(FIXTURE);
    // 49.7 days into a push: the timestamps cross 2^32 ms half way.
    let start = u32::MAX - (COPIES / 2) * period(&base) + 1;
    let jumps = record_one_timeline("wrap", copies(&base, start, true), COPIES);
    assert_eq!(jumps, 0, "the wrap is continuous");
}

#[test]
fn clock_resets_shorter_than_the_interval_still_cut_files_by_media_time() {
    require_tool("ffprobe");
    // The fixture is ~20 s; the clock restarts with every copy. record_interval 30 s
    // (hard cap 2x): before rebasing, the cut policy never saw 30 s of media in one
    // file — the DTS kept restarting under it — and one file held all 80 s.
    let d = Daemon::start(
        "[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = { enable = true, record_interval = 30, file_name = \"{StreamID}-{Seq}\" }\n",
    );
    let base = testkit::fixture_tags(FIXTURE);
    let one_copy: Vec<FileTag> = copies(&base, 0, true)
        .into_iter()
        .filter(|t| t.timestamp < period(&base))
        .collect();
    let mut tags = Vec::new();
    for _ in 0..4 {
        tags.extend(one_copy.iter().cloned());
    }
    push(&d, "resets", tags);
    let files = common::ordered(d.wait_files(
        "localhost",
        "live",
        "resets",
        "flv",
        3,
        Duration::from_secs(30),
    ));
    assert_eq!(files.len(), 3, "cut at ~30 s of media: {files:?}");
    for f in &files {
        common::assert_monotonic(f);
        let s = media_duration(&probe_packets(f));
        assert!(
            s <= 32.5,
            "{}: {s:.2} s, past the interval's keyframe",
            f.display()
        );
    }
    common::assert_follows_packets(&files, &continuous(4), true, 45.0);
    assert!(
        d.log().contains("encoder timestamps jumped"),
        "log:\n{}",
        d.log()
    );
}

/// Tags as nginx-rtmp relays a push (`push rtmp://…`): the audio of the first ~0.9 s
/// arrives before the video's sequence header, then the video catches up.
fn relayed_order(base: &[FileTag]) -> Vec<FileTag> {
    const LEAD_MS: u32 = 900;
    let media: Vec<&FileTag> = base
        .iter()
        .filter(|t| t.tag_type != TagType::Script)
        .collect();
    let early_audio: Vec<FileTag> = media
        .iter()
        .filter(|t| t.tag_type == TagType::Audio && t.timestamp < LEAD_MS)
        .map(|t| (*t).clone())
        .collect();
    let mut out = early_audio.clone();
    for t in media {
        if t.tag_type == TagType::Audio && t.timestamp < LEAD_MS {
            continue;
        }
        out.push(t.clone());
    }
    out
}

#[test]
fn audio_relayed_ahead_of_the_video_header_does_not_split_or_hide_the_video() {
    require_tool("ffprobe");
    let d = Daemon::start(ALL_FORMATS);
    push(&d, "relayed", relayed_with_meta());
    assert_relayed_recorded(&d, "relayed");
}

/// The fixture in a relay's order (`relayed_order`), behind the fixture's onMetaData as
/// the relay passes it on: it announces both tracks.
fn relayed_with_meta() -> Vec<FileTag> {
    let base = testkit::fixture_tags(FIXTURE);
    let tags = relayed_order(&base);
    assert_eq!(
        tags.iter().position(|t| t.tag_type == TagType::Video),
        Some(
            tags.iter()
                .filter(|t| t.tag_type == TagType::Audio && t.timestamp < 900)
                .count()
        ),
        "the test's own order: audio first"
    );
    let mut with_meta: Vec<FileTag> = base
        .iter()
        .filter(|t| t.tag_type == TagType::Script)
        .cloned()
        .collect();
    with_meta.extend(tags);
    with_meta
}

/// One A/V file per format holding every frame of the fixture, audio ahead of the video
/// header included.
fn assert_relayed_recorded(d: &Daemon, stream: &str) {
    let want = continuous(1);
    for ext in ["flv", "mp4"] {
        // One file: no audio-only file before the A/V one.
        let f = one(d, stream, ext);
        let codecs = probe_codecs(&f);
        assert!(
            codecs.contains(&"h264".to_string()) && codecs.contains(&"aac".to_string()),
            "{ext}: {codecs:?}"
        );
        common::assert_monotonic(&f);
        // Every video frame, and the audio from the first keyframe's time on (here:
        // all of it, the fixture's audio starts after its first keyframe).
        common::assert_follows_packets(std::slice::from_ref(&f), &want, true, 1.0);
    }
    let playlist = one(d, stream, "m3u8");
    let codecs = probe_codecs(&playlist);
    assert!(
        codecs.contains(&"h264".to_string()) && codecs.contains(&"aac".to_string()),
        "the playlist (its first segment's PMT) shows both tracks: {codecs:?}"
    );
    let first_segment = {
        let text = std::fs::read_to_string(&playlist).expect("playlist");
        let (pl, _) = hls::MediaPlaylist::parse(&text).expect("parses");
        playlist.with_file_name(&pl.segments()[0].uri)
    };
    let codecs = probe_codecs(&first_segment);
    assert!(
        codecs.contains(&"h264".to_string()) && codecs.contains(&"aac".to_string()),
        "first segment: {codecs:?}"
    );
}

/// The same relay, sending `publish`, its first second of audio, the video header and
/// the rest without waiting for the publish to be answered, in one write: the daemon
/// reads the publish and the media behind it in one read, before the recording for the
/// publish has been started. That recording still begins where the push did (the ring's
/// start, which the hub's start reader holds), not at the first keyframe — which, the
/// video header having arrived, is where any reader subscribing now would start.
/// One runtime worker (the default on 2 cores, set so a larger machine tests the same):
/// the connection then reads all of it before the supervisor runs.
#[test]
fn publish_and_relayed_media_in_one_read_still_record_from_the_start() {
    require_tool("ffprobe");
    let d = Daemon::start(&format!("{ALL_FORMATS}[runtime]\nworker_threads = 1\n"));
    let tags = relayed_with_meta();
    let addr = d.rtmp;
    common::rt().block_on(async {
        let mut c = RawConn::connect(addr).await.expect("TCP connect");
        c.handshake().await.expect("handshake");
        c.connect_app("live", &format!("rtmp://{addr}/live"))
            .await
            .expect("connect");
        c.announce_chunk_size(4096).await.expect("chunk size");
        let sid = c.create_stream().await.expect("createStream");
        let mut burst = Vec::new();
        let command = |name: &str, txn: f64, args: &[Value]| {
            let mut v = vec![Value::from(name), Value::Number(txn)];
            v.extend_from_slice(args);
            amf0::encode_all(&v)
        };
        encode_message(
            &mut burst,
            csid::STREAM_COMMAND,
            msg_type::COMMAND_AMF0,
            sid,
            0,
            &command("publish", 5.0, &[Value::Null, "cam".into(), "live".into()]),
            4096,
        );
        let mut video_header_end = None;
        for t in &tags {
            let (cs, ty) = match t.tag_type {
                TagType::Audio => (csid::AUDIO, msg_type::AUDIO),
                TagType::Video => (csid::VIDEO, msg_type::VIDEO),
                TagType::Script => (csid::DATA, msg_type::DATA_AMF0),
                TagType::Other(_) => continue,
            };
            encode_message(&mut burst, cs, ty, sid, t.timestamp, &t.body, 4096);
            if t.tag_type == TagType::Video {
                video_header_end.get_or_insert(burst.len());
            }
        }
        // The daemon reads into at least 16 KiB of room.
        let video_header_end = video_header_end.expect("the fixture has video");
        assert!(
            video_header_end <= 16 * 1024,
            "the publish, the early audio and the video header fit in one read: {video_header_end} bytes"
        );
        encode_message(
            &mut burst,
            csid::STREAM_COMMAND,
            msg_type::COMMAND_AMF0,
            sid,
            0,
            &command("deleteStream", 6.0, &[Value::Null, Value::Number(f64::from(sid))]),
            4096,
        );
        c.send_raw(&burst).await.expect("the burst");
        let status = c.read_status(Duration::from_secs(10)).await;
        assert_eq!(status.as_deref(), Some("NetStream.Publish.Start"));
        // Until the daemon has read it all and gone quiet.
        while c.read_message(Duration::from_millis(500)).await.is_some() {}
    });
    assert_relayed_recorded(&d, "cam");
}
