//! FLV: tag-body parsing into `media` types (incl. Enhanced RTMP) and the FLV file muxer.

pub mod mux;
pub mod reader;
pub mod repair;
pub mod tag;

pub use mux::{
    flv_codec_id, patches_for_existing, tag_header, FlvMuxer, MetaInfo, MuxError, Patch,
};
pub use reader::{FileTag, FlvReader, ReadError, TagType};
pub use tag::{parse_audio, parse_video, FourCc, Parsed, SkipReason, TagError};
