//! Message bodies above the chunk layer: AMF0 commands, data messages, aggregate messages
//! and protocol control payloads. Pure functions; the session decides what they mean.

use amf0::Value;
use bytes::{BufMut, Bytes, BytesMut};

/// An AMF0 command: name, transaction id, command object, further arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    pub transaction_id: f64,
    /// Usually an object (connect) or null (everything else); `Null` when absent.
    pub object: Value,
    pub args: Vec<Value>,
}

/// Why a command body is unusable.
#[derive(Debug)]
pub enum CommandError {
    Amf(amf0::Error),
    /// The first value is not a string (no command name).
    NoName,
    /// Fewer values than the command needs (A5; rml_rtmp's `drain(..3)` panicked here).
    TooFewValues {
        name: String,
    },
}

/// Decodes a command body (type 20, or type 17 after its leading format byte).
pub fn parse_command(body: &[u8], limits: amf0::Limits) -> Result<Command, CommandError> {
    let values = amf0::Decoder::new(body, limits)
        .decode_all()
        .map_err(CommandError::Amf)?;
    let mut it = values.into_iter();
    let name = match it.next() {
        Some(Value::String(s)) => s,
        _ => return Err(CommandError::NoName),
    };
    // Every command we act on has a transaction id; without one the body is truncated.
    let transaction_id = match it.next() {
        Some(Value::Number(n)) => n,
        Some(_) => 0.0,
        None => return Err(CommandError::TooFewValues { name }),
    };
    let object = it.next().unwrap_or(Value::Null);
    Ok(Command {
        name,
        transaction_id,
        object,
        args: it.collect(),
    })
}

/// Splits `name?query` at the first `?`. An empty query is `None`.
pub fn split_query(s: &str) -> (String, Option<String>) {
    match s.split_once('?') {
        Some((name, q)) if !q.is_empty() => (name.to_string(), Some(q.to_string())),
        Some((name, _)) => (name.to_string(), None),
        None => (s.to_string(), None),
    }
}

/// Joins the app's and the stream key's query strings with `&`.
pub fn join_queries(a: Option<&str>, b: Option<&str>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}&{b}")),
        (Some(q), None) | (None, Some(q)) => Some(q.to_string()),
        (None, None) => None,
    }
}

/// A number from the wire as a u32, without panicking or wrapping on NaN/negatives.
pub fn number_to_u32(n: f64) -> Option<u32> {
    (n.is_finite() && n >= 0.0 && n <= f64::from(u32::MAX)).then_some(n as u32)
}

/// For an AMF0 data message: the bytes from `onMetaData` onwards, if this is metadata.
/// `@setDataFrame` (what ffmpeg and OBS send) is stripped; a bare `@setDataFrame`, other
/// handlers (`onTextData`, `onCuePoint`, …) and undecodable names give `None` (A4: skip
/// the data message, keep publishing; rml_rtmp indexed `data[0]` here and panicked).
pub fn metadata_body(body: &Bytes, limits: amf0::Limits) -> Option<Bytes> {
    let mut dec = amf0::Decoder::new(body, limits);
    let first = dec.next_value().ok()?;
    match first.as_str()? {
        "onMetaData" => Some(body.clone()),
        "@setDataFrame" => {
            let start = dec.position();
            let second = dec.next_value().ok()?;
            (second.as_str()? == "onMetaData").then(|| body.slice(start..))
        }
        _ => None,
    }
}

/// One FLV tag inside an aggregate message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubTag {
    pub type_id: u8,
    pub timestamp: u32,
    pub body: Bytes,
}

/// Why an aggregate message could not be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateError {
    pub problem: &'static str,
    /// Offset of the sub-tag in the aggregate body.
    pub at: usize,
}

const FLV_TAG_HEADER: usize = 11;
const BACK_POINTER: usize = 4;

/// Splits an aggregate message (type 22) into its FLV tags. Each sub-tag's length is
/// checked against what is left of the body; bodies are slices of `body` (no copy).
/// Sub-tag timestamps are rebased: message ts + (sub-tag ts − first sub-tag ts).
pub fn split_aggregate(body: &Bytes, message_ts: u32) -> Result<Vec<SubTag>, AggregateError> {
    let mut tags = Vec::new();
    let mut pos = 0usize;
    let mut first_ts = None;
    while pos < body.len() {
        let Some(h) = body.get(pos..pos + FLV_TAG_HEADER) else {
            return Err(AggregateError {
                problem: "sub-tag header truncated",
                at: pos,
            });
        };
        let &[ty, l0, l1, l2, t0, t1, t2, t3, ..] = h else {
            return Err(AggregateError {
                problem: "sub-tag header truncated",
                at: pos,
            });
        };
        let len = u32::from_be_bytes([0, l0, l1, l2]) as usize;
        let ts = u32::from_be_bytes([t3, t0, t1, t2]);
        let start = pos + FLV_TAG_HEADER;
        let end = start + len;
        if end > body.len() {
            return Err(AggregateError {
                problem: "sub-tag length past the end of the message",
                at: pos,
            });
        }
        let first = *first_ts.get_or_insert(ts);
        tags.push(SubTag {
            type_id: ty & 0x1f,
            timestamp: message_ts.wrapping_add(ts.wrapping_sub(first)),
            body: body.slice(start..end),
        });
        // The back pointer after the last tag is sometimes left out; anything else short
        // is truncation.
        let next = end + BACK_POINTER;
        if next > body.len() {
            if end == body.len() {
                break;
            }
            return Err(AggregateError {
                problem: "back pointer truncated",
                at: pos,
            });
        }
        pos = next;
    }
    Ok(tags)
}

/// User control event types (RTMP 1.0 spec §7.1.7).
pub mod user_control {
    pub const STREAM_BEGIN: u16 = 0;
    pub const PING_REQUEST: u16 = 6;
    pub const PING_RESPONSE: u16 = 7;
}

pub fn user_control(event: u16, value: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(6);
    b.put_u16(event);
    b.put_u32(value);
    b.freeze()
}

pub fn u32_body(v: u32) -> Bytes {
    Bytes::copy_from_slice(&v.to_be_bytes())
}

/// Set Peer Bandwidth: window + limit type (0 hard, 1 soft, 2 dynamic).
pub fn peer_bandwidth(window: u32, limit_type: u8) -> Bytes {
    let mut b = BytesMut::with_capacity(5);
    b.put_u32(window);
    b.put_u8(limit_type);
    b.freeze()
}

/// `onStatus(0, null, {level, code, description})`.
pub fn on_status(level: &str, code: &str, description: &str) -> Bytes {
    Bytes::from(amf0::encode_all(&[
        "onStatus".into(),
        Value::Number(0.0),
        Value::Null,
        amf0::obj([
            ("level", level.into()),
            ("code", code.into()),
            ("description", description.into()),
        ]),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_splitting() {
        assert_eq!(split_query("test"), ("test".into(), None));
        assert_eq!(
            split_query("test?txSecret=a&txTime=5F"),
            ("test".into(), Some("txSecret=a&txTime=5F".into()))
        );
        assert_eq!(split_query("test?"), ("test".into(), None));
        assert_eq!(
            join_queries(Some("vhost=x"), Some("a=1")).as_deref(),
            Some("vhost=x&a=1")
        );
        assert_eq!(join_queries(None, Some("a=1")).as_deref(), Some("a=1"));
    }

    #[test]
    fn too_few_values() {
        let body = amf0::encode_all(&["connect".into()]);
        assert!(matches!(
            parse_command(&body, amf0::Limits::default()),
            Err(CommandError::TooFewValues { .. })
        ));
        assert!(matches!(
            parse_command(&[], amf0::Limits::default()),
            Err(CommandError::NoName)
        ));
    }

    #[test]
    fn number_conversion_is_total() {
        assert_eq!(number_to_u32(1.0), Some(1));
        assert_eq!(number_to_u32(-1.0), None);
        assert_eq!(number_to_u32(f64::NAN), None);
        assert_eq!(number_to_u32(1e300), None);
    }

    fn tag(ty: u8, ts: u32, body: &[u8]) -> Vec<u8> {
        let mut v = vec![ty];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        v.extend_from_slice(&ts.to_be_bytes()[1..]);
        v.push((ts >> 24) as u8);
        v.extend_from_slice(&[0, 0, 0]);
        v.extend_from_slice(body);
        v.extend_from_slice(&(11 + body.len() as u32).to_be_bytes());
        v
    }

    #[test]
    fn aggregate_split_and_rebase() {
        let mut b = tag(9, 5000, b"\x17\x01abc");
        b.extend(tag(8, 5020, b"\xaf\x01x"));
        let tags = split_aggregate(&Bytes::from(b), 100).unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!((tags[0].type_id, tags[0].timestamp), (9, 100));
        assert_eq!((tags[1].type_id, tags[1].timestamp), (8, 120));
        assert_eq!(&tags[1].body[..], b"\xaf\x01x");
    }

    #[test]
    fn aggregate_without_last_back_pointer() {
        let mut b = tag(9, 0, b"\x17\x01abc");
        b.truncate(b.len() - 4);
        assert_eq!(split_aggregate(&Bytes::from(b), 0).unwrap().len(), 1);
    }

    #[test]
    fn aggregate_sub_tag_past_end() {
        let mut b = tag(9, 0, b"\x17\x01abc");
        b[3] = 200; // declared length 200, 5 bytes present
        let e = split_aggregate(&Bytes::from(b), 0).unwrap_err();
        assert_eq!(e.at, 0);
        let e = split_aggregate(&Bytes::from_static(&[9, 0, 0]), 0).unwrap_err();
        assert_eq!(e.problem, "sub-tag header truncated");
    }

    #[test]
    fn metadata_detection() {
        let l = amf0::Limits::default();
        let meta = amf0::encode_all(&["onMetaData".into(), amf0::obj([("width", 640.0.into())])]);
        let mut sdf = amf0::encode_all(&["@setDataFrame".into()]);
        let alone = Bytes::from(sdf.clone());
        sdf.extend_from_slice(&meta);
        assert_eq!(metadata_body(&Bytes::from(sdf), l).unwrap(), &meta[..]);
        assert_eq!(
            metadata_body(&Bytes::from(meta.clone()), l).unwrap(),
            &meta[..]
        );
        assert_eq!(metadata_body(&alone, l), None);
        let other = Bytes::from(amf0::encode_all(&["onTextData".into()]));
        assert_eq!(metadata_body(&other, l), None);
        assert_eq!(metadata_body(&Bytes::new(), l), None);
    }
}
