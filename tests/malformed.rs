//! Malformed and hostile RTMP input against the real daemon (reliability.md 0.1–0.4,
//! 0.6; SPEC R-IN-3, R-IN-4, R-SEC-2, R-SEC-3): every bad connection is refused or
//! closed, nothing is created on disk for a refused name, and a publisher that is live
//! at the same time records every frame it sends.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use amf0::Value;
use bytes::Bytes;
use common::Daemon;
use flv::{FileTag, TagType};
use testkit::chunk::msg_type;
use testkit::conn::csid;
use testkit::probe::{classify_tag, flv_summary_bytes, TagKind};
use testkit::{
    ffprobe_errors, fixture_tags, flv_summary, publish_flv, FlvSummary, PublishError,
    PublishOptions, RawConn,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// How soon a refused connection must be closed. The main daemon keeps the default
/// 10 s handshake deadline, so a close within this is the refusal, not the deadline.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);
const BAD_NAME: &str = "NetStream.Publish.BadName";

type CaseResult = Result<(), String>;

// ---------------------------------------------------------------------------------------
// Tags and recordings

/// The tags of `tags` before the first video keyframe at or after `ms` (script tags
/// kept): a whole number of GOPs from the start of the fixture.
fn head(tags: &[FileTag], ms: u32) -> Vec<FileTag> {
    let end = tags
        .iter()
        .position(|t| {
            t.tag_type == TagType::Video
                && t.timestamp >= ms
                && classify_tag(t.tag_type, &t.body) == (TagKind::Frame, true)
        })
        .unwrap_or(tags.len());
    tags[..end].to_vec()
}

/// An FLV file holding `tags`, to summarise what was sent the same way as what was
/// recorded.
fn to_flv(tags: &[FileTag]) -> Bytes {
    let mut out = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
    for t in tags {
        let len = t.body.len() as u32;
        out.push(t.tag_type.to_u8());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&t.timestamp.to_be_bytes()[1..]);
        out.push((t.timestamp >> 24) as u8);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&t.body);
        out.extend_from_slice(&(len + 11).to_be_bytes());
    }
    Bytes::from(out)
}

fn summary_of(tags: &[FileTag]) -> FlvSummary {
    let s = flv_summary_bytes(to_flv(tags));
    assert!(s.read_error.is_none(), "{:?}", s.read_error);
    s
}

/// Waits for the finished recording of `live/{stream}` and checks it holds exactly the
/// frames of `expected` (counts and bodies, in order), that every file is clean for
/// ffprobe and readable to its end, and that it starts with headers and a keyframe.
fn check_recording(d: &Daemon, stream: &str, expected: &FlvSummary) -> Vec<PathBuf> {
    let files = d.wait_files(
        "localhost",
        "live",
        stream,
        "flv",
        1,
        Duration::from_secs(20),
    );
    let (mut video, mut audio, mut hashes) = (0, 0, Vec::new());
    for f in &files {
        let s = flv_summary(f);
        assert!(
            s.read_error.is_none(),
            "{}: {:?}",
            f.display(),
            s.read_error
        );
        assert!(s.headers_first, "{}: frames before headers", f.display());
        if s.video_frames > 0 {
            assert_eq!(
                s.first_video_is_key,
                Some(true),
                "{}: first video frame not a keyframe",
                f.display()
            );
        }
        let errs = ffprobe_errors(f);
        assert!(errs.is_empty(), "ffprobe on {}: {errs}", f.display());
        video += s.video_frames;
        audio += s.audio_frames;
        hashes.extend(s.frame_hashes());
    }
    assert_eq!(
        (video, audio),
        (expected.video_frames, expected.audio_frames),
        "live/{stream}: recorded (video, audio) frames vs sent, files {files:?}"
    );
    assert!(
        hashes == expected.frame_hashes(),
        "live/{stream}: recorded frame bodies differ from the ones sent"
    );
    files
}

fn realtime() -> PublishOptions {
    PublishOptions {
        realtime: true,
        ..PublishOptions::default()
    }
}

// ---------------------------------------------------------------------------------------
// Raw connections

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

async fn open(addr: SocketAddr) -> Result<RawConn, String> {
    RawConn::connect(addr).await.map_err(err("TCP connect"))
}

async fn shaken(addr: SocketAddr) -> Result<RawConn, String> {
    let mut c = open(addr).await?;
    c.handshake().await.map_err(err("handshake"))?;
    Ok(c)
}

async fn connected(addr: SocketAddr, app: &str) -> Result<RawConn, String> {
    let mut c = shaken(addr).await?;
    c.connect_app(app, &format!("rtmp://{addr}/{app}"))
        .await
        .map_err(err("connect"))?;
    Ok(c)
}

async fn expect_closed(c: &mut RawConn) -> CaseResult {
    let t0 = Instant::now();
    if c.is_closed_within(CLOSE_WITHIN).await {
        Ok(())
    } else {
        Err(format!(
            "connection still open {:?} after the bad input",
            t0.elapsed()
        ))
    }
}

async fn expect_open(c: &mut RawConn, d: Duration) -> CaseResult {
    if c.is_closed_within(d).await {
        Err("the server closed a connection it should have kept".into())
    } else {
        Ok(())
    }
}

/// A chunk with a type-0 (full) header.
fn fmt0(cs: u8, ts: u32, len: u32, ty: u8, stream_id: u32) -> Vec<u8> {
    let mut v = vec![cs & 0x3f];
    v.extend_from_slice(&ts.to_be_bytes()[1..]);
    v.extend_from_slice(&len.to_be_bytes()[1..]);
    v.push(ty);
    v.extend_from_slice(&stream_id.to_le_bytes());
    v
}

/// `connect` with transaction id 1 followed by `rest` (raw AMF0 bytes).
fn connect_body(rest: &[u8]) -> Vec<u8> {
    let mut v = amf0::encode_all(&["connect".into(), Value::Number(1.0)]);
    v.extend_from_slice(rest);
    v
}

/// Sends `body` as one AMF0 command message after the handshake, then expects a close.
async fn command_closes(addr: SocketAddr, body: &[u8]) -> CaseResult {
    let mut c = shaken(addr).await?;
    let _ = c
        .send_message(csid::COMMAND, msg_type::COMMAND_AMF0, 0, 0, body)
        .await;
    expect_closed(&mut c).await
}

/// `count` levels of an AMF0 container around nothing: objects, ECMA arrays or strict
/// arrays each holding the next level.
fn deep_amf(kind: u8, count: usize) -> Vec<u8> {
    let level: &[u8] = match kind {
        0x03 => &[0x03, 0x00, 0x01, b'a'],
        0x08 => &[0x08, 0, 0, 0, 1, 0x00, 0x01, b'a'],
        _ => &[0x0a, 0, 0, 0, 1],
    };
    level.repeat(count)
}

/// handshake, connect(app), createStream, publish(name): returns the status code, the
/// connection and the message stream id.
async fn try_publish(
    addr: SocketAddr,
    app: &str,
    name: &str,
) -> Result<(String, RawConn, u32), String> {
    let mut c = connected(addr, app).await?;
    let sid = c.create_stream().await.map_err(err("createStream"))?;
    let code = c.publish(sid, name).await.map_err(err("publish"))?;
    Ok((code, c, sid))
}

async fn bad_name(addr: SocketAddr, app: &str, name: &str) -> CaseResult {
    let (code, mut c, _) = try_publish(addr, app, name).await?;
    if code != BAD_NAME {
        return Err(format!("publish answered {code:?}, want {BAD_NAME}"));
    }
    expect_closed(&mut c).await
}

/// Sends the audio/video tags of `tags` on message stream `sid` (no pacing).
async fn send_tags(c: &mut RawConn, sid: u32, tags: &[FileTag]) -> CaseResult {
    for t in tags {
        let (cs, ty) = match t.tag_type {
            TagType::Audio => (csid::AUDIO, msg_type::AUDIO),
            TagType::Video => (csid::VIDEO, msg_type::VIDEO),
            _ => continue,
        };
        c.send_message(cs, ty, sid, t.timestamp, &t.body)
            .await
            .map_err(err("sending media"))?;
    }
    Ok(())
}

/// deleteStream, then read (and answer) until the server has nothing more to say, so
/// dropping the connection sends a FIN and not a reset.
async fn end_publish(c: &mut RawConn, sid: u32) -> CaseResult {
    c.command(
        "deleteStream",
        9.0,
        &[Value::Null, Value::Number(f64::from(sid))],
    )
    .await
    .map_err(err("deleteStream"))?;
    while c.read_message(Duration::from_millis(300)).await.is_some() {}
    Ok(())
}

struct Cases(Vec<(String, JoinHandle<CaseResult>)>);

impl Cases {
    fn add(
        &mut self,
        name: impl Into<String>,
        f: impl Future<Output = CaseResult> + Send + 'static,
    ) {
        self.0.push((name.into(), tokio::spawn(f)));
    }

    async fn failures(self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, h) in self.0 {
            match h.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => out.push(format!("{name}: {e}")),
                Err(e) => out.push(format!("{name}: task failed: {e}")),
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// The cases

/// 0.1 H1: the first byte is not RTMP version 3.
async fn bad_c0(addr: SocketAddr, first: &'static [u8]) -> CaseResult {
    let mut c = open(addr).await?;
    let mut b = first.to_vec();
    b.resize(1537, 0);
    let _ = c.send_raw(&b).await;
    expect_closed(&mut c).await
}

/// 0.2 C5/C7: Set Chunk Size 0 or with the top bit set.
async fn bad_chunk_size(addr: SocketAddr, size: u32) -> CaseResult {
    let mut c = shaken(addr).await?;
    let _ = c
        .send_message(
            csid::PROTOCOL,
            msg_type::SET_CHUNK_SIZE,
            0,
            0,
            &size.to_be_bytes(),
        )
        .await;
    expect_closed(&mut c).await
}

/// 0.2 C7: the largest legal chunk size is accepted (and must not be allocated).
async fn max_chunk_size_accepted(addr: SocketAddr) -> CaseResult {
    let mut c = shaken(addr).await?;
    c.announce_chunk_size(0x7fff_ffff)
        .await
        .map_err(err("Set Chunk Size"))?;
    c.connect_app("live", &format!("rtmp://{addr}/live"))
        .await
        .map_err(err("connect after Set Chunk Size 2^31-1"))?;
    c.create_stream().await.map_err(err("createStream"))?;
    Ok(())
}

/// 0.2 C4: a video message header declaring 1 MiB, above max_message_bytes = 65536.
async fn message_too_large(addr: SocketAddr) -> CaseResult {
    let mut c = connected(addr, "live").await?;
    let mut b = fmt0(6, 0, 1 << 20, msg_type::VIDEO, 1);
    b.extend_from_slice(&[0x17; 128]);
    let _ = c.send_raw(&b).await;
    expect_closed(&mut c).await
}

/// 0.2 C4 boundary: a message of exactly max_message_bytes is accepted (dropped, since
/// nothing is published on stream 1) and the connection goes on.
async fn message_at_limit_accepted(addr: SocketAddr) -> CaseResult {
    let mut c = connected(addr, "live").await?;
    c.send_message(csid::VIDEO, msg_type::VIDEO, 1, 0, &vec![0x27; 65536])
        .await
        .map_err(err("sending a 65536-byte message"))?;
    c.create_stream()
        .await
        .map_err(err("createStream after a 65536-byte message"))?;
    Ok(())
}

/// 0.2 C2: the first chunk of a fresh chunk stream has fmt 1, 2 or 3.
async fn fresh_csid_not_fmt0(addr: SocketAddr, fmt: u8) -> CaseResult {
    let mut c = shaken(addr).await?;
    let mut b = vec![(fmt << 6) | 7];
    match fmt {
        1 => b.extend_from_slice(&[0, 0, 0, 0, 0, 4, msg_type::AUDIO]),
        2 => b.extend_from_slice(&[0, 0, 0]),
        _ => {}
    }
    b.extend_from_slice(&[0xaf, 1, 0x21, 0x10]);
    let _ = c.send_raw(&b).await;
    expect_closed(&mut c).await
}

/// 0.2 C3: a new fmt-0 header on a chunk stream whose message is half-assembled.
async fn header_mid_message(addr: SocketAddr) -> CaseResult {
    let mut c = connected(addr, "live").await?;
    let mut b = fmt0(6, 0, 300, msg_type::VIDEO, 1);
    b.extend_from_slice(&[0x27; 128]);
    b.extend(fmt0(6, 40, 10, msg_type::VIDEO, 1));
    b.extend_from_slice(&[0x27; 10]);
    let _ = c.send_raw(&b).await;
    expect_closed(&mut c).await
}

/// 0.2 C10: Abort Message drops a half-assembled message and the session goes on.
async fn abort_mid_message(addr: SocketAddr) -> CaseResult {
    let mut c = shaken(addr).await?;
    let mut b = fmt0(6, 0, 300, msg_type::VIDEO, 1);
    b.extend_from_slice(&[0x27; 128]);
    c.send_raw(&b).await.map_err(err("first chunk"))?;
    c.send_message(csid::PROTOCOL, msg_type::ABORT, 0, 0, &6u32.to_be_bytes())
        .await
        .map_err(err("Abort"))?;
    c.connect_app("live", &format!("rtmp://{addr}/live"))
        .await
        .map_err(err("connect after Abort"))?;
    Ok(())
}

/// 0.2 C1: more distinct chunk streams than the per-connection cap (64), including
/// ids in the 2- and 3-byte basic header forms.
async fn too_many_chunk_streams(addr: SocketAddr) -> CaseResult {
    let mut c = shaken(addr).await?;
    let mut b = Vec::new();
    for cs in [64, 319, 320, 65599].into_iter().chain(4..=80u32) {
        b.extend(testkit::chunk::encode_to_vec(
            cs,
            msg_type::ACKNOWLEDGEMENT,
            0,
            0,
            &[0, 0, 0, 0],
            128,
        ));
    }
    let _ = c.send_raw(&b).await;
    expect_closed(&mut c).await
}

/// 0.2 C1: commands on chunk stream ids in the 2-byte (64–319) and 3-byte (320–65599)
/// basic header forms are decoded and answered.
async fn extended_csids_work(addr: SocketAddr) -> CaseResult {
    let mut c = shaken(addr).await?;
    let connect = amf0::encode_all(&[
        "connect".into(),
        Value::Number(1.0),
        amf0::obj([
            ("app", "live".into()),
            ("tcUrl", format!("rtmp://{addr}/live").into()),
        ]),
    ]);
    c.send_message(65599, msg_type::COMMAND_AMF0, 0, 0, &connect)
        .await
        .map_err(err("connect on csid 65599"))?;
    wait_result(&mut c, 1.0).await?;
    let create = amf0::encode_all(&["createStream".into(), Value::Number(2.0), Value::Null]);
    c.send_message(100, msg_type::COMMAND_AMF0, 0, 0, &create)
        .await
        .map_err(err("createStream on csid 100"))?;
    wait_result(&mut c, 2.0).await
}

async fn wait_result(c: &mut RawConn, txn: f64) -> CaseResult {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let Some(m) = c.read_message(Duration::from_secs(1)).await else {
            continue;
        };
        let v = testkit::conn::decode_command(&m).unwrap_or_default();
        if v.first().and_then(Value::as_str) == Some("_result")
            && v.get(1).and_then(Value::as_number) == Some(txn)
        {
            return Ok(());
        }
    }
    Err(format!("no _result for transaction {txn}"))
}

/// 0.3 A6: createStream beyond the per-connection cap.
async fn too_many_create_stream(addr: SocketAddr) -> CaseResult {
    let mut c = connected(addr, "live").await?;
    for i in 0..50 {
        if c.create_stream().await.is_err() {
            // Refused (closed or timed out): it must be closed, and not at the first.
            if i == 0 {
                return Err("the first createStream failed".into());
            }
            return expect_closed(&mut c).await;
        }
    }
    Err("50 createStream calls on one connection were all answered".into())
}

/// 0.3 A6: commands out of the publish state machine's order.
async fn out_of_order(addr: SocketAddr, what: &'static str) -> CaseResult {
    let mut c = shaken(addr).await?;
    // Whether the send itself fails (the server may already have closed) does not matter.
    let _ = match what {
        "publish before connect" => {
            c.command_on(
                1,
                "publish",
                5.0,
                &[Value::Null, "early".into(), "live".into()],
            )
            .await
        }
        "createStream before connect" => c.command("createStream", 2.0, &[Value::Null]).await,
        "connect twice" => {
            c.connect_app("live", &format!("rtmp://{addr}/live"))
                .await
                .map_err(err("first connect"))?;
            let o = amf0::obj([("app", "live".into())]);
            c.command("connect", 3.0, &[o]).await
        }
        _ => {
            // publish on a message stream createStream never made
            c.connect_app("live", &format!("rtmp://{addr}/live"))
                .await
                .map_err(err("connect"))?;
            c.command_on(
                7,
                "publish",
                5.0,
                &[Value::Null, "nostream".into(), "live".into()],
            )
            .await
        }
    };
    expect_closed(&mut c).await
}

/// After a publish, data messages that are not usable metadata are skipped and empty or
/// one-byte media bodies are dropped (0.3 A4, 0.4 M1); the connection goes on and the
/// recording holds exactly the well-formed frames.
async fn odd_media(addr: SocketAddr, tags: Vec<FileTag>) -> CaseResult {
    let (code, mut c, sid) = try_publish(addr, "live", "oddmedia").await?;
    if code != "NetStream.Publish.Start" {
        return Err(format!("publish answered {code}"));
    }
    let data = |vals: &[Value]| amf0::encode_all(vals);
    // A bare @setDataFrame: ignored, the connection stays.
    c.send_message(
        csid::DATA,
        msg_type::DATA_AMF0,
        sid,
        0,
        &data(&["@setDataFrame".into()]),
    )
    .await
    .map_err(err("@setDataFrame"))?;
    expect_open(&mut c, Duration::from_millis(500))
        .await
        .map_err(|e| format!("after a bare @setDataFrame: {e}"))?;
    // The fixture's own metadata, as ffmpeg sends it.
    if let Some(meta) = tags.iter().find(|t| t.tag_type == TagType::Script) {
        let mut p = data(&["@setDataFrame".into()]);
        p.extend_from_slice(&meta.body);
        c.send_message(csid::DATA, msg_type::DATA_AMF0, sid, 0, &p)
            .await
            .map_err(err("metadata"))?;
    }
    // onMetaData with an unsupported AMF0 marker (0x0d) and a truncated string.
    let mut p = data(&["@setDataFrame".into(), "onMetaData".into()]);
    p.extend_from_slice(&[0x0d, 0x02, 0xff, 0xff, b'x']);
    c.send_message(csid::DATA, msg_type::DATA_AMF0, sid, 0, &p)
        .await
        .map_err(err("bad metadata"))?;
    let mut n = 0;
    for t in &tags {
        let (cs, ty) = match t.tag_type {
            TagType::Audio => (csid::AUDIO, msg_type::AUDIO),
            TagType::Video => (csid::VIDEO, msg_type::VIDEO),
            _ => continue,
        };
        c.send_message(cs, ty, sid, t.timestamp, &t.body)
            .await
            .map_err(err("media"))?;
        n += 1;
        if n % 7 == 0 {
            // Empty bodies, then one-byte ones, on both tracks, at the current time.
            for body in [&[][..], &[0xaf][..]] {
                c.send_message(csid::AUDIO, msg_type::AUDIO, sid, t.timestamp, body)
                    .await
                    .map_err(err("odd audio"))?;
            }
            for body in [&[][..], &[0x27][..]] {
                c.send_message(csid::VIDEO, msg_type::VIDEO, sid, t.timestamp, body)
                    .await
                    .map_err(err("odd video"))?;
            }
        }
    }
    expect_open(&mut c, Duration::from_millis(200))
        .await
        .map_err(|e| format!("after empty/1-byte media: {e}"))?;
    end_publish(&mut c, sid).await
}

/// R-IN-4: a second publisher of a live stream is refused.
async fn duplicate_refused(url: String, tags: Vec<FileTag>) -> CaseResult {
    match publish_flv(&url, &tags, &PublishOptions::default()).await {
        Err(PublishError::Rejected { code, .. }) if code == BAD_NAME => Ok(()),
        other => Err(format!("second publisher of a live stream: {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_while_a_live_publisher_records_every_frame() {
    let mut d = Daemon::start_with("max_message_bytes = 65536\n", "");
    let addr = d.rtmp;
    let fixture = fixture_tags("avc_aac_1s.flv");

    // Publisher A: live, real-time, for the whole run.
    let good_tags = head(&fixture, 7000);
    let good_expected = summary_of(&good_tags);
    assert!(good_expected.video_frames >= 150, "{good_expected:?}");
    let good = {
        let (url, tags) = (d.url("live", "dup"), good_tags.clone());
        tokio::spawn(async move { publish_flv(&url, &tags, &realtime()).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let short = head(&fixture, 2000);
    let mut cases = Cases(Vec::new());
    // 0.1 handshake
    cases.add("C0 0x06 (RTMPE)", bad_c0(addr, &[0x06]));
    cases.add(
        "C0 0x16 (TLS)",
        bad_c0(addr, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]),
    );
    cases.add(
        "C0 'G' (HTTP)",
        bad_c0(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    );
    // 0.2 chunk layer
    cases.add("Set Chunk Size 0", bad_chunk_size(addr, 0));
    cases.add("Set Chunk Size 2^31", bad_chunk_size(addr, 0x8000_0000));
    cases.add("Set Chunk Size 2^32-1", bad_chunk_size(addr, u32::MAX));
    cases.add(
        "Set Chunk Size 2^31-1 accepted",
        max_chunk_size_accepted(addr),
    );
    cases.add(
        "message of 1 MiB > max_message_bytes",
        message_too_large(addr),
    );
    cases.add(
        "message of max_message_bytes accepted",
        message_at_limit_accepted(addr),
    );
    cases.add("fresh csid with fmt 1", fresh_csid_not_fmt0(addr, 1));
    cases.add("fresh csid with fmt 2", fresh_csid_not_fmt0(addr, 2));
    cases.add("fresh csid with fmt 3", fresh_csid_not_fmt0(addr, 3));
    cases.add("fmt 0 mid-message", header_mid_message(addr));
    cases.add("Abort mid-message accepted", abort_mid_message(addr));
    cases.add("81 chunk streams", too_many_chunk_streams(addr));
    cases.add("2- and 3-byte chunk stream ids", extended_csids_work(addr));
    // 0.3 AMF and commands
    let full = amf0::encode_all(&[
        "connect".into(),
        Value::Number(1.0),
        amf0::obj([
            ("app", "live".into()),
            ("tcUrl", format!("rtmp://{addr}/live").into()),
        ]),
    ]);
    let truncated = full[..full.len() / 2].to_vec();
    cases.add("truncated AMF in connect", async move {
        command_closes(addr, &truncated).await
    });
    let deep = connect_body(&deep_amf(0x03, 100_000));
    cases.add(
        "100000-deep objects in connect (> max_message_bytes)",
        async move { command_closes(addr, &deep).await },
    );
    let deep = connect_body(&deep_amf(0x0a, 10_000));
    cases.add("10000-deep strict arrays in connect", async move {
        command_closes(addr, &deep).await
    });
    let past_end = connect_body(&[
        0x03, 0x00, 0x03, b'a', b'p', b'p', 0x02, 0xff, 0xff, b'l', b'i', b'v', b'e', b'!', b'!',
        b'!',
    ]);
    cases.add("AMF string length past the end", async move {
        command_closes(addr, &past_end).await
    });
    let huge_count = connect_body(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    cases.add("strict array count 2^32-1 with 10 bytes", async move {
        command_closes(addr, &huge_count).await
    });
    let no_txn = amf0::encode_all(&["connect".into()]);
    cases.add("connect without transaction id", async move {
        command_closes(addr, &no_txn).await
    });
    cases.add("createStream without transaction id", async move {
        let mut c = connected(addr, "live").await?;
        let _ = c
            .send_message(
                csid::COMMAND,
                msg_type::COMMAND_AMF0,
                0,
                0,
                &amf0::encode_all(&["createStream".into()]),
            )
            .await;
        expect_closed(&mut c).await
    });
    let no_app = amf0::encode_all(&["connect".into(), Value::Number(1.0), Value::Null]);
    cases.add("connect without command object", async move {
        command_closes(addr, &no_app).await
    });
    cases.add("publish without a name", async move {
        let mut c = connected(addr, "live").await?;
        let sid = c.create_stream().await.map_err(err("createStream"))?;
        let _ = c.command_on(sid, "publish", 5.0, &[Value::Null]).await;
        expect_closed(&mut c).await
    });
    for what in [
        "publish before connect",
        "createStream before connect",
        "connect twice",
        "publish on an uncreated stream",
    ] {
        cases.add(what, out_of_order(addr, what));
    }
    cases.add("createStream flood", too_many_create_stream(addr));
    // 0.3 A4 / 0.4 M1 on a publishing connection
    let odd_tags = short.clone();
    cases.add(
        "@setDataFrame alone, bad metadata, empty and 1-byte media",
        odd_media(addr, odd_tags),
    );
    // 0.6 names
    let long = "x".repeat(300);
    for (app, name) in [
        ("live", ".."),
        ("live", "."),
        ("live", "a/b"),
        ("live", "../../../../tmp/pwned"),
        ("live", "a\0b"),
        ("live", long.as_str()),
        ("live", "%2e%2e"),
        ("live", "a\\b"),
        ("live", "a b"),
        ("live", ""),
        ("live", "ok?vhost=.."),
        ("live", "ok?domain=a/b"),
        // Issue 14: the daemon's own state prefix and the spool's files are out of
        // reach: no dot-names, and vhost=/domain= select only a listed domain.
        ("live", "x?vhost=.liverec"),
        (".liverec", "state"),
        ("498921.jsonl", "x?vhost=.index"),
        ("live", "x?vhost=tenant-not-listed"),
        ("live", ".hidden"),
        ("..", "ok"),
        ("../../tmp", "ok"),
        ("a/b", "ok"),
    ] {
        let (app, name) = (app.to_string(), name.to_string());
        cases.add(
            format!("bad name app={app:?} stream={name:?}"),
            async move { bad_name(addr, &app, &name).await },
        );
    }
    // R-IN-4: a second publisher of live/dup while A publishes it.
    let (dup_url, dup_tags) = (d.url("live", "dup"), short.clone());
    cases.add("duplicate publisher refused", async move {
        duplicate_refused(dup_url, dup_tags).await
    });

    let failures = cases.failures().await;
    let good = good.await.expect("publisher task");
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n  {}\nlog:\n{}",
        failures.len(),
        failures.join("\n  "),
        d.log()
    );
    good.unwrap_or_else(|e| panic!("the live publisher failed: {e}; log:\n{}", d.log()));

    // A is recorded exactly, despite everything above (and the refused duplicate).
    check_recording(&d, "dup", &good_expected);
    // The odd-media stream holds exactly its well-formed frames.
    check_recording(&d, "oddmedia", &summary_of(&short));
    // And the daemon still takes a new publisher afterwards.
    publish_flv(&d.url("live", "after"), &short, &PublishOptions::default())
        .await
        .unwrap_or_else(|e| panic!("publish after the bad input: {e}; log:\n{}", d.log()));
    check_recording(&d, "after", &summary_of(&short));

    // Nothing on disk for any refused name: only live/{dup,oddmedia,after} exist.
    let allowed = ["dup", "oddmedia", "after"];
    for base in [d.root(), d.spool()] {
        for p in common::walk(&base) {
            let parts: Vec<_> = p.components().map(|c| c.as_os_str().to_owned()).collect();
            // The daemon's own state (recordings index, retention) is the node database
            // `{spool}/.liverec.db` and its WAL companions.
            if base == d.spool()
                && parts
                    .first()
                    .and_then(|c| c.to_str())
                    .is_some_and(|c| c.starts_with(".liverec.db"))
            {
                continue;
            }
            // The store's recordings catalog mirrors the recordings' keys: same rule.
            let catalog = [".liverec", "state", "recordings"];
            let in_catalog = base == d.root() && parts.iter().zip(catalog).all(|(c, k)| c == k);
            if in_catalog && parts.len() <= 3 {
                continue;
            }
            let parts = if in_catalog {
                parts[3..].to_vec()
            } else {
                parts
            };
            let ok = parts.first().is_some_and(|c| c == "localhost")
                && parts.get(1).is_none_or(|c| c == "live")
                && parts.get(2).is_none_or(|c| allowed.iter().any(|a| c == *a));
            assert!(
                ok,
                "unexpected path {} under {}",
                p.display(),
                base.display()
            );
        }
    }
    let mut top: Vec<_> = std::fs::read_dir(d.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["config.toml", "daemon.log", "recordings", "spool"]);

    let log = d.log();
    assert!(!log.contains("panicked"), "daemon panicked:\n{log}");
    // Each refusal has a log line that says why (R-SEC-3), so the closes above were for
    // the intended reasons and not some other error.
    for why in [
        "C0 version byte 0x06 is not RTMP version 3",
        "C0 version byte 0x16 is not RTMP version 3",
        "C0 version byte 0x47 is not RTMP version 3",
        "invalid Set Chunk Size 0 ",
        "invalid Set Chunk Size 2147483648 ",
        "invalid Set Chunk Size 4294967295 ",
        "declares 1048576 bytes, above the limit of 65536",
        "is fresh but its first chunk has fmt 1",
        "is fresh but its first chunk has fmt 2",
        "is fresh but its first chunk has fmt 3",
        "while a message is half-assembled",
        "would exceed the limit of 64 chunk streams",
        "AMF0 nesting deeper than",
        "\"publish\" not allowed before connect",
        "\"createStream\" not allowed before connect",
        "\"connect\" not allowed twice",
        "\"connect\" at byte",
        "too few values",
        "would exceed 2 message streams",
        "invalid stream name: app \"..\"",
        "invalid stream name: domain \"..\"",
        "invalid stream name: stream \"a\\0b\"",
        "is already being published",
    ] {
        assert!(log.contains(why), "no log line with {why:?}; log:\n{log}");
    }
    assert!(d.is_running(), "daemon died; log:\n{log}");
    assert_eq!(d.stop(), Some(0), "exit code; log:\n{}", d.log());
}

/// 0.3 A2 with a limit that lets the whole message in: 100 000 nested objects, ECMA
/// arrays and strict arrays in `connect` (a recursive decoder would overflow the stack
/// and abort the process), and in a publisher's onMetaData.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_amf_is_refused_without_crashing() {
    let mut d = Daemon::start("");
    let addr = d.rtmp;
    let fixture = fixture_tags("avc_aac_1s.flv");
    let tags = head(&fixture, 3000);
    let good = {
        let (url, tags) = (d.url("live", "good"), tags.clone());
        tokio::spawn(async move { publish_flv(&url, &tags, &realtime()).await })
    };
    let mut cases = Cases(Vec::new());
    for kind in [0x03u8, 0x08, 0x0a] {
        let body = connect_body(&deep_amf(kind, 100_000));
        cases.add(format!("100000-deep 0x{kind:02x} in connect"), async move {
            command_closes(addr, &body).await
        });
    }
    let meta_tags = tags.clone();
    cases.add("100000-deep onMetaData", async move {
        let (code, mut c, sid) = try_publish(addr, "live", "deepmeta").await?;
        if code != "NetStream.Publish.Start" {
            return Err(format!("publish answered {code}"));
        }
        let mut p = amf0::encode_all(&["@setDataFrame".into(), "onMetaData".into()]);
        p.extend(deep_amf(0x08, 100_000));
        c.send_message(csid::DATA, msg_type::DATA_AMF0, sid, 0, &p)
            .await
            .map_err(err("metadata"))?;
        send_tags(&mut c, sid, &meta_tags).await?;
        end_publish(&mut c, sid).await
    });
    let failures = cases.failures().await;
    let good = good.await.expect("publisher task");
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n  {}\nlog:\n{}",
        failures.len(),
        failures.join("\n  "),
        d.log()
    );
    good.unwrap_or_else(|e| panic!("the live publisher failed: {e}; log:\n{}", d.log()));
    let expected = summary_of(&tags);
    check_recording(&d, "good", &expected);
    check_recording(&d, "deepmeta", &expected);
    assert!(d.is_running(), "daemon died; log:\n{}", d.log());
    assert_eq!(d.stop(), Some(0), "exit code; log:\n{}", d.log());
}

/// 0.1 H3/H4: the handshake deadline (handshake + connect + publish) and the idle
/// publisher timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_deadline_and_idle_publisher_timeout() {
    let mut d = Daemon::start_with("handshake_timeout = 1\nidle_timeout = 1\n", "");
    let addr = d.rtmp;
    let fixture = fixture_tags("avc_aac_1s.flv");
    let mut cases = Cases(Vec::new());

    /// Closed within 3 s, but not before ~1 s (it is the deadline, not an error).
    async fn closed_by_deadline(c: &mut RawConn, t0: Instant) -> CaseResult {
        expect_closed(c).await?;
        let e = t0.elapsed();
        if e < Duration::from_millis(800) || e > Duration::from_millis(3000) {
            return Err(format!("closed after {e:?}, want ~1 s"));
        }
        Ok(())
    }
    cases.add("connects and sends nothing", async move {
        let t0 = Instant::now();
        let mut c = open(addr).await?;
        closed_by_deadline(&mut c, t0).await
    });
    cases.add("sends C0C1 only", async move {
        let t0 = Instant::now();
        let mut c = open(addr).await?;
        let mut c0c1 = vec![3u8];
        c0c1.resize(1537, 0);
        c.send_raw(&c0c1).await.map_err(err("C0C1"))?;
        closed_by_deadline(&mut c, t0).await
    });
    cases.add("handshakes and connects but never publishes", async move {
        let t0 = Instant::now();
        let mut c = connected(addr, "live").await?;
        closed_by_deadline(&mut c, t0).await
    });
    cases.add("trickles one byte every 200 ms", async move {
        let t0 = Instant::now();
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(err("TCP connect"))?;
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            let mut b = [3u8; 1];
            for _ in 0..100 {
                if wr.write_all(&b).await.is_err() {
                    return;
                }
                b[0] = 0;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        writer.abort();
        match closed {
            Ok(()) if t0.elapsed() >= Duration::from_millis(800) => Ok(()),
            Ok(()) => Err(format!("closed after only {:?}", t0.elapsed())),
            Err(_) => Err("a slowloris client was not closed within 3 s".into()),
        }
    });
    let (idle_tags, again_tags) = (head(&fixture, 1000), head(&fixture, 2000));
    let again_url = d.url("live", "idle");
    cases.add("idle publisher dropped, name free again", async move {
        let (code, mut c, sid) = try_publish(addr, "live", "idle").await?;
        if code != "NetStream.Publish.Start" {
            return Err(format!("publish answered {code}"));
        }
        send_tags(&mut c, sid, &idle_tags).await?;
        let t0 = Instant::now();
        expect_closed(&mut c)
            .await
            .map_err(|e| format!("silent publisher: {e}"))?;
        let e = t0.elapsed();
        if e < Duration::from_millis(800) {
            return Err(format!("silent publisher closed after only {e:?}"));
        }
        publish_flv(&again_url, &again_tags, &PublishOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| format!("publishing the idle stream's name again: {e}"))
    });
    let failures = cases.failures().await;
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n  {}\nlog:\n{}",
        failures.len(),
        failures.join("\n  "),
        d.log()
    );
    // Both publishes of live/idle were recorded; the second one exactly.
    let files = d.wait_files(
        "localhost",
        "live",
        "idle",
        "flv",
        2,
        Duration::from_secs(20),
    );
    assert_eq!(files.len(), 2, "{files:?}");
    let mut expected = [
        summary_of(&head(&fixture, 1000)),
        summary_of(&head(&fixture, 2000)),
    ];
    // Same-second names get `_1`; order the files by size to match them up.
    let mut by_size = files.clone();
    by_size.sort_by_key(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0));
    expected.sort_by_key(|s| s.file_size);
    for (f, e) in by_size.iter().zip(&expected) {
        let s = flv_summary(f);
        assert_eq!(
            (s.video_frames, s.audio_frames),
            (e.video_frames, e.audio_frames),
            "{}",
            f.display()
        );
        let errs = ffprobe_errors(f);
        assert!(errs.is_empty(), "ffprobe on {}: {errs}", f.display());
    }
    assert!(d.is_running(), "daemon died; log:\n{}", d.log());
    assert_eq!(d.stop(), Some(0), "exit code; log:\n{}", d.log());
}

/// R-IN-4 with `on_duplicate = "takeover"`: the second publisher replaces the first,
/// whose connection is closed; both recordings are complete files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_publisher_takes_over_when_configured() {
    let mut d = Daemon::start_with("on_duplicate = \"takeover\"\n", "");
    let fixture = fixture_tags("avc_aac_1s.flv");
    let a_tags = head(&fixture, 6000);
    let b_tags = head(&fixture, 2000);
    let a = {
        let (url, tags) = (d.url("live", "dup"), a_tags.clone());
        tokio::spawn(async move { publish_flv(&url, &tags, &realtime()).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = publish_flv(&d.url("live", "dup"), &b_tags, &PublishOptions::default()).await;
    let a = tokio::time::timeout(Duration::from_secs(10), a)
        .await
        .expect("publisher A still running 10 s after the takeover")
        .expect("publisher task");
    b.unwrap_or_else(|e| panic!("takeover publisher failed: {e}; log:\n{}", d.log()));
    assert!(
        a.is_err(),
        "publisher A should have been disconnected by the takeover, got {a:?}"
    );
    let files = d.wait_files(
        "localhost",
        "live",
        "dup",
        "flv",
        2,
        Duration::from_secs(20),
    );
    assert_eq!(files.len(), 2, "{files:?}");
    let b_expected = summary_of(&b_tags);
    let mut matched_b = false;
    for f in &files {
        let s = flv_summary(f);
        assert!(
            s.read_error.is_none(),
            "{}: {:?}",
            f.display(),
            s.read_error
        );
        assert_eq!(s.first_video_is_key, Some(true), "{}", f.display());
        let errs = ffprobe_errors(f);
        assert!(errs.is_empty(), "ffprobe on {}: {errs}", f.display());
        matched_b |= s.frame_hashes() == b_expected.frame_hashes();
    }
    assert!(matched_b, "no file holds exactly B's frames");
    assert!(d.is_running());
    assert_eq!(d.stop(), Some(0), "exit code; log:\n{}", d.log());
}
