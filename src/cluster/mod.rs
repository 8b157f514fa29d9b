//! Several nodes, one bucket (R-SC-1). Everything the nodes share lives in the S3 store
//! they already write to, under `{prefix}.liverec/cluster/`, and every exclusive decision
//! is one of the store's conditional writes (`If-None-Match: *` → `PutMode::Create`,
//! `If-Match` → `PutMode::Update`) — no consensus protocol of our own, no extra service.
//!
//! - `nodes/{node_id}.json`: each node's record, rewritten every `lease_ttl / 3` (the
//!   heartbeat) with its live streams and the tasks it records. A node is live while its
//!   record's `last_modified` (the store's clock, so node clocks may differ) is within
//!   `lease_ttl` of the newest record's.
//! - `leases/{domain}/{app}/{stream}.json`: who records a stream (`lease.rs`).
//! - `changes.json`: the change stamp. A node that changes shared state (a task, an API
//!   template or rule, the recordings catalog) rewrites it after the change; the others
//!   look at its ETag every `sync_interval` (one HEAD) and re-read only when it moved
//!   (`sync.rs`), so an idle cluster costs a few requests a minute per node.
//! - `catalog/{ms:016}-{node_id}-{n}.json`: batches of recordings-index changes, read
//!   incrementally by the other nodes (`sync.rs`).
//!
//! Without a `[cluster]` table none of this runs and no request is made (the daemon
//! holds `Option<Arc<Cluster>>`).

pub mod lease;
pub mod sync;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::model::StreamId;

/// What the cluster needs of this node's own state (the hub's streams, the splices, the
/// task table), behind a trait so `cluster` depends on none of those modules (they call
/// into it) — implemented in `daemon.rs`.
pub trait Local: Send + Sync {
    /// The streams published here now.
    fn streams(&self) -> Vec<NodeStream>;
    fn is_publishing(&self, id: &StreamId) -> bool;
    /// Ends the local publish of `id` (its lease went to another node).
    fn end_publish(&self, id: &StreamId);
    /// Whether a recording of `id` may still continue with its return (R-SP-1).
    fn may_continue(&self, id: &StreamId) -> bool;
    /// The record tasks recording here now.
    fn recording_tasks(&self) -> Vec<String>;
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster store: {0}")]
    Store(#[from] object_store::Error),
    #[error("cluster object key {key:?}: {source}")]
    Key {
        key: String,
        source: object_store::path::Error,
    },
    #[error("cluster object {key}: {source}")]
    Json {
        key: String,
        source: serde_json::Error,
    },
}

/// A node as its record in the store says (`GET /v1/nodes`, cluster-wide `/v1/streams`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NodeRecord {
    pub node_id: String,
    /// This process (a restarted node with the same id is a new instance).
    #[serde(default)]
    pub instance: String,
    /// Unix ms, the node's clock (for people; liveness uses the store's clock).
    pub last_seen_ms: i64,
    #[serde(default)]
    pub started_ms: i64,
    #[serde(default)]
    pub streams: Vec<NodeStream>,
    /// The record tasks this node is recording now.
    #[serde(default)]
    pub recording_tasks: Vec<String>,
    #[serde(default)]
    pub version: String,
    /// Written by a node that stopped cleanly: gone at once, not after `lease_ttl`. The
    /// record stays, so its files still become orphans after `orphan_after`.
    #[serde(default)]
    pub stopped: bool,
    /// Set by `peers` from the listing, not stored.
    #[serde(skip)]
    pub live: bool,
    /// How long before the newest record this one was last written (the store's clock).
    #[serde(skip)]
    pub silent_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NodeStream {
    pub domain: String,
    pub app: String,
    pub stream: String,
    pub peer: String,
    /// Unix seconds.
    pub started: u64,
}

/// The daemon's handle on the cluster.
pub struct Cluster {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    pub node_id: String,
    instance: String,
    pub sync_interval: Duration,
    pub lease_ttl: Duration,
    pub orphan_after: Duration,
    started_ms: i64,
    local: Arc<dyn Local>,
    pub(crate) leases: lease::Leases,
    /// Wakes the heartbeat early when the node's streams changed.
    pub(crate) changed: tokio::sync::Notify,
    catalog_seq: AtomicU64,
    /// Node records read within the last moment, so a burst of API calls lists once.
    peers_cache: Mutex<Option<(tokio::time::Instant, Vec<NodeRecord>)>>,
}

/// The node id when `[cluster] node_id` is empty: the host name.
pub fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| crate::model::validate_name(s).is_ok())
        .unwrap_or_else(|| "liverec".to_string())
}

impl Cluster {
    pub fn new(
        cfg: &ClusterConfig,
        store: Arc<dyn ObjectStore>,
        prefix: String,
        local: Arc<dyn Local>,
        now_ms: i64,
    ) -> Arc<Cluster> {
        let node_id = if cfg.node_id.is_empty() {
            default_node_id()
        } else {
            cfg.node_id.clone()
        };
        Arc::new(Cluster {
            store,
            prefix,
            node_id,
            instance: uuid::Uuid::new_v4().to_string(),
            sync_interval: Duration::from_secs(cfg.sync_interval.max(1)),
            lease_ttl: Duration::from_secs(cfg.lease_ttl.max(3)),
            orphan_after: Duration::from_secs(cfg.orphan_after),
            started_ms: now_ms,
            local,
            leases: lease::Leases::default(),
            changed: tokio::sync::Notify::new(),
            catalog_seq: AtomicU64::new(0),
            peers_cache: Mutex::default(),
        })
    }

    fn path(&self, rel: &str) -> Result<ObjectPath, ClusterError> {
        let key = format!("{}.liverec/cluster/{rel}", self.prefix);
        ObjectPath::parse(&key).map_err(|source| ClusterError::Key { key, source })
    }

    /// Tells the other nodes that shared state changed: they re-read it within their
    /// next `sync_interval`. Unique content, so the ETag always moves.
    pub async fn bump(&self) {
        let body = serde_json::json!({
            "node_id": self.node_id,
            "change": uuid::Uuid::now_v7().to_string(),
        });
        let res = match self.path("changes.json") {
            Ok(p) => self
                .store
                .put(&p, PutPayload::from(body.to_string().into_bytes()))
                .await
                .map(|_| ())
                .map_err(ClusterError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            // The change itself is stored; the others see it at the next change or when
            // this node bumps again.
            warn!("cannot tell the other nodes about a change (their view waits for the next one): {e}");
        }
    }

    /// The ETag of the change stamp (None: no change was ever made).
    async fn stamp(&self) -> Result<Option<String>, ClusterError> {
        match self.store.head(&self.path("changes.json")?).await {
            Ok(m) => Ok(m.e_tag.or(Some(m.last_modified.to_rfc3339()))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn record(&self, now_ms: i64) -> NodeRecord {
        let streams = self.local.streams();
        NodeRecord {
            node_id: self.node_id.clone(),
            instance: self.instance.clone(),
            last_seen_ms: now_ms,
            started_ms: self.started_ms,
            streams,
            recording_tasks: self.local.recording_tasks(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            stopped: false,
            live: true,
            silent_ms: 0,
        }
    }

    async fn heartbeat_once(&self, now_ms: i64, stopped: bool) -> Result<(), ClusterError> {
        let mut rec = self.record(now_ms);
        rec.stopped = stopped;
        if stopped {
            rec.streams.clear();
            rec.recording_tasks.clear();
        }
        let key = format!("nodes/{}.json", self.node_id);
        let data = serde_json::to_vec(&rec).map_err(|source| ClusterError::Json {
            key: key.clone(),
            source,
        })?;
        self.store
            .put(&self.path(&key)?, PutPayload::from(data))
            .await?;
        Ok(())
    }

    /// Every node's record, each marked live or not (newest first by id).
    pub async fn peers(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        {
            let cache = self.peers_cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, v)) = cache.as_ref() {
                if at.elapsed() < Duration::from_millis(500) {
                    return Ok(v.clone());
                }
            }
        }
        let dir = self.path("nodes")?;
        let mut metas = Vec::new();
        let mut s = self.store.list(Some(&dir));
        while let Some(m) = s.next().await {
            match m {
                Ok(m) => metas.push(m),
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Liveness on the store's clock: a record is live when it was written within
        // lease_ttl of the newest one (ours is rewritten every lease_ttl / 3).
        let newest = metas.iter().map(|m| m.last_modified).max();
        let ttl = chrono::Duration::from_std(self.lease_ttl).unwrap_or(chrono::Duration::MAX);
        let mut out = Vec::new();
        for m in metas {
            let fresh = newest.is_some_and(|n| m.last_modified + ttl >= n);
            let bytes = match self.store.get(&m.location).await {
                Ok(g) => g.bytes().await?,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            match serde_json::from_slice::<NodeRecord>(&bytes) {
                Ok(mut r) => {
                    r.live = fresh && !r.stopped;
                    r.silent_ms = newest
                        .map(|n| (n - m.last_modified).num_milliseconds())
                        .unwrap_or(0);
                    out.push(r);
                }
                Err(e) => warn!(key = %m.location, "skipping an unreadable node record: {e}"),
            }
        }
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        *self.peers_cache.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((tokio::time::Instant::now(), out.clone()));
        Ok(out)
    }

    /// Whether `id` is being published on any live node (this one included).
    pub async fn is_live_anywhere(&self, id: &StreamId) -> bool {
        if self.local.is_publishing(id) {
            return true;
        }
        match self.peers().await {
            Ok(peers) => peers.iter().filter(|p| p.live).any(|p| {
                p.streams
                    .iter()
                    .any(|s| s.domain == id.domain && s.app == id.app && s.stream == id.stream)
            }),
            Err(e) => {
                warn!("cannot read the other nodes' streams: {e}");
                false
            }
        }
    }

    /// A key for the next catalog batch: time-ordered across nodes (so a listing from an
    /// offset finds what is new), unique within this node.
    fn catalog_key(&self, now_ms: i64) -> String {
        let n = self.catalog_seq.fetch_add(1, Ordering::Relaxed);
        format!(
            "catalog/{:016}-{}-{}-{n}.json",
            now_ms.max(0),
            self.node_id,
            &self.instance[..8]
        )
    }
}

/// Starts the heartbeat, the lease renewals and the sync loop.
pub fn spawn(
    cluster: Arc<Cluster>,
    ctx: sync::SyncTargets,
    clock: Arc<dyn crate::clock::Clock>,
    stop: CancellationToken,
) {
    info!(node_id = %cluster.node_id, sync_interval = ?cluster.sync_interval, lease_ttl = ?cluster.lease_ttl, "cluster: this node shares its bucket with others");
    tokio::spawn(heartbeat(cluster.clone(), clock.clone(), stop.clone()));
    tokio::spawn(lease::renewals(
        cluster.clone(),
        clock.clone(),
        stop.clone(),
    ));
    tokio::spawn(sync::run(cluster, ctx, clock, stop));
}

async fn heartbeat(
    cluster: Arc<Cluster>,
    clock: Arc<dyn crate::clock::Clock>,
    stop: CancellationToken,
) {
    let every = cluster.lease_ttl / 3;
    let mut failing = false;
    loop {
        match cluster.heartbeat_once(clock.now_ms(), false).await {
            Ok(()) if failing => {
                info!("cluster: node record written again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    warn!("cluster: cannot write this node's record (the others will see it as gone after lease_ttl): {e}");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            // A stream came or went: the others' /v1/streams shows it soon, not in 5 s.
            _ = cluster.changed.notified() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = stop.cancelled() => break,
        }
    }
    // A node that stops cleanly is gone at once, not after lease_ttl.
    if let Err(e) = cluster.heartbeat_once(clock.now_ms(), true).await {
        warn!(
            "cluster: cannot mark this node stopped (the others see it gone after lease_ttl): {e}"
        );
    }
}
