//! Errors of an RTMP server session. Each one says where on the connection it happened
//! (`offset` = bytes received before the offending chunk or message) so that a log line
//! is enough to reproduce it. Any error means: close this connection.

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum SessionError {
    /// H1: the first byte was not RTMP version 3.
    #[error("C0 version byte 0x{version:02x} is not RTMP version 3 (looks like {looks_like})")]
    BadVersion {
        version: u8,
        looks_like: &'static str,
    },
    /// C2: the first chunk on a chunk stream must carry a full (fmt 0) header.
    #[error("chunk stream {csid} is fresh but its first chunk has fmt {fmt} (must be 0) at byte {offset}")]
    FreshChunkStream { csid: u32, fmt: u8, offset: u64 },
    /// C3: a new message header while the previous message on that csid is incomplete.
    #[error("fmt {fmt} header on chunk stream {csid} while a message is half-assembled, at byte {offset}")]
    HeaderMidMessage { csid: u32, fmt: u8, offset: u64 },
    /// C1: too many distinct chunk streams on one connection.
    #[error("chunk stream {csid} would exceed the limit of {max} chunk streams, at byte {offset}")]
    TooManyChunkStreams { csid: u32, max: usize, offset: u64 },
    /// C4: declared message length above the configured maximum.
    #[error("message on chunk stream {csid} declares {len} bytes, above the limit of {max}, at byte {offset}")]
    MessageTooLarge {
        csid: u32,
        len: usize,
        max: usize,
        offset: u64,
    },
    /// Too many bytes held in partly assembled messages across all chunk streams.
    #[error("partial messages hold {buffered} bytes (limit {max}) when chunk stream {csid} adds more, at byte {offset}")]
    TooMuchBuffered {
        csid: u32,
        buffered: usize,
        max: usize,
        offset: u64,
    },
    /// C5/C7: Set Chunk Size of 0 or with the most significant bit set.
    #[error("invalid Set Chunk Size {size} (must be 1..=2147483647) at byte {offset}")]
    InvalidChunkSize { size: u32, offset: u64 },
    #[error("protocol control message type {type_id} has only {len} bytes, at byte {offset}")]
    TruncatedControl {
        type_id: u8,
        len: usize,
        offset: u64,
    },
    /// A1–A3, A5: the AMF0 body of a command could not be decoded within the limits.
    #[error("AMF0 command (message type {type_id}) at byte {offset}: {source}")]
    Amf {
        type_id: u8,
        offset: u64,
        #[source]
        source: amf0::Error,
    },
    /// A5: a command without the values it needs.
    #[error("command {command:?} at byte {offset}: {problem}")]
    BadCommand {
        command: String,
        problem: &'static str,
        offset: u64,
    },
    /// A6: a command that the publish state machine does not allow now.
    #[error("command {command:?} not allowed {reason}, at byte {offset}")]
    CommandOutOfOrder {
        command: String,
        reason: &'static str,
        offset: u64,
    },
    /// A6: createStream beyond the per-connection cap.
    #[error("createStream would exceed {max} message streams per connection, at byte {offset}")]
    TooManyMessageStreams { max: u32, offset: u64 },
    /// A second publish on one connection.
    #[error("second publish (stream {stream_id}) on one connection, at byte {offset}")]
    PublishTwice { stream_id: u32, offset: u64 },
    /// An aggregate message whose FLV sub-tags do not add up.
    #[error("malformed aggregate message on stream {stream_id} at byte {offset}: {problem} (sub-tag at body offset {at})")]
    MalformedAggregate {
        stream_id: u32,
        problem: &'static str,
        at: usize,
        offset: u64,
    },
    /// `handle_input` called again after an error.
    #[error("session already failed; close the connection")]
    Failed,
}
