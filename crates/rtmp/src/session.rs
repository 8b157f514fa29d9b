//! The server session: handshake, then chunk messages through the publish state machine.

use std::collections::VecDeque;

use amf0::Value;
use bytes::{Bytes, BytesMut};

use crate::chunk::{msg_type, ChunkDecoder, ChunkEncoder, Message};
use crate::error::SessionError;
use crate::handshake::Handshake;
use crate::message::{self, user_control, Command, CommandError};
use crate::{ConnectInfo, PublishRequest, ServerConfig, ServerEvent};

/// Chunk stream ids we send on.
const CSID_CONTROL: u32 = 2;
const CSID_COMMAND: u32 = 3;
const CSID_STATUS: u32 = 5;

/// What our `_result` for connect says we are; clients only log it.
const FMS_VER: &str = "FMS/3,0,1,123";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PublishState {
    /// Created by createStream, nothing published.
    Idle,
    /// `publish` received, PublishRequested emitted, the daemon has not answered yet.
    Requested,
    Publishing,
    Rejected,
    /// Unpublished (the Unpublished event was emitted) or deleted.
    Ended,
}

#[derive(Debug)]
struct MessageStream {
    id: u32,
    state: PublishState,
    /// The stream key without query, to match FCUnpublish(name).
    name: String,
}

#[derive(Debug)]
struct Connection {
    app: String,
    app_query: Option<String>,
    tc_url: Option<String>,
}

pub struct ServerSession {
    config: ServerConfig,
    handshake: Handshake,
    handshake_bytes: u64,
    decoder: ChunkDecoder,
    encoder: ChunkEncoder,
    out: BytesMut,
    events: VecDeque<ServerEvent>,
    connection: Option<Connection>,
    streams: Vec<MessageStream>,
    streams_created: u32,
    published: bool,
    /// Window from the peer's Window Acknowledgement Size; 0 = never sent.
    peer_window: u32,
    last_ack_at: u64,
    dropped_empty: u64,
    dropped_media: u64,
    failed: bool,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession")
            .field("handshake_done", &self.handshake.is_done())
            .field("bytes_received", &self.bytes_received())
            .field("streams", &self.streams)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl ServerSession {
    pub fn new(config: ServerConfig) -> Self {
        let decoder = ChunkDecoder::new(
            config.limits.max_message_bytes,
            config.limits.max_chunk_streams,
        );
        Self {
            config,
            handshake: Handshake::new(),
            handshake_bytes: 0,
            decoder,
            encoder: ChunkEncoder::new(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            connection: None,
            streams: Vec::new(),
            streams_created: 0,
            published: false,
            peer_window: 0,
            last_ack_at: 0,
            dropped_empty: 0,
            dropped_media: 0,
            failed: false,
        }
    }

    /// Consumes as many whole handshake parts / chunks from `buf` as are complete; leaves a
    /// partial chunk in `buf`. After an error the session is dead: close the connection.
    pub fn handle_input(&mut self, buf: &mut BytesMut) -> Result<(), SessionError> {
        if self.failed {
            return Err(SessionError::Failed);
        }
        let r = self.handle_input_inner(buf);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn handle_input_inner(&mut self, buf: &mut BytesMut) -> Result<(), SessionError> {
        if !self.handshake.is_done() {
            let n = self.handshake.handle(buf, &mut self.out)?;
            self.handshake_bytes += n as u64;
            if !self.handshake.is_done() {
                return Ok(());
            }
            self.decoder = ChunkDecoder::new(
                self.config.limits.max_message_bytes,
                self.config.limits.max_chunk_streams,
            )
            .with_offset(self.handshake_bytes);
        }
        while let Some(msg) = self.decoder.decode(buf)? {
            self.handle_message(msg)?;
            self.maybe_ack();
        }
        self.maybe_ack();
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Bytes to write to the socket, in order (handshake replies, control messages,
    /// command replies).
    pub fn take_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }

    /// The daemon accepts a `PublishRequested`: StreamBegin + onStatus Publish.Start.
    /// Ignored unless that stream has a pending request.
    pub fn accept_publish(&mut self, stream_id: u32) {
        let Some(s) = self.stream_mut(stream_id) else {
            return;
        };
        if s.state != PublishState::Requested {
            return;
        }
        s.state = PublishState::Publishing;
        self.send(
            CSID_CONTROL,
            msg_type::USER_CONTROL,
            0,
            message::user_control(user_control::STREAM_BEGIN, stream_id),
        );
        self.send(
            CSID_STATUS,
            msg_type::COMMAND_AMF0,
            stream_id,
            message::on_status("status", "NetStream.Publish.Start", "Start publishing"),
        );
    }

    /// The daemon refuses a `PublishRequested`: onStatus level `error` with `code` (e.g.
    /// `NetStream.Publish.BadName`). The daemon then closes the connection.
    pub fn reject_publish(&mut self, stream_id: u32, code: &str, description: &str) {
        let Some(s) = self.stream_mut(stream_id) else {
            return;
        };
        if s.state != PublishState::Requested {
            return;
        }
        s.state = PublishState::Rejected;
        self.send(
            CSID_STATUS,
            msg_type::COMMAND_AMF0,
            stream_id,
            message::on_status("error", code, description),
        );
    }

    /// Total bytes consumed from the connection (handshake included).
    pub fn bytes_received(&self) -> u64 {
        if self.handshake.is_done() {
            self.decoder.offset()
        } else {
            self.handshake_bytes
        }
    }

    pub fn is_handshake_done(&self) -> bool {
        self.handshake.is_done()
    }

    /// Audio/video messages with an empty body that were dropped (M1).
    pub fn dropped_empty_media(&self) -> u64 {
        self.dropped_empty
    }

    /// Audio/video/data messages dropped because their stream was not publishing.
    pub fn dropped_unpublished_media(&self) -> u64 {
        self.dropped_media
    }

    fn stream_mut(&mut self, id: u32) -> Option<&mut MessageStream> {
        self.streams.iter_mut().find(|s| s.id == id)
    }

    /// Whether media on this message stream is delivered. A stream whose publish is still
    /// awaiting the daemon's answer counts: events are ordered, so the daemon handles
    /// PublishRequested before the media behind it, and a client that does not wait for
    /// onStatus (some hardware encoders) loses nothing.
    fn is_publishing(&self, id: u32) -> bool {
        self.streams.iter().any(|s| {
            s.id == id && matches!(s.state, PublishState::Requested | PublishState::Publishing)
        })
    }

    fn send(&mut self, csid: u32, type_id: u8, stream_id: u32, payload: Bytes) {
        let msg = Message {
            csid,
            timestamp: 0,
            type_id,
            stream_id,
            payload,
        };
        // Our own messages are small and use valid csids, so this cannot fail.
        let _ = self.encoder.encode(&msg, &mut self.out);
    }

    /// We acknowledge with the TOTAL byte count each time a window has passed since the
    /// last ack (rml_rtmp sent the bytes since the last ack, crates.md §1a item 5).
    fn maybe_ack(&mut self) {
        if self.peer_window == 0 {
            return;
        }
        let total = self.bytes_received();
        if total.saturating_sub(self.last_ack_at) >= u64::from(self.peer_window) {
            self.last_ack_at = total;
            // The sequence number is 32 bits and wraps after 4 GiB, as the spec says.
            self.send(
                CSID_CONTROL,
                msg_type::ACKNOWLEDGEMENT,
                0,
                message::u32_body(total as u32),
            );
        }
    }

    fn offset(&self) -> u64 {
        self.decoder.offset()
    }

    fn handle_message(&mut self, msg: Message) -> Result<(), SessionError> {
        match msg.type_id {
            // Set Chunk Size and Abort were applied by the decoder; an Acknowledgement from
            // the peer needs nothing from us; Set Peer Bandwidth is accepted and ignored
            // (we never send enough to matter).
            msg_type::SET_CHUNK_SIZE
            | msg_type::ABORT
            | msg_type::ACKNOWLEDGEMENT
            | msg_type::SET_PEER_BANDWIDTH => {}
            msg_type::WINDOW_ACK_SIZE => {
                if let [a, b, c, d, ..] = msg.payload[..] {
                    self.peer_window = u32::from_be_bytes([a, b, c, d]);
                }
            }
            msg_type::USER_CONTROL => {
                if let [e0, e1, a, b, c, d, ..] = msg.payload[..] {
                    if u16::from_be_bytes([e0, e1]) == user_control::PING_REQUEST {
                        self.send(
                            CSID_CONTROL,
                            msg_type::USER_CONTROL,
                            0,
                            message::user_control(
                                user_control::PING_RESPONSE,
                                u32::from_be_bytes([a, b, c, d]),
                            ),
                        );
                    }
                }
            }
            msg_type::AUDIO | msg_type::VIDEO => {
                self.media(msg.type_id, msg.stream_id, msg.timestamp, msg.payload);
            }
            msg_type::DATA_AMF0 => self.data(msg.stream_id, msg.timestamp, msg.payload),
            // AMF3 data and commands from Flash-era clients: a 0x00 format byte, then AMF0.
            // Anything else in AMF3 falls through to "ignored".
            msg_type::DATA_AMF3 if msg.payload.first() == Some(&0) => {
                self.data(msg.stream_id, msg.timestamp, msg.payload.slice(1..));
            }
            msg_type::COMMAND_AMF3 if msg.payload.first() == Some(&0) => {
                self.command(&msg, msg.payload.slice(1..))?;
            }
            msg_type::COMMAND_AMF0 => self.command(&msg, msg.payload.clone())?,
            msg_type::AGGREGATE => self.aggregate(msg)?,
            // Unknown and undocumented types: ignored (gortmplib commit 9781278).
            _ => {}
        }
        Ok(())
    }

    fn media(&mut self, type_id: u8, stream_id: u32, timestamp: u32, body: Bytes) {
        if !self.is_publishing(stream_id) {
            self.dropped_media += 1;
            return;
        }
        // M1 (brpc #3366, gortmplib 1a1899d): an empty body is dropped here so no layer
        // above ever computes `len - 1` on it.
        if body.is_empty() {
            self.dropped_empty += 1;
            return;
        }
        let ev = if type_id == msg_type::AUDIO {
            ServerEvent::Audio {
                stream_id,
                timestamp,
                body,
            }
        } else {
            ServerEvent::Video {
                stream_id,
                timestamp,
                body,
            }
        };
        self.events.push_back(ev);
    }

    fn data(&mut self, stream_id: u32, timestamp: u32, body: Bytes) {
        if !self.is_publishing(stream_id) {
            self.dropped_media += 1;
            return;
        }
        if let Some(body) = message::metadata_body(&body, self.config.limits.amf) {
            self.events.push_back(ServerEvent::Metadata {
                stream_id,
                timestamp,
                body,
            });
        }
    }

    fn aggregate(&mut self, msg: Message) -> Result<(), SessionError> {
        let tags = message::split_aggregate(&msg.payload, msg.timestamp).map_err(|e| {
            SessionError::MalformedAggregate {
                stream_id: msg.stream_id,
                problem: e.problem,
                at: e.at,
                offset: self.offset(),
            }
        })?;
        for t in tags {
            match t.type_id {
                msg_type::AUDIO | msg_type::VIDEO => {
                    self.media(t.type_id, msg.stream_id, t.timestamp, t.body)
                }
                msg_type::DATA_AMF0 => self.data(msg.stream_id, t.timestamp, t.body),
                _ => {}
            }
        }
        Ok(())
    }

    fn command(&mut self, msg: &Message, body: Bytes) -> Result<(), SessionError> {
        let offset = self.offset();
        let cmd = match message::parse_command(&body, self.config.limits.amf) {
            Ok(c) => c,
            Err(CommandError::Amf(source)) => {
                return Err(SessionError::Amf {
                    type_id: msg.type_id,
                    offset,
                    source,
                })
            }
            // Not a command we could act on (no name): nothing to answer.
            Err(CommandError::NoName) => return Ok(()),
            Err(CommandError::TooFewValues { name }) => {
                return Err(SessionError::BadCommand {
                    command: name,
                    problem: "too few values (no transaction id)",
                    offset,
                })
            }
        };
        match cmd.name.as_str() {
            "connect" => self.on_connect(cmd, offset),
            "createStream" => self.on_create_stream(cmd, offset),
            "publish" => self.on_publish(cmd, msg.stream_id, offset),
            "FCUnpublish" => {
                // FCUnpublish(txn, null, name) comes on stream 0: find the stream by name,
                // or the only one that is publishing.
                let name = cmd.args.first().and_then(Value::as_str).map(|s| {
                    let (n, _) = message::split_query(s);
                    n
                });
                let id = self
                    .streams
                    .iter()
                    .filter(|s| {
                        matches!(s.state, PublishState::Requested | PublishState::Publishing)
                    })
                    .find(|s| name.as_ref().is_none_or(|n| *n == s.name))
                    .map(|s| s.id);
                if let Some(id) = id {
                    self.unpublish(id, PublishState::Ended);
                }
                Ok(())
            }
            "deleteStream" => {
                let id = cmd
                    .args
                    .first()
                    .and_then(Value::as_number)
                    .and_then(message::number_to_u32);
                // GStreamer's rtmp2sink sends deleteStream without a usable stream id
                // argument; the message's own stream id then says which stream ends (and
                // a publisher has only one). Ending a publish must never be an error.
                let id = id.or((msg.stream_id != 0).then_some(msg.stream_id));
                match id {
                    Some(id) => self.unpublish(id, PublishState::Ended),
                    None => {
                        let ids: Vec<u32> = self.streams.iter().map(|s| s.id).collect();
                        for id in ids {
                            self.unpublish(id, PublishState::Ended);
                        }
                    }
                }
                Ok(())
            }
            "closeStream" => {
                self.unpublish(msg.stream_id, PublishState::Ended);
                Ok(())
            }
            // releaseStream and FCPublish need no answer (ffmpeg, OBS and rtmp2sink do not
            // wait for one); everything else (_checkbw, getStreamLength, play, …) is ignored.
            _ => Ok(()),
        }
    }

    /// Emits Unpublished at most once per publish.
    fn unpublish(&mut self, id: u32, to: PublishState) {
        if let Some(s) = self.stream_mut(id) {
            let was = s.state;
            s.state = to;
            if matches!(was, PublishState::Requested | PublishState::Publishing) {
                self.events
                    .push_back(ServerEvent::Unpublished { stream_id: id });
            }
        }
    }

    fn on_connect(&mut self, cmd: Command, offset: u64) -> Result<(), SessionError> {
        if self.connection.is_some() {
            return Err(SessionError::CommandOutOfOrder {
                command: cmd.name,
                reason: "twice on one connection",
                offset,
            });
        }
        let obj = &cmd.object;
        if !matches!(obj, Value::Object(_) | Value::EcmaArray(_)) {
            return Err(SessionError::BadCommand {
                command: cmd.name,
                problem: "no command object",
                offset,
            });
        }
        let Some(app_raw) = obj.get("app").and_then(Value::as_str) else {
            return Err(SessionError::BadCommand {
                command: cmd.name,
                problem: "command object has no app",
                offset,
            });
        };
        // `rtmp://h/live?vhost=x/key`: librtmp and ffmpeg put the query into app.
        let (app, app_query) = message::split_query(app_raw);
        let tc_url = obj.get("tcUrl").and_then(Value::as_str).map(str::to_string);
        let flash_ver = obj
            .get("flashVer")
            .and_then(Value::as_str)
            .map(str::to_string);
        let object_encoding = obj
            .get("objectEncoding")
            .and_then(Value::as_number)
            .unwrap_or(0.0);

        self.send(
            CSID_CONTROL,
            msg_type::WINDOW_ACK_SIZE,
            0,
            message::u32_body(self.config.window_ack_size),
        );
        // Limit type 2 = dynamic.
        self.send(
            CSID_CONTROL,
            msg_type::SET_PEER_BANDWIDTH,
            0,
            message::peer_bandwidth(self.config.window_ack_size, 2),
        );
        let out_chunk = self
            .config
            .out_chunk_size
            .clamp(1, crate::chunk::MAX_CHUNK_SIZE);
        self.send(
            CSID_CONTROL,
            msg_type::SET_CHUNK_SIZE,
            0,
            message::u32_body(out_chunk),
        );
        self.encoder.set_chunk_size(out_chunk);
        let result = amf0::encode_all(&[
            "_result".into(),
            Value::Number(cmd.transaction_id),
            amf0::obj([
                ("fmsVer", FMS_VER.into()),
                ("capabilities", Value::Number(31.0)),
            ]),
            amf0::obj([
                ("level", "status".into()),
                ("code", "NetConnection.Connect.Success".into()),
                ("description", "Connection succeeded.".into()),
                ("objectEncoding", Value::Number(object_encoding)),
            ]),
        ]);
        self.send(CSID_COMMAND, msg_type::COMMAND_AMF0, 0, Bytes::from(result));

        self.events.push_back(ServerEvent::Connected(ConnectInfo {
            app: app.clone(),
            app_query: app_query.clone(),
            tc_url: tc_url.clone(),
            flash_ver,
        }));
        self.connection = Some(Connection {
            app,
            app_query,
            tc_url,
        });
        Ok(())
    }

    fn on_create_stream(&mut self, cmd: Command, offset: u64) -> Result<(), SessionError> {
        // A6 (rust-media-libs #39): createStream before connect, or without bound, lets an
        // unauthenticated client allocate streams until OOM.
        if self.connection.is_none() {
            return Err(SessionError::CommandOutOfOrder {
                command: cmd.name,
                reason: "before connect",
                offset,
            });
        }
        if self.streams_created >= self.config.limits.max_message_streams {
            return Err(SessionError::TooManyMessageStreams {
                max: self.config.limits.max_message_streams,
                offset,
            });
        }
        self.streams_created += 1;
        let id = self.streams_created;
        self.streams.push(MessageStream {
            id,
            state: PublishState::Idle,
            name: String::new(),
        });
        let result = amf0::encode_all(&[
            "_result".into(),
            Value::Number(cmd.transaction_id),
            Value::Null,
            Value::Number(f64::from(id)),
        ]);
        self.send(CSID_COMMAND, msg_type::COMMAND_AMF0, 0, Bytes::from(result));
        Ok(())
    }

    fn on_publish(
        &mut self,
        cmd: Command,
        stream_id: u32,
        offset: u64,
    ) -> Result<(), SessionError> {
        let Some(conn) = &self.connection else {
            return Err(SessionError::CommandOutOfOrder {
                command: cmd.name,
                reason: "before connect",
                offset,
            });
        };
        if self.published {
            return Err(SessionError::PublishTwice { stream_id, offset });
        }
        let Some(raw_name) = cmd.args.first().and_then(Value::as_str) else {
            return Err(SessionError::BadCommand {
                command: cmd.name,
                problem: "no stream name",
                offset,
            });
        };
        let publish_type = cmd
            .args
            .get(1)
            .and_then(Value::as_str)
            .unwrap_or("live")
            .to_string();
        let (name, stream_query) = message::split_query(raw_name);
        let request = PublishRequest {
            stream_id,
            app: conn.app.clone(),
            tc_url: conn.tc_url.clone(),
            name: name.clone(),
            query: message::join_queries(conn.app_query.as_deref(), stream_query.as_deref()),
            publish_type,
        };
        let Some(s) = self.stream_mut(stream_id) else {
            return Err(SessionError::CommandOutOfOrder {
                command: cmd.name,
                reason: "on a message stream that createStream did not create",
                offset,
            });
        };
        s.state = PublishState::Requested;
        s.name = name;
        self.published = true;
        self.events
            .push_back(ServerEvent::PublishRequested(request));
        Ok(())
    }
}
