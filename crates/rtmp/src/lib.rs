//! Sans-IO RTMP server session for publishers (ffmpeg, OBS/librtmp, GStreamer rtmp2sink).
//!
//! Bytes in (`handle_input`), events and bytes out (`poll_event`, `take_output`); no
//! sockets, clocks or tasks. This is the daemon's front door on the internet, so every
//! piece of state is bounded by [`Limits`] and nothing is allocated by a length read from
//! the wire before it is checked (SPEC R-SEC-2, reliability.md §0.1–0.4, §1.8).
//!
//! ```text
//! handshake ─► chunk::ChunkDecoder (per-csid reassembly) ─► session (commands, media) ─► ServerEvent
//!                                    chunk::ChunkEncoder ◄─ replies ─┘
//! ```
//!
//! The daemon pumps it like this (any error: log it and close the connection):
//!
//! ```
//! use liverec_rtmp::{ServerConfig, ServerEvent, ServerSession};
//!
//! let mut session = ServerSession::new(ServerConfig::default());
//! let mut buf = bytes::BytesMut::from(&[3u8; 1537][..]); // C0 + C1 as read from the socket
//! session.handle_input(&mut buf)?;
//! while let Some(ev) = session.poll_event() {
//!     if let ServerEvent::PublishRequested(req) = ev {
//!         session.accept_publish(req.stream_id); // after auth, name checks, duplicates
//!     }
//! }
//! while let Some(bytes) = session.take_output() {
//!     assert_eq!(bytes.len(), 1 + 2 * 1536); // S0 S1 S2; write it to the socket
//! }
//! # Ok::<(), liverec_rtmp::SessionError>(())
//! ```
//!
//! Fuzzing: `cd crates/rtmp/fuzz && cargo +nightly fuzz run session` (or `chunk`).

pub mod chunk;
mod error;
pub mod handshake;
pub mod message;
mod session;

pub use error::SessionError;
pub use session::ServerSession;

/// Per-connection limits (R-SEC-2).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message accepted, checked on the chunk header (C4).
    pub max_message_bytes: usize,
    /// Distinct chunk stream ids per connection (C1).
    pub max_chunk_streams: usize,
    /// createStream calls per connection (A6).
    pub max_message_streams: u32,
    /// AMF0 nesting depth and value count per command (A2, A3).
    pub amf: amf0::Limits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 8 * 1024 * 1024,
            max_chunk_streams: 64,
            max_message_streams: 2,
            amf: amf0::Limits::default(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    pub limits: Limits,
    /// Chunk size we announce and write with after `connect`.
    pub out_chunk_size: u32,
    /// Window Acknowledgement Size and Set Peer Bandwidth we send after `connect`.
    pub window_ack_size: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            out_chunk_size: 4096,
            window_ack_size: 2_500_000,
        }
    }
}

/// From the `connect` command object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    /// The application path without its query string.
    pub app: String,
    /// The query string carried in `app` (`live?vhost=x`).
    pub app_query: Option<String>,
    /// Absent when the client does not send it.
    pub tc_url: Option<String>,
    pub flash_ver: Option<String>,
}

/// A `publish` command; answer with `accept_publish` or `reject_publish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// Message stream id the publisher will send media on.
    pub stream_id: u32,
    pub app: String,
    pub tc_url: Option<String>,
    /// The stream key without its query string.
    pub name: String,
    /// The app's and the stream key's query strings joined with `&`.
    pub query: Option<String>,
    /// "live", "record" or "append" as sent (default "live").
    pub publish_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    Connected(ConnectInfo),
    PublishRequested(PublishRequest),
    /// AMF0 bytes from `onMetaData` onwards (`@setDataFrame` stripped).
    Metadata {
        stream_id: u32,
        timestamp: u32,
        body: bytes::Bytes,
    },
    /// An FLV audio tag body (never empty).
    Audio {
        stream_id: u32,
        timestamp: u32,
        body: bytes::Bytes,
    },
    /// An FLV video tag body (never empty).
    Video {
        stream_id: u32,
        timestamp: u32,
        body: bytes::Bytes,
    },
    /// FCUnpublish / deleteStream / closeStream; at most once per publish.
    Unpublished {
        stream_id: u32,
    },
}
