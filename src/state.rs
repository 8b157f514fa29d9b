//! Control-plane state in the store (DESIGN "State in the store"): small JSON objects under
//! `{prefix}/.liverec/state/{kind}/{id}.json` of the storage backend, so one node uses its
//! recordings directory and several nodes can share one bucket, with no database.

use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

use crate::sink::store::Backend;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store: {0}")]
    Store(#[from] object_store::Error),
    #[error("state key: {0}")]
    Key(#[from] object_store::path::Error),
    #[error("state JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot open the state directory: {0}")]
    Local(String),
    #[error("{0} already exists in the store")]
    Exists(String),
}

#[derive(Clone)]
pub struct State {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

/// The largest state object (task, template, rule, catalog entry) `list` reads; ours are
/// a few KiB at most (a task's `extension` is bounded at 4 KiB).
const MAX_STATE_OBJECT_BYTES: u64 = 1 << 20;

impl State {
    pub fn new(backend: &Backend) -> Result<Self, StateError> {
        Ok(match backend {
            Backend::Local { root } => {
                std::fs::create_dir_all(root).map_err(|e| StateError::Local(e.to_string()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(root)
                    .map_err(|e| StateError::Local(e.to_string()))?;
                State {
                    store: Arc::new(fs),
                    prefix: String::new(),
                }
            }
            Backend::S3(s3) => State {
                store: s3.store.clone(),
                prefix: s3.prefix.clone(),
            },
        })
    }

    /// The store and the key prefix, for the cluster's own objects (R-SC-1).
    pub fn store(&self) -> (Arc<dyn ObjectStore>, String) {
        (self.store.clone(), self.prefix.clone())
    }

    fn path(&self, kind: &str, id: &str) -> Result<ObjectPath, StateError> {
        Ok(ObjectPath::parse(format!(
            "{}.liverec/state/{kind}/{id}.json",
            self.prefix
        ))?)
    }

    /// A recording's object (`{prefix}{key}`, outside the state prefix), e.g. a playlist.
    pub async fn get_recording(&self, key: &str) -> Result<bytes::Bytes, StateError> {
        let path = ObjectPath::parse(format!("{}{key}", self.prefix))?;
        Ok(self.store.get(&path).await?.bytes().await?)
    }

    /// Writes (replaces) one object.
    pub async fn put<T: Serialize>(&self, kind: &str, id: &str, v: &T) -> Result<(), StateError> {
        let data = serde_json::to_vec(v)?;
        self.store
            .put(&self.path(kind, id)?, PutPayload::from(data))
            .await?;
        Ok(())
    }

    /// Writes one object only if none exists under its key (If-None-Match on S3, an
    /// exclusive create locally), so two nodes sharing a bucket cannot both create it.
    pub async fn create<T: Serialize>(
        &self,
        kind: &str,
        id: &str,
        v: &T,
    ) -> Result<(), StateError> {
        let data = serde_json::to_vec(v)?;
        let opts = object_store::PutOptions::from(object_store::PutMode::Create);
        match self
            .store
            .put_opts(&self.path(kind, id)?, PutPayload::from(data), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(StateError::Exists(format!("{kind}/{id}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One object, or None when there is none.
    pub async fn get<T: DeserializeOwned>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<T>, StateError> {
        let path = match self.path(kind, id) {
            Ok(p) => p,
            // Not a key we could have written.
            Err(_) => return Ok(None),
        };
        match self.store.get(&path).await {
            Ok(g) => Ok(Some(serde_json::from_slice(&g.bytes().await?)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes one object (gone already is fine).
    pub async fn delete(&self, kind: &str, id: &str) -> Result<(), StateError> {
        match self.store.delete(&self.path(kind, id)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every object of a kind (keys may have `/` in them); unreadable ones are skipped
    /// with a warning. Objects are fetched 16 at a time.
    pub async fn list<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>, StateError> {
        let dir = ObjectPath::parse(format!("{}.liverec/state/{kind}", self.prefix))?;
        let mut locations = Vec::new();
        let mut s = self.store.list(Some(&dir));
        while let Some(meta) = s.next().await {
            match meta {
                // A state object is a small JSON document; anything large is not one of
                // ours (a file put there by hand, or by a publisher before names were
                // checked) and is not read into memory at every start.
                Ok(m) if m.size > MAX_STATE_OBJECT_BYTES => {
                    warn!(key = %m.location, bytes = m.size, "skipping a state object larger than {MAX_STATE_OBJECT_BYTES} bytes: not one liverec wrote");
                }
                Ok(m) => locations.push(m.location),
                // An empty local state directory does not exist yet.
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let store = &self.store;
        let mut gets = futures::stream::iter(locations)
            .map(|loc| async move {
                let r = match store.get(&loc).await {
                    Ok(g) => g.bytes().await,
                    Err(e) => Err(e),
                };
                (loc, r)
            })
            .buffered(16);
        let mut out = Vec::new();
        while let Some((loc, bytes)) = gets.next().await {
            let bytes = match bytes {
                Ok(b) => b,
                // Deleted between the listing and the read.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            match serde_json::from_slice(&bytes) {
                Ok(v) => out.push(v),
                Err(e) => warn!(key = %loc, "skipping unreadable state object: {e}"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: a large object under `.liverec/state/` (one a publisher could once
    /// push there) is skipped, not read whole into memory; ours are read.
    #[tokio::test]
    async fn large_state_objects_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = dir.path().join(".liverec/state/tasks");
        std::fs::create_dir_all(&tasks).unwrap();
        std::fs::write(tasks.join("ok.json"), br#"{"n": 1}"#).unwrap();
        std::fs::write(
            tasks.join("big.flv"),
            vec![b' '; (MAX_STATE_OBJECT_BYTES + 1) as usize],
        )
        .unwrap();
        let state = State::new(&Backend::Local {
            root: dir.path().to_path_buf(),
        })
        .unwrap();
        let got: Vec<serde_json::Value> = state.list("tasks").await.unwrap();
        assert_eq!(got, vec![serde_json::json!({"n": 1})]);
    }
}
