//! FLV: tag-body parsing into `media` types (incl. Enhanced RTMP) and the FLV file muxer.

pub mod reader;

pub use reader::{FileTag, FlvReader, ReadError, TagType};
