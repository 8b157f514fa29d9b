//! The registry of live streams: who publishes what, and the ring each stream feeds.
//! Duplicate publishers are refused or take over here (R-IN-4).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::identity::StreamId;
use crate::config::OnDuplicate;

pub struct LiveStream {
    pub conn_id: u64,
    pub peer: std::net::SocketAddr,
    pub started: SystemTime,
    /// Cancelled to make the publisher's connection end (takeover, shutdown).
    pub cancel: CancellationToken,
    pub ring: ring::RingHandle,
    pub query: Option<String>,
}

pub struct StreamInfo {
    pub id: StreamId,
    pub peer: std::net::SocketAddr,
    pub started: SystemTime,
    pub query: Option<String>,
    pub ring: ring::RingStats,
}

#[derive(Default)]
pub struct Hub {
    streams: Mutex<HashMap<StreamId, LiveStream>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("stream {id} is already being published by {peer} (since connection {conn_id})")]
    AlreadyPublishing {
        id: StreamId,
        peer: std::net::SocketAddr,
        conn_id: u64,
    },
    #[error("{max} streams are being published already (rtmp.max_streams)")]
    TooManyStreams { max: usize },
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<StreamId, LiveStream>> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // critical section is a single insert/remove), so a poisoned lock is still usable.
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a publisher. With `Takeover`, the previous publisher's connection is
    /// cancelled and its entry replaced.
    /// At most `max_streams` streams at once (a takeover replaces one, it adds none); the
    /// count and the insert are one critical section, so concurrent publishes cannot
    /// both take the last place.
    pub fn register(
        &self,
        id: StreamId,
        entry: LiveStream,
        policy: OnDuplicate,
        max_streams: usize,
    ) -> Result<(), RegisterError> {
        let mut m = self.lock();
        if let Some(old) = m.get(&id) {
            match policy {
                OnDuplicate::Reject => {
                    return Err(RegisterError::AlreadyPublishing {
                        id,
                        peer: old.peer,
                        conn_id: old.conn_id,
                    })
                }
                OnDuplicate::Takeover => old.cancel.cancel(),
            }
        } else if m.len() >= max_streams {
            return Err(RegisterError::TooManyStreams { max: max_streams });
        }
        m.insert(id, entry);
        Ok(())
    }

    /// Removes the entry if it still belongs to `conn_id` (a takeover may have replaced it).
    pub fn unregister(&self, id: &StreamId, conn_id: u64) {
        let mut m = self.lock();
        if m.get(id).is_some_and(|e| e.conn_id == conn_id) {
            m.remove(id);
        }
    }

    /// The ring of a live stream and the connection publishing it.
    pub fn ring(&self, id: &StreamId) -> Option<(ring::RingHandle, u64)> {
        self.lock().get(id).map(|e| (e.ring.clone(), e.conn_id))
    }

    pub fn snapshot(&self) -> Vec<StreamInfo> {
        self.lock()
            .iter()
            .map(|(k, v)| StreamInfo {
                id: k.clone(),
                peer: v.peer,
                started: v.started,
                query: v.query.clone(),
                ring: v.ring.stats(),
            })
            .collect()
    }
}
