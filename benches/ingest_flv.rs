//! Criterion benchmark of the ingest → FLV path, in process, no sockets, no files.
//!
//! The RTMP byte stream a publisher would send (C0C1, C2, connect, Window Ack Size,
//! Set Chunk Size 4096, releaseStream, FCPublish, createStream, publish,
//! `@setDataFrame(onMetaData)`, every tag of `fixtures/avc_aac_2s.flv` as an RTMP message
//! in 4096-byte chunks, FCUnpublish, deleteStream) is built once with testkit's client-side
//! chunk encoder. Benches:
//!
//! * `ingest_flv/full` — what the daemon does per connection and recording: the bytes go
//!   through `rtmp::ServerSession` in 64 KiB pieces (the daemon's read size), audio/video
//!   bodies through `flv::tag::parse_*` with `media::TimestampUnwrapper`, into a
//!   `ring` (default bounds: 4 s, 16 MiB), read back after each piece by a ring reader
//!   into `record::Recorder` (10 s interval), whose outputs are drained and counted
//!   (no file I/O). Throughput = RTMP input bytes.
//! * `ingest_flv/session` — `ServerSession` alone (same input, events drained).
//! * `ingest_flv/tag_parse` — `parse_audio`/`parse_video` + timestamp unwrapping over the
//!   session's media messages. Throughput = tag body bytes.
//! * `ingest_flv/full_hls`, `ingest_flv/full_all` — the same path with an HLS recorder,
//!   and with four recorders (FLV, HLS, fMP4, AAC), each on its own ring reader as the
//!   daemon's recording tasks are: the per-packet cost of the formats an operator enables.
//! * `ingest_flv/ring` — push every media event into a ring and read it back.
//! * `ingest_flv/recorder` — `Recorder` alone over the parsed events, outputs drained;
//!   `mux_mp4`, `mux_hls`, `mux_aac` the same per format.
//!
//! Before measuring, every format's output over the fixture is printed with its size and
//! an FNV-1a digest: a change meant to be faster, not different, must leave them equal.
//!
//! Run: `cargo bench --bench ingest_flv` (see benches/README.md).

use std::hint::black_box;
use std::time::Duration;

use amf0::Value;
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flv::reader::{FlvReader, TagType};
use flv::tag::Parsed;
use media::{MediaEvent, Millis, TimestampUnwrapper, WallMillis};
use record::{CutPolicy, Format, Output, Recorder};
use rtmp::{ServerConfig, ServerEvent, ServerSession};
use testkit::chunk::{encode_message, msg_type};

const FIXTURE: &str = "avc_aac_2s.flv";
/// The publisher's chunk size after Set Chunk Size (OBS, the shared peer benchmark).
const CHUNK: usize = 4096;
/// Bytes handed to `handle_input` at a time (the daemon reads up to 64 KiB).
const PIECE: usize = 64 * 1024;
const INTERVAL_MS: i64 = 10_000;
const ALL_FORMATS: [Format; 4] = [Format::Flv, Format::Hls, Format::Mp4, Format::Aac];

// Client chunk stream ids (as testkit's publisher and ffmpeg use them).
const CSID_PROTOCOL: u32 = 2;
const CSID_COMMAND: u32 = 3;
const CSID_AUDIO: u32 = 4;
const CSID_DATA: u32 = 5;
const CSID_VIDEO: u32 = 6;
const CSID_STREAM_COMMAND: u32 = 8;
/// The message stream id the server's first createStream returns.
const MSID: u32 = 1;

/// One media message as the session delivers it.
#[derive(Clone)]
struct Media {
    video: bool,
    timestamp: u32,
    body: Bytes,
}

/// Everything the benches need, built once.
struct Input {
    /// The publisher's whole byte stream.
    rtmp: Vec<u8>,
    /// The `@setDataFrame`-stripped onMetaData body, as the session emits it.
    metadata: Option<Bytes>,
    /// Audio/video messages in arrival order.
    media: Vec<Media>,
    media_bytes: u64,
    /// Parsed events in arrival order (metadata first), for the ring and recorder benches.
    events: Vec<MediaEvent>,
    event_bytes: u64,
}

fn command(out: &mut Vec<u8>, msid: u32, values: &[Value], chunk: usize) {
    let csid = if msid == 0 {
        CSID_COMMAND
    } else {
        CSID_STREAM_COMMAND
    };
    let body = amf0::encode_all(values);
    encode_message(out, csid, msg_type::COMMAND_AMF0, msid, 0, &body, chunk);
}

/// The publisher's side of a whole publish of the fixture, as one byte string.
fn client_bytes() -> Vec<u8> {
    let file = std::fs::read(testkit::fixture(FIXTURE)).expect("read fixture");
    let tags = FlvReader::new(Bytes::from(file))
        .and_then(FlvReader::read_all)
        .expect("parse fixture");

    let mut out = Vec::with_capacity(2 << 20);
    // Handshake: C0 C1 (simple), then C2 (its content is not checked by the server).
    out.push(3);
    out.extend_from_slice(&testkit::handshake::make_c1(false, 0));
    out.extend_from_slice(&[0u8; 1536]);

    // Before Set Chunk Size everything goes in 128-byte chunks.
    let tc_url = "rtmp://127.0.0.1/live";
    command(
        &mut out,
        0,
        &[
            "connect".into(),
            Value::Number(1.0),
            amf0::obj([
                ("app", "live".into()),
                ("type", "nonprivate".into()),
                ("flashVer", "FMLE/3.0 (compatible; liverec-bench)".into()),
                ("tcUrl", tc_url.into()),
            ]),
        ],
        128,
    );
    encode_message(
        &mut out,
        CSID_PROTOCOL,
        msg_type::WINDOW_ACK_SIZE,
        0,
        0,
        &2_500_000u32.to_be_bytes(),
        128,
    );
    encode_message(
        &mut out,
        CSID_PROTOCOL,
        msg_type::SET_CHUNK_SIZE,
        0,
        0,
        &(CHUNK as u32).to_be_bytes(),
        128,
    );
    let name = || Value::from("bench");
    for (i, cmd) in ["releaseStream", "FCPublish"].into_iter().enumerate() {
        command(
            &mut out,
            0,
            &[
                cmd.into(),
                Value::Number(2.0 + i as f64),
                Value::Null,
                name(),
            ],
            CHUNK,
        );
    }
    command(
        &mut out,
        0,
        &["createStream".into(), Value::Number(4.0), Value::Null],
        CHUNK,
    );
    command(
        &mut out,
        MSID,
        &[
            "publish".into(),
            Value::Number(5.0),
            Value::Null,
            name(),
            "live".into(),
        ],
        CHUNK,
    );
    for t in &tags {
        match t.tag_type {
            TagType::Script => {
                let mut p = amf0::encode_all(&[Value::from("@setDataFrame")]);
                p.extend_from_slice(&t.body);
                encode_message(
                    &mut out,
                    CSID_DATA,
                    msg_type::DATA_AMF0,
                    MSID,
                    t.timestamp,
                    &p,
                    CHUNK,
                );
            }
            TagType::Audio => encode_message(
                &mut out,
                CSID_AUDIO,
                msg_type::AUDIO,
                MSID,
                t.timestamp,
                &t.body,
                CHUNK,
            ),
            TagType::Video => encode_message(
                &mut out,
                CSID_VIDEO,
                msg_type::VIDEO,
                MSID,
                t.timestamp,
                &t.body,
                CHUNK,
            ),
            TagType::Other(_) => {}
        }
    }
    command(
        &mut out,
        0,
        &[
            "FCUnpublish".into(),
            Value::Number(6.0),
            Value::Null,
            name(),
        ],
        CHUNK,
    );
    command(
        &mut out,
        0,
        &[
            "deleteStream".into(),
            Value::Number(7.0),
            Value::Null,
            Value::Number(f64::from(MSID)),
        ],
        CHUNK,
    );
    out
}

fn new_session() -> ServerSession {
    ServerSession::new(ServerConfig::default())
}

fn policy() -> CutPolicy {
    CutPolicy {
        interval_ms: Millis::from_ms(INTERVAL_MS),
        hard_cap_ms: Millis::from_ms(2 * INTERVAL_MS),
    }
}

fn parse(clock: &mut TimestampUnwrapper, m: Media) -> Option<MediaEvent> {
    let dts = clock.unwrap(m.timestamp);
    let parsed = if m.video {
        flv::tag::parse_video(m.body, dts)
    } else {
        flv::tag::parse_audio(m.body, dts)
    };
    match parsed {
        Ok(Parsed::Event(ev)) => Some(ev),
        Ok(Parsed::Skip(_)) | Err(_) => None,
    }
}

fn event_bytes(ev: &MediaEvent) -> u64 {
    (match ev {
        MediaEvent::Config(c) => c.flv.len(),
        MediaEvent::Packet(p) => p.flv.len(),
        MediaEvent::Metadata(m) => m.len(),
        MediaEvent::Discontinuity => 0,
    }) as u64
}

/// What the recorder produced: files opened, bytes, files closed.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Drained {
    opened: u64,
    bytes: u64,
    closed: u64,
}

fn drain(rec: &mut Recorder, d: &mut Drained) {
    drain_with(rec, d, |_| {});
}

/// [`drain`], handing every output buffer to `data` in order (for the digest).
fn drain_with(rec: &mut Recorder, d: &mut Drained, mut data: impl FnMut(&[u8])) {
    while let Some(o) = rec.poll_output() {
        match o {
            Output::Open { .. } => d.opened += 1,
            Output::Skipped { reason } => panic!("the recorder skipped the fixture: {reason}"),
            Output::SegmentOpen { .. } => d.opened += 1,
            Output::SegmentData { bufs, .. } | Output::Data { bufs, .. } => {
                for b in &bufs {
                    d.bytes += b.len() as u64;
                    data(b);
                }
            }
            Output::SegmentClose { .. } => d.closed += 1,
            Output::Close { patches, .. } => {
                d.closed += 1;
                black_box(patches);
            }
        }
    }
}

/// FNV-1a over every byte a recorder wrote (patches left out: they rewrite header
/// fields in place and are the same code for every change this guards).
fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

fn recorder(format: Format) -> Recorder {
    Recorder::new(format, policy()).with_segment_duration(Millis::from_ms(4000))
}

/// Feeds the whole input through a session; calls `on_event` for each event. Returns the
/// bytes the server wrote back.
fn run_session(input: &[u8], mut on_event: impl FnMut(&mut ServerSession, ServerEvent)) -> u64 {
    let mut session = new_session();
    let mut buf = BytesMut::with_capacity(PIECE * 2);
    let mut out_bytes = 0u64;
    for piece in input.chunks(PIECE) {
        buf.extend_from_slice(piece);
        session.handle_input(&mut buf).expect("session error");
        while let Some(ev) = session.poll_event() {
            on_event(&mut session, ev);
        }
        while let Some(o) = session.take_output() {
            out_bytes += o.len() as u64;
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    out_bytes
}

/// The whole path: session → tag parsing → ring → one reader and recorder per format →
/// outputs. Returns what all recorders produced together.
fn full_pipeline(input: &[u8], formats: &[Format]) -> Drained {
    let mut session = new_session();
    let (mut writer, handle) = ring::ring(ring::RingConfig::default());
    let mut recs: Vec<(ring::Reader, Recorder)> = formats
        .iter()
        .map(|&f| (handle.subscribe(), recorder(f)))
        .collect();
    let mut clock = TimestampUnwrapper::new();
    let mut d = Drained::default();
    let mut publishing = false;
    let mut buf = BytesMut::with_capacity(PIECE * 2);
    let read = |recs: &mut Vec<(ring::Reader, Recorder)>, d: &mut Drained| {
        for (reader, rec) in recs.iter_mut() {
            while let Some(item) = reader.try_next() {
                match item {
                    ring::Item::Event(ev, at) => rec.handle_event(ev, at),
                    ring::Item::Lagged { .. } => rec.finish(),
                }
                drain(rec, d);
            }
        }
    };
    for piece in input.chunks(PIECE) {
        // One arrival stamp per read, as the ingest connection does.
        let at = WallMillis::from_unix_ms(chrono::Utc::now().timestamp_millis());
        buf.extend_from_slice(piece);
        session.handle_input(&mut buf).expect("session error");
        while let Some(ev) = session.poll_event() {
            match ev {
                ServerEvent::PublishRequested(req) => {
                    session.accept_publish(req.stream_id);
                    publishing = true;
                }
                ServerEvent::Metadata { body, .. } if publishing => {
                    writer.push(MediaEvent::Metadata(body), at)
                }
                ServerEvent::Audio {
                    timestamp, body, ..
                } if publishing => {
                    let m = Media {
                        video: false,
                        timestamp,
                        body,
                    };
                    if let Some(ev) = parse(&mut clock, m) {
                        writer.push(ev, at);
                    }
                }
                ServerEvent::Video {
                    timestamp, body, ..
                } if publishing => {
                    let m = Media {
                        video: true,
                        timestamp,
                        body,
                    };
                    if let Some(ev) = parse(&mut clock, m) {
                        writer.push(ev, at);
                    }
                }
                ServerEvent::Unpublished { .. } => {
                    publishing = false;
                    writer.close();
                }
                _ => {}
            }
        }
        while let Some(o) = session.take_output() {
            black_box(o);
        }
        read(&mut recs, &mut d);
    }
    writer.close();
    read(&mut recs, &mut d);
    for (_, rec) in &mut recs {
        rec.finish();
        drain(rec, &mut d);
    }
    d
}

fn build_input() -> Input {
    let rtmp = client_bytes();
    let mut metadata = None;
    let mut media = Vec::new();
    let mut publish_id = None;
    run_session(&rtmp, |s, ev| match ev {
        ServerEvent::PublishRequested(req) => {
            publish_id = Some(req.stream_id);
            s.accept_publish(req.stream_id);
        }
        ServerEvent::Metadata { body, .. } => metadata = Some(body),
        ServerEvent::Audio {
            timestamp, body, ..
        } => media.push(Media {
            video: false,
            timestamp,
            body,
        }),
        ServerEvent::Video {
            timestamp, body, ..
        } => media.push(Media {
            video: true,
            timestamp,
            body,
        }),
        _ => {}
    });
    assert_eq!(
        publish_id,
        Some(MSID),
        "publish not requested on stream {MSID}"
    );
    assert!(metadata.is_some(), "no onMetaData");
    let media_bytes = media.iter().map(|m| m.body.len() as u64).sum();
    let mut clock = TimestampUnwrapper::new();
    let mut events: Vec<MediaEvent> = metadata.iter().cloned().map(MediaEvent::Metadata).collect();
    events.extend(media.iter().cloned().filter_map(|m| parse(&mut clock, m)));
    let event_bytes = events.iter().map(event_bytes).sum();
    Input {
        rtmp,
        metadata,
        media,
        media_bytes,
        events,
        event_bytes,
    }
}

fn benches(c: &mut Criterion) {
    let input = build_input();

    // Sanity: the whole path records what came in (20 s at a 10 s interval → 2–3 files).
    let d = full_pipeline(&input.rtmp, &[Format::Flv]);
    assert!(d.opened >= 2 && d.closed == d.opened, "{d:?}");
    assert!(
        d.bytes >= input.media_bytes,
        "recorded {} bytes of {} media bytes",
        d.bytes,
        input.media_bytes
    );
    eprintln!(
        "ingest_flv: {FIXTURE}: {} RTMP bytes in, {} media messages ({} body bytes), {} events; \
         full path → {} files, {} bytes out",
        input.rtmp.len(),
        input.media.len(),
        input.media_bytes,
        input.events.len(),
        d.opened,
        d.bytes
    );

    for format in ALL_FORMATS {
        let mut rec = recorder(format);
        let mut d = Drained::default();
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for ev in &input.events {
            rec.handle_event(ev.clone(), WallMillis::default());
            drain_with(&mut rec, &mut d, |b| fnv1a(&mut hash, b));
        }
        rec.finish();
        drain_with(&mut rec, &mut d, |b| fnv1a(&mut hash, b));
        assert!(d.bytes > 0 && d.closed == d.opened, "{format:?}: {d:?}");
        eprintln!(
            "ingest_flv: {format:?}: {} files, {} bytes, fnv1a {hash:016x}",
            d.opened, d.bytes
        );
    }

    let mut g = c.benchmark_group("ingest_flv");
    g.throughput(Throughput::Bytes(input.rtmp.len() as u64));
    for (name, formats) in [
        ("full", &[Format::Flv][..]),
        ("full_hls", &[Format::Hls][..]),
        ("full_all", &ALL_FORMATS[..]),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(full_pipeline(black_box(&input.rtmp), formats)))
        });
    }

    g.throughput(Throughput::Bytes(input.rtmp.len() as u64));
    g.bench_function("session", |b| {
        b.iter(|| {
            let mut n = 0u64;
            let out = run_session(black_box(&input.rtmp), |s, ev| match ev {
                ServerEvent::PublishRequested(req) => s.accept_publish(req.stream_id),
                ServerEvent::Audio { body, .. } | ServerEvent::Video { body, .. } => {
                    n += body.len() as u64
                }
                other => {
                    black_box(other);
                }
            });
            black_box((n, out))
        })
    });

    g.throughput(Throughput::Bytes(input.media_bytes));
    g.bench_function("tag_parse", |b| {
        b.iter(|| {
            let mut clock = TimestampUnwrapper::new();
            let mut n = 0usize;
            for m in &input.media {
                if let Some(ev) = parse(&mut clock, m.clone()) {
                    n += 1;
                    black_box(ev);
                }
            }
            n
        })
    });

    g.throughput(Throughput::Bytes(input.event_bytes));
    g.bench_function("ring", |b| {
        b.iter(|| {
            let (mut writer, handle) = ring::ring(ring::RingConfig::default());
            let mut reader = handle.subscribe();
            let mut n = 0usize;
            for ev in &input.events {
                writer.push(ev.clone(), WallMillis::default());
                while let Some(item) = reader.try_next() {
                    n += 1;
                    black_box(item);
                }
            }
            writer.close();
            while let Some(item) = reader.try_next() {
                n += 1;
                black_box(item);
            }
            n
        })
    });

    g.throughput(Throughput::Bytes(input.event_bytes));
    // One recorder per format over the same parsed events: what each muxer costs
    // (`recorder` is FLV; the others are named by format).
    for (name, format) in [
        ("recorder", Format::Flv),
        ("mux_mp4", Format::Mp4),
        ("mux_hls", Format::Hls),
        ("mux_aac", Format::Aac),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut rec = recorder(format);
                let mut d = Drained::default();
                for ev in &input.events {
                    rec.handle_event(ev.clone(), WallMillis::default());
                    drain(&mut rec, &mut d);
                }
                rec.finish();
                drain(&mut rec, &mut d);
                d
            })
        });
    }
    g.finish();
    black_box(&input.metadata);
}

criterion_group! {
    name = ingest;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(ingest);
