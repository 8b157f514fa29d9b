//! The registry of live streams: who publishes what, and the ring each stream feeds.
//! Duplicate publishers are refused or take over here (R-IN-4). The hub only announces:
//! every registration and removal becomes a [`HubEvent`] for the recording supervisor,
//! which decides what to record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Loaded, OnDuplicate};
use crate::model::StreamId;

pub struct LiveStream {
    pub conn_id: u64,
    pub peer: std::net::SocketAddr,
    pub started: SystemTime,
    /// Cancelled to make the publisher's connection end (takeover, shutdown).
    pub cancel: CancellationToken,
    pub ring: ring::RingHandle,
    pub query: Option<String>,
    /// The config as of the publish: rules and templates apply when a push starts and
    /// the recording keeps them (R-TP-6).
    pub config: Arc<Loaded>,
    /// Its tracks and rates, as its connection measures them (issue 16).
    pub info: Arc<super::meter::LiveInfo>,
}

pub struct StreamInfo {
    pub id: StreamId,
    pub peer: std::net::SocketAddr,
    pub started: SystemTime,
    pub query: Option<String>,
    pub ring: ring::RingStats,
    pub info: Arc<super::meter::LiveInfo>,
}

/// What the hub announces, in the order the registry changed.
pub enum HubEvent {
    Published(Publication),
    /// The publish of `conn_id` ended (its ring is closed; recorders drain it and end).
    Unpublished {
        id: StreamId,
        conn_id: u64,
    },
}

pub struct Publication {
    pub id: StreamId,
    pub conn_id: u64,
    pub ring: ring::RingHandle,
    pub config: Arc<Loaded>,
    /// The publish URL's query (secrets not yet redacted), for callbacks.
    pub query: Option<String>,
    /// A reader made at registration, before the publisher's first packet: while it is
    /// held the ring keeps everything from the stream's start, so recordings the
    /// supervisor starts a moment later still begin at the first keyframe. Drop it once
    /// they are started.
    pub start: ring::Reader,
}

pub struct Hub {
    streams: Mutex<HashMap<StreamId, LiveStream>>,
    events: mpsc::UnboundedSender<HubEvent>,
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
    /// The hub and the receiving end of its events (one subscriber: the supervisor).
    /// Unbounded because events are one per publish or unpublish, which the connection
    /// limits bound, and an event lost would be a stream not recorded.
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<HubEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Hub {
                streams: Mutex::default(),
                events: tx,
            }),
            rx,
        )
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<StreamId, LiveStream>> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // critical section is a single insert/remove), so a poisoned lock is still usable.
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a publisher and announces it. With `Takeover`, the previous publisher's
    /// connection is cancelled and its entry replaced.
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
        let publication = Publication {
            id: id.clone(),
            conn_id: entry.conn_id,
            ring: entry.ring.clone(),
            config: entry.config.clone(),
            query: entry.query.clone(),
            start: entry.ring.subscribe(),
        };
        m.insert(id, entry);
        // Sent under the lock so events are in the registry's order. Nobody listening
        // (the daemon is shutting down) is not an error.
        let _ = self.events.send(HubEvent::Published(publication));
        Ok(())
    }

    /// Removes the entry if it still belongs to `conn_id` (a takeover may have replaced
    /// it), and announces the end of that publish either way.
    pub fn unregister(&self, id: &StreamId, conn_id: u64) {
        let mut m = self.lock();
        if m.get(id).is_some_and(|e| e.conn_id == conn_id) {
            m.remove(id);
        }
        let _ = self.events.send(HubEvent::Unpublished {
            id: id.clone(),
            conn_id,
        });
    }

    /// Ends the publish of `id` here (its cluster lease went to another node).
    pub fn cancel_publisher(&self, id: &StreamId) {
        if let Some(e) = self.lock().get(id) {
            e.cancel.cancel();
        }
    }

    /// The connection publishing `id`, if it is live.
    pub fn publisher(&self, id: &StreamId) -> Option<u64> {
        self.lock().get(id).map(|e| e.conn_id)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
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
                info: v.info.clone(),
            })
            .collect()
    }
}
