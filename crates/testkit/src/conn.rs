//! The socket halves of a client RTMP connection and [`RawConn`], a low-level client for
//! malformed-input and protocol tests.

use std::time::Duration;

use amf0::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::chunk::{encode_message, msg_type, ChunkDecoder, Message};
use crate::handshake::{make_c1, make_c2, HANDSHAKE_SIZE};
use crate::PublishError;

/// Chunk stream ids the client uses.
pub mod csid {
    pub const PROTOCOL: u32 = 2;
    pub const COMMAND: u32 = 3;
    pub const AUDIO: u32 = 4;
    pub const DATA: u32 = 5;
    pub const VIDEO: u32 = 6;
    pub const STREAM_COMMAND: u32 = 8;
}

/// The receiving half: chunk decoding, byte counting and the Acknowledgement /
/// ping-response replies it owes the server (queued in `replies`).
pub(crate) struct ReadSide {
    pub rd: OwnedReadHalf,
    pub dec: ChunkDecoder,
    pub bytes_in: u64,
    last_ack: u64,
    ack_window: u32,
    /// Encoded (csid 2) protocol messages to send: Acknowledgements, ping responses.
    pub replies: Vec<(u8, Vec<u8>)>,
    pub acks_sent: u64,
}

impl ReadSide {
    pub fn new(rd: OwnedReadHalf) -> Self {
        Self {
            rd,
            dec: ChunkDecoder::new(),
            bytes_in: 0,
            last_ack: 0,
            ack_window: 0,
            replies: Vec::new(),
            acks_sent: 0,
        }
    }

    /// Next message from the server; handles Window Ack Size and ping requests (replies
    /// are queued in `self.replies`). `Ok(None)` on a clean close by the server.
    pub async fn read_message(&mut self) -> Result<Option<Message>, PublishError> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(m) = self
                .dec
                .next_message()
                .map_err(|e| PublishError::Protocol(e.to_string()))?
            {
                self.on_message(&m);
                return Ok(Some(m));
            }
            let n = self.rd.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.bytes_in += n as u64;
            self.dec.push(&buf[..n]);
            if self.ack_window > 0 && self.bytes_in - self.last_ack >= u64::from(self.ack_window) {
                self.last_ack = self.bytes_in;
                self.acks_sent += 1;
                self.replies.push((
                    msg_type::ACKNOWLEDGEMENT,
                    (self.bytes_in as u32).to_be_bytes().to_vec(),
                ));
            }
        }
    }

    fn on_message(&mut self, m: &Message) {
        match m.msg_type {
            msg_type::WINDOW_ACK_SIZE if m.payload.len() >= 4 => {
                self.ack_window = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
            }
            msg_type::USER_CONTROL if m.payload.len() >= 6 => {
                let event = u16::from_be_bytes([m.payload[0], m.payload[1]]);
                if event == 6 {
                    let mut p = vec![0, 7];
                    p.extend_from_slice(&m.payload[2..6]);
                    self.replies.push((msg_type::USER_CONTROL, p));
                }
            }
            _ => {}
        }
    }
}

/// The sending half: chunk encoding at the current outgoing chunk size.
pub(crate) struct WriteSide {
    pub wr: OwnedWriteHalf,
    pub chunk_size: usize,
    pub bytes_out: u64,
    pub msgs_out: u64,
    buf: Vec<u8>,
}

impl WriteSide {
    pub fn new(wr: OwnedWriteHalf) -> Self {
        Self {
            wr,
            chunk_size: 128,
            bytes_out: 0,
            msgs_out: 0,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    pub fn queue(&mut self, csid: u32, t: u8, stream_id: u32, ts: u32, payload: &[u8]) {
        encode_message(
            &mut self.buf,
            csid,
            t,
            stream_id,
            ts,
            payload,
            self.chunk_size,
        );
        self.msgs_out += 1;
    }

    pub fn queue_command(&mut self, stream_id: u32, values: &[Value]) {
        let c = if stream_id == 0 {
            csid::COMMAND
        } else {
            csid::STREAM_COMMAND
        };
        self.queue(
            c,
            msg_type::COMMAND_AMF0,
            stream_id,
            0,
            &amf0::encode_all(values),
        );
    }

    pub fn queue_replies(&mut self, replies: &mut Vec<(u8, Vec<u8>)>) {
        for (t, p) in replies.drain(..) {
            self.queue(csid::PROTOCOL, t, 0, 0, &p);
        }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.wr.write_all(&self.buf).await?;
            self.bytes_out += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    pub async fn write_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.flush().await?;
        self.wr.write_all(b).await?;
        self.bytes_out += b.len() as u64;
        Ok(())
    }
}

/// Performs the client handshake on a fresh connection.
pub(crate) async fn client_handshake(
    rs: &mut ReadSide,
    ws: &mut WriteSide,
    complex: bool,
) -> Result<(), PublishError> {
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&make_c1(complex, 0));
    ws.write_raw(&c0c1).await?;
    let mut s0s1 = vec![0u8; 1 + HANDSHAKE_SIZE];
    read_exact(rs, &mut s0s1).await?;
    if s0s1[0] != 3 {
        return Err(PublishError::Handshake(format!(
            "server sent RTMP version {} (want 3)",
            s0s1[0]
        )));
    }
    ws.write_raw(&make_c2(&s0s1[1..])).await?;
    let mut s2 = vec![0u8; HANDSHAKE_SIZE];
    read_exact(rs, &mut s2).await?;
    Ok(())
}

async fn read_exact(rs: &mut ReadSide, buf: &mut [u8]) -> Result<(), PublishError> {
    match rs.rd.read_exact(buf).await {
        Ok(_) => {
            rs.bytes_in += buf.len() as u64;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(PublishError::Closed(
            "server closed the connection during the handshake".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Decodes an AMF0 command message (type 20, or 17 with its leading AMF3 marker byte).
pub fn decode_command(m: &Message) -> Option<Vec<Value>> {
    let body = match m.msg_type {
        msg_type::COMMAND_AMF0 | msg_type::DATA_AMF0 => &m.payload[..],
        msg_type::COMMAND_AMF3 | msg_type::DATA_AMF3 => m.payload.get(1..)?,
        _ => return None,
    };
    amf0::decode_all(body).ok()
}

/// `(code, level, description)` of an `onStatus` command.
pub fn status_of(values: &[Value]) -> Option<(String, String, String)> {
    if values.first()?.as_str()? != "onStatus" {
        return None;
    }
    let info = values.iter().skip(2).find(|v| v.get("code").is_some())?;
    let s = |k| {
        info.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Some((s("code"), s("level"), s("description")))
}

/// A client connection driven step by step, for tests that feed a server odd or
/// malformed input. Every read answers Acknowledgement windows and ping requests.
pub struct RawConn {
    rs: ReadSide,
    ws: WriteSide,
    next_txn: f64,
}

impl RawConn {
    pub async fn connect(addr: impl ToSocketAddrs) -> std::io::Result<Self> {
        Self::from_stream(TcpStream::connect(addr).await?)
    }

    /// Over a socket the test set up itself (e.g. with a tiny receive buffer, to be a
    /// peer that stops reading).
    pub fn from_stream(s: TcpStream) -> std::io::Result<Self> {
        s.set_nodelay(true)?;
        let (rd, wr) = s.into_split();
        Ok(Self {
            rs: ReadSide::new(rd),
            ws: WriteSide::new(wr),
            next_txn: 2.0,
        })
    }

    /// Simple handshake (C1 with a zero version).
    pub async fn handshake(&mut self) -> Result<(), PublishError> {
        client_handshake(&mut self.rs, &mut self.ws, false).await
    }

    /// Complex handshake (C1 with a Flash Player digest).
    pub async fn handshake_complex(&mut self) -> Result<(), PublishError> {
        client_handshake(&mut self.rs, &mut self.ws, true).await
    }

    pub async fn send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.ws.write_raw(b).await
    }

    /// Sends one message chunked at the current outgoing chunk size.
    pub async fn send_message(
        &mut self,
        csid: u32,
        msg_type: u8,
        stream_id: u32,
        timestamp: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        self.ws.queue(csid, msg_type, stream_id, timestamp, payload);
        self.ws.flush().await
    }

    /// Changes the outgoing chunk size of the encoder only, without telling the server
    /// (use [`RawConn::announce_chunk_size`] for the well-behaved version).
    pub fn set_chunk_size(&mut self, n: u32) {
        self.ws.chunk_size = n as usize;
    }

    /// Sends Set Chunk Size, then uses it.
    pub async fn announce_chunk_size(&mut self, n: u32) -> std::io::Result<()> {
        self.send_message(
            csid::PROTOCOL,
            msg_type::SET_CHUNK_SIZE,
            0,
            0,
            &n.to_be_bytes(),
        )
        .await?;
        self.set_chunk_size(n);
        Ok(())
    }

    /// Sends an AMF0 command on message stream 0: `name`, `txn`, then `values`.
    pub async fn command(&mut self, name: &str, txn: f64, values: &[Value]) -> std::io::Result<()> {
        self.command_on(0, name, txn, values).await
    }

    /// Sends an AMF0 command on message stream `stream_id`.
    pub async fn command_on(
        &mut self,
        stream_id: u32,
        name: &str,
        txn: f64,
        values: &[Value],
    ) -> std::io::Result<()> {
        let mut v = vec![Value::from(name), Value::Number(txn)];
        v.extend_from_slice(values);
        self.ws.queue_command(stream_id, &v);
        self.ws.flush().await
    }

    /// Next message from the server within `timeout` (`None`: timeout or closed).
    pub async fn read_message(&mut self, timeout: Duration) -> Option<Message> {
        let r = tokio::time::timeout(timeout, self.rs.read_message()).await;
        self.flush_replies().await;
        r.ok()?.ok()?
    }

    async fn flush_replies(&mut self) {
        if !self.rs.replies.is_empty() {
            self.ws.queue_replies(&mut self.rs.replies);
            let _ = self.ws.flush().await;
        }
    }

    /// Sends `connect` (txn 1) and waits for its `_result`; returns the reply values.
    pub async fn connect_app(
        &mut self,
        app: &str,
        tc_url: &str,
    ) -> Result<Vec<Value>, PublishError> {
        let cmd = connect_object(app, tc_url);
        self.command("connect", 1.0, &[cmd]).await?;
        wait_command(
            &mut self.rs,
            &mut self.ws,
            "connect",
            Duration::from_secs(10),
            Some(1.0),
            |v| is_result(v, 1.0),
        )
        .await
    }

    /// Sends `createStream` and returns the stream id from its `_result`.
    pub async fn create_stream(&mut self) -> Result<u32, PublishError> {
        let txn = self.txn();
        self.command("createStream", txn, &[Value::Null]).await?;
        let v = wait_command(
            &mut self.rs,
            &mut self.ws,
            "createStream",
            Duration::from_secs(10),
            Some(txn),
            |v| is_result(v, txn),
        )
        .await?;
        Ok(stream_id_of(&v))
    }

    /// Sends `publish(name, "live")` on `stream_id` and returns the code of the first
    /// `onStatus` that answers it (accepted or not).
    pub async fn publish(&mut self, stream_id: u32, name: &str) -> Result<String, PublishError> {
        let txn = self.txn();
        self.command_on(
            stream_id,
            "publish",
            txn,
            &[Value::Null, name.into(), "live".into()],
        )
        .await?;
        let v = wait_command(
            &mut self.rs,
            &mut self.ws,
            "publish",
            Duration::from_secs(10),
            Some(txn),
            |v| status_of(v).is_some(),
        )
        .await?;
        Ok(status_of(&v).map(|s| s.0).unwrap_or_default())
    }

    /// Code of the next `onStatus` within `timeout`.
    pub async fn read_status(&mut self, timeout: Duration) -> Option<String> {
        wait_command(&mut self.rs, &mut self.ws, "onStatus", timeout, None, |v| {
            status_of(v).is_some()
        })
        .await
        .ok()
        .and_then(|v| status_of(&v))
        .map(|s| s.0)
    }

    /// True when the server closes (or resets) the connection within `d`; whatever it
    /// sends meanwhile is read and dropped.
    pub async fn is_closed_within(&mut self, d: Duration) -> bool {
        let fut = async {
            let mut buf = vec![0u8; 16384];
            loop {
                match self.rs.rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(d, fut).await.is_ok()
    }

    /// Bytes received from the server so far.
    pub fn bytes_in(&self) -> u64 {
        self.rs.bytes_in
    }

    fn txn(&mut self) -> f64 {
        let t = self.next_txn;
        self.next_txn += 1.0;
        t
    }
}

/// Reads until a command matching `pred` arrives, answering acks and pings on the way.
/// `_error` for the awaited transaction becomes [`PublishError::CommandFailed`].
pub(crate) async fn wait_command(
    rs: &mut ReadSide,
    ws: &mut WriteSide,
    what: &str,
    timeout: Duration,
    txn: Option<f64>,
    pred: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>, PublishError> {
    let fut = async {
        loop {
            let m = rs.read_message().await?;
            if !rs.replies.is_empty() {
                ws.queue_replies(&mut rs.replies);
                ws.flush().await?;
            }
            let Some(m) = m else {
                return Err(PublishError::Closed(format!(
                    "server closed the connection while waiting for {what}"
                )));
            };
            let Some(v) = decode_command(&m) else {
                continue;
            };
            if pred(&v) {
                return Ok(v);
            }
            if v.first().and_then(Value::as_str) == Some("_error")
                && txn.is_some()
                && v.get(1).and_then(Value::as_number) == txn
            {
                let info = v.iter().skip(2).find(|x| x.get("code").is_some());
                let s = |k| {
                    info.and_then(|x| x.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                return Err(PublishError::CommandFailed {
                    command: what.to_string(),
                    code: s("code"),
                    description: s("description"),
                });
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| PublishError::Timeout(what.to_string()))?
}

pub(crate) fn connect_object(app: &str, tc_url: &str) -> Value {
    amf0::obj([
        ("app", app.into()),
        ("type", "nonprivate".into()),
        ("flashVer", "FMLE/3.0 (compatible; liverec-testkit)".into()),
        ("tcUrl", tc_url.into()),
    ])
}

pub(crate) fn is_result(v: &[Value], txn: f64) -> bool {
    v.first().and_then(Value::as_str) == Some("_result")
        && v.get(1).and_then(Value::as_number) == Some(txn)
}

pub(crate) fn stream_id_of(v: &[Value]) -> u32 {
    v.iter()
        .skip(2)
        .find_map(Value::as_number)
        .map_or(1, |n| n as u32)
}
