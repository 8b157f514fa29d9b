//! Dev-only test support for liverec: the committed media fixtures, an independent RTMP
//! publisher (the other side of our server), a raw RTMP client for malformed-input tests,
//! and checkers of produced files (ffprobe and our own FLV reader).
//!
//! - [`publisher`]: [`publish_flv`], [`publish_flv_on`], [`publish_many`], [`PublishOptions`], [`PublishStats`]
//! - [`conn::RawConn`]: step-by-step client
//! - [`eflv`]: MP4 → Enhanced RTMP FLV (the HEVC and AV1 fixtures)
//! - [`probe`]: [`require_tool`], [`ffprobe_errors`], [`probe_packets`],
//!   [`probe_packet_hashes`], [`probe_codecs`], [`flv_summary`], [`fixture`],
//!   [`fixture_tags`], [`frame_hashes_flv`]
//! - [`chunk`], [`handshake`], [`url`]: the client-side protocol pieces
//! - [`fuzzish`]: seeded byte mutations for the repair scanners' tests
//! - [`webhook`]: a scriptable HTTP webhook receiver ([`webhook::Receiver`]) and independent
//!   signature verifiers ([`webhook::md5_sign`], [`webhook::verify_standard_webhook`])

pub mod chunk;
pub mod conn;
pub mod eflv;
pub mod fuzzish;
pub mod handshake;
pub mod probe;
pub mod publisher;
pub mod s3;
pub mod url;
pub mod webhook;

pub use conn::RawConn;
pub use probe::{
    ffprobe_errors, fixture, fixture_tags, flv_summary, frame_hashes_flv, media_duration,
    probe_codecs, probe_duration, probe_packet_hashes, probe_packets, require_tool, FlvSummary,
    HashedPacket, ProbePacket, TagInfo, TagKind,
};
pub use publisher::{
    publish_flv, publish_flv_on, publish_many, publish_many_prefixed, PublishOptions, PublishStats,
};
pub use url::{RtmpUrl, UrlError};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PublishError {
    #[error(transparent)]
    BadUrl(#[from] UrlError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("protocol error from the server: {0}")]
    Protocol(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("{command} failed: {code} {description}")]
    CommandFailed {
        command: String,
        code: String,
        description: String,
    },
    #[error("publish rejected: {code} ({description})")]
    Rejected { code: String, description: String },
    #[error("publisher task failed: {0}")]
    Task(String),
}
