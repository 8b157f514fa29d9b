//! The recorder: a pure state machine that turns the ordered media events of one stream
//! into files. It decides where files start and end (R-SG-1…3) and drives the muxers; it
//! never touches a file or a clock — the daemon feeds it events and carries out its
//! outputs (`Output::Open`, `Output::Data`, `Output::Close`).

pub mod cut;
pub mod naming;
pub mod recorder;

pub use cut::{CutDecision, CutPolicy};
pub use recorder::{FileSummary, Format, Output, Recorder};
