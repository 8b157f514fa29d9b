//! Retention (R-ST-5): a sweeper that deletes what has expired. The schedule lives in the
//! node database (`crate::db`, table `retention`), filled when a file is stored (renamed
//! into the recordings directory or confirmed by S3), and an HLS playlist with its
//! segments only when the playlist ends, so an open or not-yet-uploaded file can never be
//! swept. A sweep reads only the due rows (an index on `expires_at`), so its cost follows
//! what expires, not what is kept.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::store::Backend;
use crate::db::Db;

/// Due files taken per database round trip; a larger backlog takes several.
const SWEEP_BATCH: usize = 512;

/// Deletes expired files every `every` until `stop`.
pub async fn sweeper(db: Db, backend: Arc<Backend>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        sweep_once(&db, &backend).await;
    }
}

/// Deletes what is due from the store, then drops it from the schedule. The entries stay
/// scheduled until the store confirmed the delete: a crash in between deletes again on the
/// next sweep (harmless: a missing file counts as deleted), and a failed delete is simply
/// retried by the next sweep, so there is nothing to put back.
pub async fn sweep_once(db: &Db, backend: &Backend) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    loop {
        let due = match db.take_expired(now_ms, SWEEP_BATCH).await {
            Ok(d) => d,
            Err(e) => {
                warn!("retention sweep cannot read its schedule: {e}");
                return;
            }
        };
        let full = due.len() == SWEEP_BATCH;
        let mut gone = Vec::with_capacity(due.len());
        for e in due {
            match delete(backend, &e.key).await {
                Ok(()) => {
                    info!(key = %e.key, "retention: deleted expired file");
                    gone.push(e.key);
                }
                Err(err) => warn!(key = %e.key, "retention: delete failed, will retry: {err}"),
            }
        }
        if gone.is_empty() {
            // Nothing due, or every delete failed: the next sweep retries.
            return;
        }
        crate::failpoint::hit("retention.deleted");
        if let Err(e) = db.deleted(gone).await {
            // Still scheduled: the next sweep deletes them again (no-ops) and retries this.
            warn!("retention: cannot record deleted files, the next sweep retries: {e}");
            return;
        }
        // Another batch only when this one was full (a batch of failed deletes returned
        // above: it waits for the next sweep instead of spinning).
        if !full {
            return;
        }
    }
}

async fn delete(backend: &Backend, key: &str) -> Result<(), String> {
    match backend {
        Backend::Local { root } => {
            object_store::path::Path::parse(key).map_err(|e| e.to_string())?;
            let path = root.join(key);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.to_string()),
            }
            // Empty stream/app/domain directories go too; a non-empty one stops this.
            let mut dir = path.parent();
            while let Some(d) = dir {
                if d == root || tokio::fs::remove_dir(d).await.is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        }
        Backend::S3(s3) => {
            use object_store::ObjectStoreExt;
            let loc = s3.path(key).map_err(|e| e.to_string())?;
            match s3.store.delete(&loc).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_sweep_deletes_expired_files_and_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rec");
        std::fs::create_dir_all(root.join("d/a/s")).unwrap();
        std::fs::create_dir_all(root.join("d/a/t")).unwrap();
        std::fs::write(root.join("d/a/s/x.flv"), b"x").unwrap();
        std::fs::write(root.join("d/a/t/y.flv"), b"y").unwrap();
        let db = Db::open(&dir.path().join("spool")).await.unwrap();
        db.add("d/a/s/x.flv", 1).await.unwrap();
        db.add("d/a/t/y.flv", 0).await.unwrap();
        let backend = Backend::Local { root: root.clone() };
        // Expiry counts from the next whole second: two seconds pass one for sure.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        sweep_once(&db, &backend).await;
        assert!(
            !root.join("d/a/s").exists(),
            "expired file and its empty dir"
        );
        assert!(root.join("d/a/t/y.flv").exists(), "kept forever");
        let later = chrono::Utc::now().timestamp_millis() + 86_400_000;
        assert!(
            db.take_expired(later, 10).await.unwrap().is_empty(),
            "a deleted file leaves the schedule; a kept-forever one was never in it"
        );
    }

    #[tokio::test]
    async fn a_failed_delete_stays_scheduled() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rec");
        // A directory where the file should be: remove_file fails (not NotFound).
        std::fs::create_dir_all(root.join("d/a/s/x.flv/inner")).unwrap();
        let db = Db::open(&dir.path().join("spool")).await.unwrap();
        db.add("d/a/s/x.flv", 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        sweep_once(&db, &Backend::Local { root }).await;
        let now = chrono::Utc::now().timestamp_millis();
        let due = db.take_expired(now, 10).await.unwrap();
        assert_eq!(due.len(), 1, "retried by the next sweep");
    }
}
