//! RTMP ingest: the listener, one task per connection, and the stream registry.

pub mod conn;
pub mod hub;
pub mod identity;
