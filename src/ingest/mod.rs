//! RTMP ingest: the listener, one task per connection, and the stream registry (hub).

pub mod auth;
pub mod conn;
pub mod hub;
pub mod identity;
pub mod listener;
pub mod meter;
pub mod proxy;
pub mod slot_read;
pub mod tls;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// What ingest needs from the rest of the daemon.
pub struct Ingest {
    pub hub: Arc<hub::Hub>,
    /// Each connection takes a snapshot when it starts (R-TP-6).
    pub config: Arc<crate::config::RunningConfig>,
    /// Past the spool quota new publishes are refused (R-ST-4).
    pub quota: Arc<crate::sink::Quota>,
    pub shutdown: CancellationToken,
    /// Stamps each socket read with its wall-clock arrival (issue 10).
    pub clock: Arc<dyn crate::clock::Clock>,
    /// Where a refused publish's `record_start_failed` event is queued (R-CB-2).
    pub callbacks: crate::db::Db,
    /// The `on_publish` / `on_unpublish` hooks' client (the callbacks' kind: rustls, no
    /// redirects).
    pub http: reqwest::Client,
    /// Stream leases when several nodes share the store (R-SC-1); None: a single node.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}
