//! What one node makes, the others see within `sync_interval` (R-SC-1):
//!
//! - Tasks, API templates and rules: after a change the writer rewrites the change stamp
//!   (`Cluster::bump`); every node HEADs it each interval and, only when its ETag moved,
//!   re-reads the three kinds and merges them (a task stopped elsewhere ends here).
//! - Recordings: each node appends its index changes, a batch per object, to the shared
//!   change log `catalog/{ms:016}-{node}-…json`; every node lists the log from where it
//!   last read each interval (an empty answer at idle) and applies what other nodes
//!   wrote to its own index — incremental, never a full rebuild except for a node that
//!   has never read the log or was away longer than the log is kept.
//!
//! At idle that is one HEAD and one LIST per node per `sync_interval`, plus the
//! heartbeat's PUT every `lease_ttl / 3` (README "Running several nodes").

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Cluster, ClusterError};
use crate::db::{Db, Op};

/// Batches may land in the log out of key order (keys carry the writer's clock and a
/// PUT takes time): each listing starts this far before the newest key applied.
const LOG_WINDOW_MS: i64 = 5 * 60 * 1000;
/// Each node deletes its own log batches older than this; a node whose cursor is older
/// rebuilds its index from the catalog objects instead.
const LOG_KEEP_MS: i64 = 24 * 3600 * 1000;

/// What a sync changes on this node, as closures so `cluster` depends on neither the
/// API nor the supervisor (they depend on it).
pub struct SyncTargets {
    pub db: Db,
    /// Merges the stored tasks into the task table; true when something changed.
    pub merge_tasks: Box<dyn Fn() -> BoxFuture<'static, Result<bool, String>> + Send + Sync>,
    /// Re-reads the API-made templates and rules.
    pub reload_items: Box<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
    /// The supervisor acts on the merged tasks.
    pub tasks_changed: Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>,
    /// Schedules here the expiry of the files a gone node stored; how many.
    pub take_over_retention:
        Box<dyn Fn(String) -> BoxFuture<'static, Result<usize, String>> + Send + Sync>,
    /// The local index rebuilt from the catalog objects (a node new to the log).
    pub rebuild: Box<dyn Fn() -> BoxFuture<'static, Result<usize, String>> + Send + Sync>,
}

impl Cluster {
    /// Appends a batch of this node's recordings-index changes to the shared log.
    pub async fn append_catalog(&self, ops: &[Op], now_ms: i64) -> Result<(), ClusterError> {
        if ops.is_empty() {
            return Ok(());
        }
        let key = self.catalog_key(now_ms);
        let data = serde_json::to_vec(ops).map_err(|source| ClusterError::Json {
            key: key.clone(),
            source,
        })?;
        self.store
            .put(&self.path(&key)?, PutPayload::from(data))
            .await?;
        Ok(())
    }
}

impl crate::sink::catalog::ChangeLog for Cluster {
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn append<'a>(&'a self, ops: &'a [Op]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let now_ms = chrono::Utc::now().timestamp_millis();
            self.append_catalog(ops, now_ms)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The listing position in the log, and the batches already applied inside the window.
struct Cursor {
    newest_ms: i64,
    applied: BTreeSet<String>,
}

fn key_ms(name: &str) -> Option<i64> {
    name.rsplit('/').next()?.get(..16)?.parse().ok()
}

/// `{ms:016}-{node}-{instance8}-{n}.json` → node.
fn key_node(name: &str) -> Option<&str> {
    let file = name.rsplit('/').next()?;
    let rest = file.get(17..)?;
    let cut = rest.rfind('-')?;
    let rest = &rest[..cut];
    let cut = rest.rfind('-')?;
    Some(&rest[..cut])
}

pub async fn run(
    cluster: Arc<Cluster>,
    t: SyncTargets,
    clock: Arc<dyn crate::clock::Clock>,
    stop: CancellationToken,
) {
    let mut seen_stamp: Option<Option<String>> = None;
    let mut cursor: Option<Cursor> = None;
    let mut failing = false;
    let mut last_compaction: Option<tokio::time::Instant> = None;
    let mut last_orphan_check: Option<tokio::time::Instant> = None;
    loop {
        let res = async {
            let stamp = cluster.stamp().await?;
            if seen_stamp.as_ref() != Some(&stamp) {
                let changed = (t.merge_tasks)().await.map_err(sync_err)?;
                (t.reload_items)().await.map_err(sync_err)?;
                if changed {
                    (t.tasks_changed)().await;
                }
                seen_stamp = Some(stamp);
            }
            let now_ms = clock.now_ms();
            if cursor.is_none() {
                cursor = Some(start_cursor(&t, now_ms).await?);
            }
            if let Some(c) = cursor.as_mut() {
                read_log(&cluster, &t.db, c).await?;
            }
            let orphan_every = (cluster.orphan_after / 4)
                .min(Duration::from_secs(60))
                .max(cluster.sync_interval);
            if last_orphan_check.is_none_or(|at| at.elapsed() >= orphan_every) {
                last_orphan_check = Some(tokio::time::Instant::now());
                take_over_orphans(&cluster, &t, now_ms).await?;
            }
            if last_compaction.is_none_or(|at| at.elapsed() > Duration::from_secs(3600)) {
                last_compaction = Some(tokio::time::Instant::now());
                compact_log(&cluster, now_ms).await;
            }
            Ok::<(), ClusterError>(())
        }
        .await;
        match res {
            Ok(()) if failing => {
                info!("cluster: in sync with the other nodes again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    warn!("cluster: cannot read the other nodes' changes, retrying every sync_interval: {e}");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cluster.sync_interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

fn sync_err(e: String) -> ClusterError {
    ClusterError::Store(object_store::Error::Generic {
        store: "cluster sync",
        source: e.into(),
    })
}

/// Where this node goes on reading the log: its saved cursor, or — never read, or away
/// longer than the log is kept — a rebuild of its index from the catalog objects, then
/// the log from shortly before the rebuild.
async fn start_cursor(t: &SyncTargets, now_ms: i64) -> Result<Cursor, ClusterError> {
    let saved =
        t.db.cluster_cursor()
            .await
            .map_err(|e| sync_err(e.to_string()))?
            .and_then(|s| s.parse::<i64>().ok());
    let newest_ms = match saved {
        Some(ms) if now_ms - ms < LOG_KEEP_MS - LOG_WINDOW_MS => ms,
        _ => {
            let n = (t.rebuild)().await.map_err(sync_err)?;
            // From here on the log: saved now, so a restart reads on instead of rebuilding.
            t.db.apply_remote(Vec::new(), now_ms.to_string())
                .await
                .map_err(|e| sync_err(e.to_string()))?;
            info!(
                recordings = n,
                "cluster: recordings index rebuilt from the store's catalog (first sync of this node's index)"
            );
            now_ms
        }
    };
    Ok(Cursor {
        newest_ms,
        applied: BTreeSet::new(),
    })
}

async fn read_log(cluster: &Cluster, db: &Db, c: &mut Cursor) -> Result<(), ClusterError> {
    let dir = cluster.path("catalog")?;
    let from = c.newest_ms.saturating_sub(LOG_WINDOW_MS).max(0);
    let offset = cluster.path(&format!("catalog/{from:016}"))?;
    let mut names = Vec::new();
    let mut s = cluster.store.list_with_offset(Some(&dir), &offset);
    while let Some(m) = s.next().await {
        match m {
            Ok(m) => names.push(m.location),
            Err(object_store::Error::NotFound { .. }) => break,
            Err(e) => return Err(e.into()),
        }
    }
    names.sort();
    for loc in names {
        let name = loc.as_ref().to_string();
        let Some(ms) = key_ms(&name) else { continue };
        if c.applied.contains(&name) {
            continue;
        }
        // Ours are in the index already.
        if key_node(&name) != Some(cluster.node_id.as_str()) {
            let bytes = match cluster.store.get(&loc).await {
                Ok(g) => g.bytes().await?,
                // Compacted meanwhile: older than any cursor that needs it.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            match serde_json::from_slice::<Vec<Op>>(&bytes) {
                Ok(ops) => {
                    let n = ops.len();
                    let newest = c.newest_ms.max(ms);
                    db.apply_remote(ops, newest.to_string())
                        .await
                        .map_err(|e| sync_err(e.to_string()))?;
                    tracing::debug!(batch = %name, changes = n, "cluster: recordings of another node indexed");
                }
                Err(e) => {
                    warn!(batch = %name, "cluster: skipping an unreadable recordings batch: {e}")
                }
            }
        }
        c.applied.insert(name);
        c.newest_ms = c.newest_ms.max(ms);
    }
    // Forget what the next listing cannot return any more.
    let floor = format!(
        "{}catalog/{:016}",
        cluster.path("").map(|p| p.to_string()).unwrap_or_default(),
        c.newest_ms.saturating_sub(LOG_WINDOW_MS).max(0)
    );
    c.applied = c.applied.split_off(&floor);
    Ok(())
}

/// Retention of a node silent longer than `orphan_after` (crashed for good, or stopped
/// and never back): one live node — whoever creates `orphans/{node}-{instance}.json`
/// first, an exclusive create — schedules its files' expiry in its own retention, so no
/// file lives forever. If the node returns it expires them too (a second delete of a
/// deleted file is a no-op).
async fn take_over_orphans(
    cluster: &Cluster,
    t: &SyncTargets,
    now_ms: i64,
) -> Result<(), ClusterError> {
    let orphan_ms = i64::try_from(cluster.orphan_after.as_millis()).unwrap_or(i64::MAX);
    for p in cluster.peers().await? {
        if p.node_id == cluster.node_id || p.silent_ms <= orphan_ms {
            continue;
        }
        let key = format!("orphans/{}-{}.json", p.node_id, p.instance);
        let body = serde_json::json!({"taken_by": cluster.node_id, "at_ms": now_ms});
        let opts = object_store::PutOptions::from(object_store::PutMode::Create);
        match cluster
            .store
            .put_opts(
                &cluster.path(&key)?,
                PutPayload::from(body.to_string().into_bytes()),
                opts,
            )
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
        match (t.take_over_retention)(p.node_id.clone()).await {
            Ok(n) => info!(
                node = %p.node_id,
                silent_s = p.silent_ms / 1000,
                files = n,
                "cluster: node gone longer than orphan_after; its files now expire from this node"
            ),
            Err(e) => {
                warn!(node = %p.node_id, "cluster: cannot take over the retention of a gone node: {e}")
            }
        }
    }
    Ok(())
}

/// Deletes this node's own log batches older than [`LOG_KEEP_MS`].
async fn compact_log(cluster: &Cluster, now_ms: i64) {
    let Ok(dir) = cluster.path("catalog") else {
        return;
    };
    let mut old = Vec::new();
    let mut s = cluster.store.list(Some(&dir));
    while let Some(m) = s.next().await {
        let Ok(m) = m else { return };
        let name = m.location.as_ref();
        match key_ms(name) {
            Some(ms)
                if now_ms - ms > LOG_KEEP_MS
                    && key_node(name) == Some(cluster.node_id.as_str()) =>
            {
                old.push(m.location);
            }
            _ => {}
        }
    }
    for loc in old {
        if let Err(e) = cluster.store.delete(&loc).await {
            warn!(batch = %loc, "cluster: cannot delete an old recordings batch: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_name_their_time_and_node() {
        let k = "p/.liverec/cluster/catalog/0001733400000123-rec-1.a-b-0c4f9e2a-17.json";
        assert_eq!(key_ms(k), Some(1_733_400_000_123));
        assert_eq!(key_node(k), Some("rec-1.a-b"));
        assert_eq!(key_ms("catalog/x.json"), None);
    }
}
