//! An RTMP publisher that replays the tags of an FLV file, written independently of the
//! server crate (it is the other side of it). One connection is two tokio tasks: the
//! caller's, which sends, and a reader that answers Acknowledgement windows and pings
//! and watches for error statuses.

use std::sync::Arc;
use std::time::Duration;

use amf0::Value;
use flv::{FileTag, TagType};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::chunk::msg_type;
use crate::conn::{
    client_handshake, connect_object, csid, decode_command, is_result, status_of, stream_id_of,
    wait_command, ReadSide, WriteSide,
};
use crate::probe::{classify_tag, TagKind};
use crate::url::RtmpUrl;
use crate::PublishError;

/// Pacing granularity in real-time mode: tags due within this much are sent at once.
const TICK: Duration = Duration::from_millis(20);
/// Sending flushes the write buffer once it holds this much.
const FLUSH_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Outgoing chunk size announced after `connect` (default 4096, like OBS).
    pub chunk_size: u32,
    /// Pace tags against the wall clock like `ffmpeg -re` (else as fast as possible).
    pub realtime: bool,
    /// tcUrl to send (default `rtmp://host:port/app` from the URL).
    pub tc_url: Option<String>,
    /// Extra repeats of the file, timestamps continuing (ignored when `duration` is set).
    pub loops: u32,
    /// C1 with a Flash Player digest instead of the simple handshake.
    pub complex_handshake: bool,
    /// When set: loop the file for this long (wall clock) and stop.
    pub duration: Option<Duration>,
    /// `publish_many`: each connection starts after a random delay in `[0, start_jitter)`.
    pub start_jitter: Duration,
    pub audio_csid: u32,
    pub video_csid: u32,
    /// Limit for connect, handshake and each command reply.
    pub timeout: Duration,
    /// After deleteStream and our FIN, how long to wait for the server to close (so our
    /// close never resets the connection before the server has read everything).
    pub close_wait: Duration,
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self {
            chunk_size: 4096,
            realtime: false,
            tc_url: None,
            loops: 0,
            complex_handshake: false,
            duration: None,
            start_jitter: Duration::ZERO,
            audio_csid: csid::AUDIO,
            video_csid: csid::VIDEO,
            timeout: Duration::from_secs(10),
            close_wait: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Every byte written to the socket, handshake included.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// RTMP messages sent (commands, protocol control, data, media).
    pub messages_sent: u64,
    /// Audio/video messages sent.
    pub media_messages: u64,
    /// Acknowledgements sent in answer to the server's window.
    pub acks_sent: u64,
    /// Message stream id from `createStream`.
    pub stream_id: u32,
    /// From TCP connect to close.
    pub duration: Duration,
}

enum Event {
    Reply(u8, Vec<u8>),
    Status { code: String, description: String },
    Closed(String),
}

/// Fixed facts about a tag list, computed once per publish.
struct Plan {
    /// Loop period in ms: span of the a/v timestamps plus one frame interval.
    period: u64,
    first_ts: u64,
    script: Option<Vec<u8>>,
}

fn plan(tags: &[FileTag]) -> Plan {
    let av = || {
        tags.iter()
            .filter(|t| matches!(t.tag_type, TagType::Audio | TagType::Video))
    };
    let first_ts = av().map(|t| u64::from(t.timestamp)).min().unwrap_or(0);
    let last_ts = av().map(|t| u64::from(t.timestamp)).max().unwrap_or(0);
    let min_delta = |ty: TagType| {
        let ts: Vec<u64> = tags
            .iter()
            .filter(|t| t.tag_type == ty)
            .map(|t| u64::from(t.timestamp))
            .collect();
        ts.windows(2)
            .filter_map(|w| w[1].checked_sub(w[0]).filter(|&d| d > 0))
            .min()
    };
    let interval = min_delta(TagType::Video)
        .or_else(|| min_delta(TagType::Audio))
        .unwrap_or(1);
    let script = tags
        .iter()
        .find(|t| t.tag_type == TagType::Script)
        .map(|t| {
            let mut p = amf0::encode_all(&[Value::from("@setDataFrame")]);
            p.extend_from_slice(&t.body);
            p
        });
    Plan {
        period: last_ts - first_ts + interval,
        first_ts,
        script,
    }
}

/// Publishes `tags` (an FLV file's tags; sequence headers first) to `url`
/// (`rtmp://host[:port]/app/stream[?query]`).
pub async fn publish_flv(
    url: &str,
    tags: &[FileTag],
    opts: &PublishOptions,
) -> Result<PublishStats, PublishError> {
    let u = RtmpUrl::parse(url)?;
    if u.stream.is_empty() {
        return Err(PublishError::BadUrl(crate::url::UrlError {
            url: url.to_string(),
            reason: "no stream name",
        }));
    }
    let started = Instant::now();
    let tcp = tokio::time::timeout(opts.timeout, TcpStream::connect(u.addr()))
        .await
        .map_err(|_| PublishError::Timeout(format!("TCP connect to {}", u.addr())))??;
    publish_on(tcp, u, tags, opts, started).await
}

/// Like [`publish_flv`], on a connection the caller opened — and may have written to
/// first, e.g. a PROXY protocol header, as a load balancer in front of the server would
/// (those bytes are not in [`PublishStats::bytes_sent`]). `url` gives the app, stream
/// and tcUrl; its host is not connected to.
pub async fn publish_flv_on(
    tcp: TcpStream,
    url: &str,
    tags: &[FileTag],
    opts: &PublishOptions,
) -> Result<PublishStats, PublishError> {
    let u = RtmpUrl::parse(url)?;
    if u.stream.is_empty() {
        return Err(PublishError::BadUrl(crate::url::UrlError {
            url: url.to_string(),
            reason: "no stream name",
        }));
    }
    publish_on(tcp, u, tags, opts, Instant::now()).await
}

async fn publish_on(
    tcp: TcpStream,
    u: RtmpUrl,
    tags: &[FileTag],
    opts: &PublishOptions,
    started: Instant,
) -> Result<PublishStats, PublishError> {
    tcp.set_nodelay(true)?;
    let (rd, wr) = tcp.into_split();
    let mut rs = ReadSide::new(rd);
    let mut ws = WriteSide::new(wr);
    tokio::time::timeout(
        opts.timeout,
        client_handshake(&mut rs, &mut ws, opts.complex_handshake),
    )
    .await
    .map_err(|_| PublishError::Timeout("handshake".into()))??;

    // connect
    let tc_url = opts.tc_url.clone().unwrap_or_else(|| u.tc_url());
    ws.queue_command(
        0,
        &[
            "connect".into(),
            Value::Number(1.0),
            connect_object(&u.app, &tc_url),
        ],
    );
    ws.flush().await?;
    wait_command(&mut rs, &mut ws, "connect", opts.timeout, Some(1.0), |v| {
        is_result(v, 1.0)
    })
    .await?;

    // window, chunk size, releaseStream, FCPublish, createStream
    ws.queue(
        csid::PROTOCOL,
        msg_type::WINDOW_ACK_SIZE,
        0,
        0,
        &2_500_000u32.to_be_bytes(),
    );
    let chunk = opts.chunk_size.clamp(1, crate::chunk::MAX_CHUNK_SIZE);
    ws.queue(
        csid::PROTOCOL,
        msg_type::SET_CHUNK_SIZE,
        0,
        0,
        &chunk.to_be_bytes(),
    );
    ws.chunk_size = chunk as usize;
    let name = Value::from(u.stream.as_str());
    ws.queue_command(
        0,
        &[
            "releaseStream".into(),
            Value::Number(2.0),
            Value::Null,
            name.clone(),
        ],
    );
    ws.queue_command(
        0,
        &[
            "FCPublish".into(),
            Value::Number(3.0),
            Value::Null,
            name.clone(),
        ],
    );
    ws.queue_command(0, &["createStream".into(), Value::Number(4.0), Value::Null]);
    ws.flush().await?;
    let v = wait_command(
        &mut rs,
        &mut ws,
        "createStream",
        opts.timeout,
        Some(4.0),
        |v| is_result(v, 4.0),
    )
    .await?;
    let msid = stream_id_of(&v);

    // publish, then wait for its onStatus
    ws.queue_command(
        msid,
        &[
            "publish".into(),
            Value::Number(5.0),
            Value::Null,
            name.clone(),
            "live".into(),
        ],
    );
    ws.flush().await?;
    let v = wait_command(&mut rs, &mut ws, "publish", opts.timeout, Some(5.0), |v| {
        status_of(v).is_some()
    })
    .await
    .map_err(|e| match e {
        PublishError::CommandFailed {
            code, description, ..
        } => PublishError::Rejected { code, description },
        e => e,
    })?;
    let (code, _, description) = status_of(&v).unwrap_or_default();
    if code != "NetStream.Publish.Start" {
        return Err(PublishError::Rejected { code, description });
    }

    // media
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(reader_task(rs, tx));
    let mut media = 0u64;
    let sent = send_media(&mut ws, &mut rx, tags, opts, msid, &mut media).await;
    let result = match sent {
        Ok(()) => {
            ws.queue_command(
                0,
                &["FCUnpublish".into(), Value::Number(6.0), Value::Null, name],
            );
            ws.queue_command(
                0,
                &[
                    "deleteStream".into(),
                    Value::Number(7.0),
                    Value::Null,
                    Value::Number(f64::from(msid)),
                ],
            );
            match ws.flush().await {
                Ok(()) => {
                    let _ = ws.wr.shutdown().await;
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e),
    };
    // On a write error, prefer the server's own reason if the reader saw one.
    let result = result.map_err(|e| match e {
        PublishError::Io(io) => match drain_for_reason(&mut rx) {
            Some(better) => better,
            None => PublishError::Closed(format!("while sending: {io}")),
        },
        e => e,
    });
    let (bytes_in, acks) = if result.is_ok() {
        match tokio::time::timeout(opts.close_wait, reader).await {
            Ok(Ok(x)) => x,
            _ => (0, 0),
        }
    } else {
        reader.abort();
        (0, 0)
    };
    result?;
    Ok(PublishStats {
        bytes_sent: ws.bytes_out,
        bytes_received: bytes_in,
        messages_sent: ws.msgs_out,
        media_messages: media,
        acks_sent: acks,
        stream_id: msid,
        duration: started.elapsed(),
    })
}

fn drain_for_reason(rx: &mut mpsc::UnboundedReceiver<Event>) -> Option<PublishError> {
    while let Ok(ev) = rx.try_recv() {
        match ev {
            Event::Status { code, description } => {
                return Some(PublishError::Rejected { code, description })
            }
            Event::Closed(r) => return Some(PublishError::Closed(r)),
            Event::Reply(..) => {}
        }
    }
    None
}

/// Reads until the server closes; returns (bytes received, acks sent).
async fn reader_task(mut rs: ReadSide, tx: mpsc::UnboundedSender<Event>) -> (u64, u64) {
    loop {
        let r = rs.read_message().await;
        for (t, p) in rs.replies.drain(..) {
            let _ = tx.send(Event::Reply(t, p));
        }
        match r {
            Ok(Some(m)) => {
                if let Some((code, level, description)) =
                    decode_command(&m).as_deref().and_then(status_of)
                {
                    if level == "error" {
                        let _ = tx.send(Event::Status { code, description });
                    }
                }
            }
            Ok(None) => {
                let _ = tx.send(Event::Closed("server closed the connection".into()));
                break;
            }
            Err(e) => {
                let _ = tx.send(Event::Closed(e.to_string()));
                break;
            }
        }
    }
    (rs.bytes_in, rs.acks_sent)
}

fn on_event(ev: Option<Event>, ws: &mut WriteSide) -> Result<(), PublishError> {
    match ev {
        Some(Event::Reply(t, p)) => {
            ws.queue(csid::PROTOCOL, t, 0, 0, &p);
            Ok(())
        }
        Some(Event::Status { code, description }) => {
            Err(PublishError::Rejected { code, description })
        }
        Some(Event::Closed(r)) => Err(PublishError::Closed(r)),
        None => Err(PublishError::Closed("reader ended".into())),
    }
}

/// Flushes, then sleeps until `due` while answering the reader's events.
async fn wait_until(
    due: Instant,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    ws: &mut WriteSide,
) -> Result<(), PublishError> {
    ws.flush().await?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(due) => return Ok(()),
            ev = rx.recv() => {
                on_event(ev, ws)?;
                ws.flush().await?;
            }
        }
    }
}

async fn send_media(
    ws: &mut WriteSide,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    tags: &[FileTag],
    opts: &PublishOptions,
    msid: u32,
    media: &mut u64,
) -> Result<(), PublishError> {
    let plan = plan(tags);
    if let Some(s) = &plan.script {
        ws.queue(csid::DATA, msg_type::DATA_AMF0, msid, 0, s);
    }
    ws.flush().await?;
    let t0 = Instant::now();
    let deadline = opts.duration.map(|d| t0 + d);
    let mut loop_no = 0u64;
    loop {
        let base = loop_no * plan.period;
        for tag in tags {
            let (t, c) = match tag.tag_type {
                TagType::Audio => (msg_type::AUDIO, opts.audio_csid),
                TagType::Video => (msg_type::VIDEO, opts.video_csid),
                _ => continue,
            };
            if loop_no > 0 && classify_tag(tag.tag_type, &tag.body).0 == TagKind::SequenceHeader {
                continue;
            }
            let ts = base + u64::from(tag.timestamp);
            if opts.realtime {
                let due = t0 + Duration::from_millis(ts.saturating_sub(plan.first_ts));
                if let Some(d) = deadline.filter(|&d| due >= d) {
                    // This tag belongs after the end: run out the clock and stop.
                    wait_until(d, rx, ws).await?;
                    return Ok(ws.flush().await?);
                }
                if due > Instant::now() + TICK {
                    wait_until(due, rx, ws).await?;
                }
            }
            while let Ok(ev) = rx.try_recv() {
                on_event(Some(ev), ws)?;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            ws.queue(c, t, msid, ts as u32, &tag.body);
            *media += 1;
            if ws.buffered() >= FLUSH_BYTES {
                ws.flush().await?;
            }
        }
        loop_no += 1;
        if deadline.is_none() && loop_no > u64::from(opts.loops) {
            break;
        }
        if *media == 0 {
            break; // nothing to loop
        }
    }
    ws.flush().await?;
    Ok(())
}

/// `n` concurrent publishers of the same tags on the current tokio runtime, stream `i`
/// (0-based) named `s{i}` under `url_base` (`rtmp://host[:port]/app[?query]`). Results
/// are in stream order.
pub async fn publish_many(
    url_base: &str,
    n: usize,
    tags: Arc<Vec<FileTag>>,
    opts: &PublishOptions,
) -> Vec<Result<PublishStats, PublishError>> {
    publish_many_prefixed(url_base, "s", 0, n, tags, opts).await
}

/// Like [`publish_many`], streams named `{prefix}{first + i}`.
pub async fn publish_many_prefixed(
    url_base: &str,
    prefix: &str,
    first: usize,
    n: usize,
    tags: Arc<Vec<FileTag>>,
    opts: &PublishOptions,
) -> Vec<Result<PublishStats, PublishError>> {
    let base = match RtmpUrl::app_only(url_base) {
        Ok(b) => b,
        Err(e) => {
            return (0..n)
                .map(|_| Err(PublishError::BadUrl(e.clone())))
                .collect()
        }
    };
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let url = format!("rtmp://{}/{}/{prefix}{}", base.addr(), base.app, first + i);
            let tags = tags.clone();
            let opts = opts.clone();
            tokio::spawn(async move {
                if !opts.start_jitter.is_zero() {
                    let f: f64 = rand::random();
                    tokio::time::sleep(opts.start_jitter.mul_f64(f)).await;
                }
                publish_flv(&url, &tags, &opts).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(match h.await {
            Ok(r) => r,
            Err(e) => Err(PublishError::Task(e.to_string())),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn tag(t: TagType, ts: u32, body: &'static [u8]) -> FileTag {
        FileTag {
            tag_type: t,
            timestamp: ts,
            offset: 0,
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn loop_period_is_span_plus_one_frame() {
        let tags = vec![
            tag(TagType::Script, 0, b"\x02\x00\x0aonMetaData\x05"),
            tag(TagType::Video, 0, b"\x17\x00"),
            tag(TagType::Audio, 0, b"\xaf\x00"),
            tag(TagType::Video, 0, b"\x17\x01"),
            tag(TagType::Audio, 21, b"\xaf\x01"),
            tag(TagType::Video, 33, b"\x27\x01"),
            tag(TagType::Video, 67, b"\x27\x01"),
        ];
        let p = plan(&tags);
        assert_eq!((p.period, p.first_ts), (67 + 33, 0));
        let s = p.script.unwrap();
        assert_eq!(&s[..16], b"\x02\x00\x0d@setDataFrame");
    }
}
