//! AMF0 (Action Message Format 0) values, as used by RTMP commands and FLV `onMetaData`.
//!
//! Hand-written because decoding must be bounded: every length is checked against the
//! remaining input before anything is allocated (CVE-2012-4750: a 0xFFFF string length
//! with a 7-byte body), nesting is capped (reliability.md A2: 100 000-deep objects
//! overflow the stack and abort the process), and the total number of values per message
//! is capped (A3: an ECMA count of 0xFFFFFFFF must not reserve anything).

use thiserror::Error;

/// Marker bytes from the AMF0 specification, section 2.1.
mod marker {
    pub const NUMBER: u8 = 0x00;
    pub const BOOLEAN: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const OBJECT: u8 = 0x03;
    pub const NULL: u8 = 0x05;
    pub const UNDEFINED: u8 = 0x06;
    pub const ECMA_ARRAY: u8 = 0x08;
    pub const OBJECT_END: u8 = 0x09;
    pub const STRICT_ARRAY: u8 = 0x0a;
    pub const DATE: u8 = 0x0b;
    pub const LONG_STRING: u8 = 0x0c;
    pub const UNSUPPORTED: u8 = 0x0d;
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Boolean(bool),
    String(String),
    Object(Vec<(String, Value)>),
    Null,
    Undefined,
    EcmaArray(Vec<(String, Value)>),
    StrictArray(Vec<Value>),
    /// Milliseconds since the epoch; the time-zone field is ignored, as the spec asks.
    Date(f64),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// Property lookup on an object or ECMA array.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(props) | Value::EcmaArray(props) => {
                props.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error("AMF0 truncated at byte {offset}: needs {need} more bytes")]
    Truncated { offset: usize, need: usize },
    #[error("AMF0 nesting deeper than {max} at byte {offset}")]
    TooDeep { offset: usize, max: usize },
    #[error("AMF0 message has more than {max} values (at byte {offset})")]
    TooManyValues { offset: usize, max: usize },
    #[error("AMF0 marker 0x{marker:02x} at byte {offset} is not supported")]
    UnsupportedMarker { marker: u8, offset: usize },
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum nesting of objects and arrays.
    pub max_depth: usize,
    /// Maximum number of values (including nested ones) in one decode call.
    pub max_values: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_values: 4096,
        }
    }
}

/// Decodes every value in `buf` with the default limits.
pub fn decode_all(buf: &[u8]) -> Result<Vec<Value>, Error> {
    Decoder::new(buf, Limits::default()).decode_all()
}

pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: Limits,
    values: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8], limits: Limits) -> Self {
        Self {
            buf,
            pos: 0,
            limits,
            values: 0,
        }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn decode_all(mut self) -> Result<Vec<Value>, Error> {
        let mut out = Vec::new();
        while !self.is_empty() {
            out.push(self.next_value()?);
        }
        Ok(out)
    }

    pub fn next_value(&mut self) -> Result<Value, Error> {
        self.value(0)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::Truncated {
                offset: self.pos,
                need: n - (self.buf.len() - self.pos.min(self.buf.len())),
            }),
        }
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self) -> Result<f64, Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_be_bytes(a))
    }

    fn string_body(&mut self, len: usize) -> Result<String, Error> {
        // `take` checks the declared length against what is really there before we copy.
        let b = self.take(len)?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    fn short_string(&mut self) -> Result<String, Error> {
        let len = usize::from(self.u16()?);
        self.string_body(len)
    }

    fn count_value(&mut self) -> Result<(), Error> {
        self.values += 1;
        if self.values > self.limits.max_values {
            return Err(Error::TooManyValues {
                offset: self.pos,
                max: self.limits.max_values,
            });
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        self.count_value()?;
        let offset = self.pos;
        let m = self.u8()?;
        Ok(match m {
            marker::NUMBER => Value::Number(self.f64()?),
            marker::BOOLEAN => Value::Boolean(self.u8()? != 0),
            marker::STRING => Value::String(self.short_string()?),
            marker::LONG_STRING => {
                let len = self.u32()? as usize;
                Value::String(self.string_body(len)?)
            }
            marker::NULL => Value::Null,
            marker::UNDEFINED | marker::UNSUPPORTED => Value::Undefined,
            marker::DATE => {
                let ms = self.f64()?;
                self.u16()?;
                Value::Date(ms)
            }
            marker::OBJECT => Value::Object(self.properties(depth + 1, offset)?),
            marker::ECMA_ARRAY => {
                // The count is only a hint and is often wrong (ffmpeg writes it right,
                // others do not); the object-end marker is authoritative. Never reserve by it.
                self.u32()?;
                Value::EcmaArray(self.properties(depth + 1, offset)?)
            }
            marker::STRICT_ARRAY => {
                let count = self.u32()? as usize;
                self.check_depth(depth + 1, offset)?;
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Value::StrictArray(items)
            }
            marker => return Err(Error::UnsupportedMarker { marker, offset }),
        })
    }

    fn check_depth(&self, depth: usize, offset: usize) -> Result<(), Error> {
        if depth > self.limits.max_depth {
            return Err(Error::TooDeep {
                offset,
                max: self.limits.max_depth,
            });
        }
        Ok(())
    }

    fn properties(&mut self, depth: usize, offset: usize) -> Result<Vec<(String, Value)>, Error> {
        self.check_depth(depth, offset)?;
        let mut props = Vec::new();
        loop {
            let key = self.short_string()?;
            if key.is_empty() {
                let end_at = self.pos;
                if self.u8()? == marker::OBJECT_END {
                    return Ok(props);
                }
                // An empty key not followed by the end marker: a property with an empty
                // name. Rewind one byte and read its value.
                self.pos = end_at;
            }
            let v = self.value(depth)?;
            props.push((key, v));
        }
    }
}

/// Appends the AMF0 encoding of `v` to `out`.
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Number(n) => {
            out.push(marker::NUMBER);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::Boolean(b) => {
            out.push(marker::BOOLEAN);
            out.push(u8::from(*b));
        }
        Value::String(s) => {
            if s.len() <= usize::from(u16::MAX) {
                out.push(marker::STRING);
                put_short_string(s, out);
            } else {
                out.push(marker::LONG_STRING);
                // Strings from our own code never reach 4 GiB.
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        Value::Object(props) => {
            out.push(marker::OBJECT);
            put_properties(props, out);
        }
        Value::Null => out.push(marker::NULL),
        Value::Undefined => out.push(marker::UNDEFINED),
        Value::EcmaArray(props) => {
            out.push(marker::ECMA_ARRAY);
            out.extend_from_slice(&(props.len() as u32).to_be_bytes());
            put_properties(props, out);
        }
        Value::StrictArray(items) => {
            out.push(marker::STRICT_ARRAY);
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            for i in items {
                encode(i, out);
            }
        }
        Value::Date(ms) => {
            out.push(marker::DATE);
            out.extend_from_slice(&ms.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
        }
    }
}

/// Encodes a sequence of values, e.g. a command: name, transaction id, object, args.
pub fn encode_all(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        encode(v, &mut out);
    }
    out
}

fn put_short_string(s: &str, out: &mut Vec<u8>) {
    // Property names and short strings: truncate at 65535 bytes rather than emit a
    // length that lies about the body.
    let b = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_properties(props: &[(String, Value)], out: &mut Vec<u8>) {
    for (k, v) in props {
        put_short_string(k, out);
        encode(v, out);
    }
    out.extend_from_slice(&[0, 0, marker::OBJECT_END]);
}

/// Convenience for building objects: `obj([("app", "live".into())])`.
pub fn obj<const N: usize>(props: [(&str, Value); N]) -> Value {
    Value::Object(props.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Number(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Boolean(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(v: Value) {
        let mut buf = Vec::new();
        encode(&v, &mut buf);
        assert_eq!(decode_all(&buf).unwrap(), vec![v]);
    }

    #[test]
    fn roundtrips() {
        roundtrip(Value::Number(1.5));
        roundtrip(Value::Boolean(true));
        roundtrip(Value::String("live".into()));
        roundtrip(Value::String("x".repeat(70_000)));
        roundtrip(Value::Null);
        roundtrip(Value::Undefined);
        roundtrip(Value::Date(1_700_000_000_000.0));
        roundtrip(obj([
            ("app", "live".into()),
            ("tcUrl", "rtmp://h/live".into()),
            ("fpad", false.into()),
            ("audioCodecs", 3191.0.into()),
            ("", Value::Null),
        ]));
        roundtrip(Value::EcmaArray(vec![
            ("duration".into(), Value::Number(0.0)),
            (
                "nested".into(),
                Value::StrictArray(vec![Value::Number(1.0), obj([("a", Value::Null)])]),
            ),
        ]));
    }

    #[test]
    fn command_sequence() {
        let cmd = encode_all(&[
            "connect".into(),
            Value::Number(1.0),
            obj([("app", "live".into())]),
        ]);
        let vals = decode_all(&cmd).unwrap();
        assert_eq!(vals[0].as_str(), Some("connect"));
        assert_eq!(vals[2].get("app").and_then(Value::as_str), Some("live"));
    }

    #[test]
    fn string_length_past_end_is_truncated_error() {
        // A1: declared length 0xFFFF, 7-byte body.
        let buf = [0x02, 0xff, 0xff, b'a', b'b', b'c', b'd', b'e', b'f', b'g'];
        assert_eq!(
            decode_all(&buf),
            Err(Error::Truncated {
                offset: 3,
                need: 0xffff - 7
            })
        );
    }

    #[test]
    fn deep_nesting_is_refused_without_stack_overflow() {
        // A2: 100 000 nested objects, each `{"a": {...`.
        let mut buf = Vec::new();
        for _ in 0..100_000 {
            buf.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
        }
        assert!(matches!(decode_all(&buf), Err(Error::TooDeep { .. })));
        let mut arr = Vec::new();
        for _ in 0..100_000 {
            arr.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        assert!(matches!(decode_all(&arr), Err(Error::TooDeep { .. })));
    }

    #[test]
    fn huge_declared_counts_allocate_nothing() {
        // A3: ECMA / strict array count 0xFFFFFFFF with 10 bytes of body.
        let ecma = [0x08, 0xff, 0xff, 0xff, 0xff, 0, 1, b'a', 0x05, 0];
        assert!(matches!(decode_all(&ecma), Err(Error::Truncated { .. })));
        let strict = [0x0a, 0xff, 0xff, 0xff, 0xff, 0x05, 0x05, 0x05, 0x05, 0x05];
        assert!(matches!(decode_all(&strict), Err(Error::Truncated { .. })));
        // Many tiny values hit the value cap rather than growing memory without bound.
        let mut many = vec![0x0a, 0x00, 0x10, 0x00, 0x00];
        many.extend(std::iter::repeat_n(0x05u8, 0x0010_0000));
        assert!(matches!(
            decode_all(&many),
            Err(Error::TooManyValues { .. })
        ));
    }

    #[test]
    fn unsupported_markers_are_errors() {
        for m in [0x04u8, 0x07, 0x0e, 0x0f, 0x10, 0x11, 0xff] {
            assert_eq!(
                decode_all(&[m, 0, 0, 0]),
                Err(Error::UnsupportedMarker {
                    marker: m,
                    offset: 0
                })
            );
        }
    }

    #[test]
    fn truncated_everywhere_never_panics() {
        let full = encode_all(&[
            "publish".into(),
            Value::Number(5.0),
            Value::Null,
            "stream".into(),
            obj([("k", Value::EcmaArray(vec![("d".into(), Value::Date(1.0))]))]),
        ]);
        for cut in 0..full.len() {
            let _ = decode_all(&full[..cut]);
        }
        assert!(decode_all(&full).is_ok());
    }
}
