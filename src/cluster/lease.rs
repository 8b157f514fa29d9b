//! Stream leases (R-SC-1): the node that accepts a publish holds
//! `leases/{domain}/{app}/{stream}.json` — created with `PutMode::Create` (If-None-Match),
//! renewed every `lease_ttl / 3` with `PutMode::Update` (If-Match on the ETag it last
//! wrote) — so two nodes never record one stream. A renewal that finds another ETag has
//! lost the lease (a takeover, or the node was silent past `lease_ttl`) and ends the
//! local publish.
//!
//! Ending a lease writes a `released` record under If-Match instead of deleting it:
//! object_store has no conditional delete, and a plain delete racing a takeover would
//! throw away the new holder's lease.
//!
//! While a recording of the stream waits in its continuation window (R-SP-1) the lease
//! stays, marked `waiting`. Another node may take a `waiting` lease at once: the reading
//! of the spec that protects the user more — a push that returns through the load
//! balancer to another node is recorded there (in new files) instead of being refused
//! for up to `continue_timeout`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Cluster, ClusterError};
use crate::model::StreamId;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    Live,
    Waiting,
    Released,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseRecord {
    pub node_id: String,
    #[serde(default)]
    pub instance: String,
    pub state: LeaseState,
    /// Unix ms of the last renewal, the holder's clock.
    pub renewed_ms: i64,
}

/// What a publish gets.
#[derive(Debug, PartialEq)]
pub enum Claim {
    Granted,
    /// Another live node records the stream.
    HeldBy(String),
}

/// Whether an existing lease may be taken.
#[derive(Debug, PartialEq)]
pub(crate) enum Decision {
    Take(&'static str),
    Refuse,
}

pub(crate) fn decide(
    lease: &LeaseRecord,
    me: &str,
    now_ms: i64,
    ttl_ms: i64,
    takeover: bool,
) -> Decision {
    if lease.node_id == me {
        // Our own (a previous run of this node, or a release racing this publish).
        return Decision::Take("held by this node");
    }
    match lease.state {
        LeaseState::Released => Decision::Take("released"),
        LeaseState::Waiting => Decision::Take("its holder only waits for the stream to return"),
        LeaseState::Live if now_ms.saturating_sub(lease.renewed_ms) > ttl_ms => {
            Decision::Take("expired: its holder stopped renewing it")
        }
        LeaseState::Live if takeover => Decision::Take("rtmp.on_duplicate = \"takeover\""),
        LeaseState::Live => Decision::Refuse,
    }
}

struct Held {
    version: UpdateVersion,
    /// The connection publishing it here (0: claimed, not yet registered).
    conn_id: u64,
    live: bool,
}

#[derive(Default)]
pub(crate) struct Leases {
    held: Mutex<HashMap<StreamId, Held>>,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn version_of(e_tag: Option<String>, version: Option<String>) -> UpdateVersion {
    UpdateVersion { e_tag, version }
}

impl Cluster {
    fn lease_key(id: &StreamId) -> String {
        format!("leases/{}/{}/{}.json", id.domain, id.app, id.stream)
    }

    fn lease_body(&self, state: LeaseState, now_ms: i64) -> Result<PutPayload, ClusterError> {
        let rec = LeaseRecord {
            node_id: self.node_id.clone(),
            instance: self.instance.clone(),
            state,
            renewed_ms: now_ms,
        };
        serde_json::to_vec(&rec)
            .map(PutPayload::from)
            .map_err(|source| ClusterError::Json {
                key: "lease".into(),
                source,
            })
    }

    /// Takes the stream's lease for a publish here, or says which node holds it.
    pub async fn claim(
        &self,
        id: &StreamId,
        takeover: bool,
        now_ms: i64,
    ) -> Result<Claim, ClusterError> {
        if self.leases.lock().contains_key(id) {
            // Held here already (a local duplicate: the hub decides; or a return inside
            // the continuation window: the renewal marks it live again).
            return Ok(Claim::Granted);
        }
        let path = self.path(&Self::lease_key(id))?;
        let ttl_ms = i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX);
        // A few rounds: each lost race re-reads what won it.
        for _ in 0..4 {
            let create = PutOptions::from(PutMode::Create);
            match self
                .store
                .put_opts(&path, self.lease_body(LeaseState::Live, now_ms)?, create)
                .await
            {
                Ok(r) => {
                    self.hold(id, version_of(r.e_tag, r.version));
                    return Ok(Claim::Granted);
                }
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let got = match self.store.get(&path).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let version = version_of(got.meta.e_tag.clone(), got.meta.version.clone());
            let bytes = got.bytes().await?;
            let lease: Option<LeaseRecord> = serde_json::from_slice(&bytes).ok();
            let why = match &lease {
                // Not one of ours: overwritten (under If-Match, so only once).
                None => "unreadable",
                Some(l) => match decide(l, &self.node_id, now_ms, ttl_ms, takeover) {
                    Decision::Take(why) => why,
                    Decision::Refuse => return Ok(Claim::HeldBy(l.node_id.clone())),
                },
            };
            let update = PutOptions::from(PutMode::Update(version));
            match self
                .store
                .put_opts(&path, self.lease_body(LeaseState::Live, now_ms)?, update)
                .await
            {
                Ok(r) => {
                    if let Some(l) = lease.filter(|l| l.node_id != self.node_id) {
                        info!(stream = %id, from = %l.node_id, "cluster: took the stream's lease ({why})");
                    }
                    self.hold(id, version_of(r.e_tag, r.version));
                    return Ok(Claim::Granted);
                }
                // Someone else changed it between our read and write: look again.
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Claim::HeldBy(
            "(contended: several nodes claimed it at once)".into(),
        ))
    }

    fn hold(&self, id: &StreamId, version: UpdateVersion) {
        self.leases.lock().insert(
            id.clone(),
            Held {
                version,
                conn_id: 0,
                live: true,
            },
        );
    }

    /// The publish of `conn_id` holds the claimed lease (registered in the hub).
    pub fn bind(&self, id: &StreamId, conn_id: u64) {
        if let Some(h) = self.leases.lock().get_mut(id) {
            h.conn_id = conn_id;
            h.live = true;
        }
        self.changed.notify_one();
    }

    /// The publish of `conn_id` ended (or never registered: `conn_id` 0 releases a
    /// claim the hub refused). The lease is released — or kept as `waiting` while a
    /// recording may continue with the stream's return.
    pub fn unbind(self: &Arc<Self>, id: &StreamId, conn_id: u64) {
        {
            let mut held = self.leases.lock();
            match held.get_mut(id) {
                Some(h) if h.conn_id == conn_id && !self.local.is_publishing(id) => {
                    h.live = false;
                }
                _ => return,
            }
        }
        self.changed.notify_one();
        let me = self.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let now_ms = chrono::Utc::now().timestamp_millis();
            me.renew_one(&id, now_ms).await;
        });
    }

    /// Renews one held lease (or releases it when nothing here needs it any more).
    async fn renew_one(&self, id: &StreamId, now_ms: i64) {
        let live_here = self.local.is_publishing(id);
        let (version, state) = {
            let mut held = self.leases.lock();
            let Some(h) = held.get_mut(id) else { return };
            if live_here {
                h.live = true;
            }
            let state = if h.live {
                LeaseState::Live
            } else if self.local.may_continue(id) {
                LeaseState::Waiting
            } else {
                LeaseState::Released
            };
            (h.version.clone(), state)
        };
        let Ok(path) = self.path(&Self::lease_key(id)) else {
            return;
        };
        let Ok(body) = self.lease_body(state, now_ms) else {
            return;
        };
        let res = self
            .store
            .put_opts(&path, body, PutOptions::from(PutMode::Update(version)))
            .await;
        let mut held = self.leases.lock();
        match res {
            Ok(_) if state == LeaseState::Released => {
                held.remove(id);
                drop(held);
                tracing::debug!(stream = %id, "cluster: lease released");
            }
            Ok(r) => {
                if let Some(h) = held.get_mut(id) {
                    h.version = version_of(r.e_tag, r.version);
                }
            }
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => {
                // Another node wrote it since our last renewal: it is theirs now.
                held.remove(id);
                drop(held);
                if live_here {
                    warn!(stream = %id, "cluster: another node took this stream's lease; ending the publish here");
                    self.local.end_publish(id);
                } else {
                    info!(stream = %id, "cluster: another node took this stream's lease while it waited to return");
                }
            }
            Err(e) => {
                drop(held);
                warn!(stream = %id, "cluster: cannot renew the stream's lease (another node may take it after lease_ttl): {e}");
            }
        }
    }
}

/// Renews every held lease every `lease_ttl / 3` until `stop`; then releases them.
pub async fn renewals(
    cluster: Arc<Cluster>,
    clock: Arc<dyn crate::clock::Clock>,
    stop: CancellationToken,
) {
    let every = cluster.lease_ttl / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let ids: Vec<StreamId> = cluster.leases.lock().keys().cloned().collect();
        let now_ms = clock.now_ms();
        for id in ids {
            cluster.renew_one(&id, now_ms).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(node: &str, state: LeaseState, renewed_ms: i64) -> LeaseRecord {
        LeaseRecord {
            node_id: node.into(),
            instance: "i".into(),
            state,
            renewed_ms,
        }
    }

    #[test]
    fn who_may_take_a_lease() {
        let ttl = 15_000;
        let now = 1_000_000;
        let fresh = lease("b", LeaseState::Live, now - 1_000);
        assert_eq!(decide(&fresh, "a", now, ttl, false), Decision::Refuse);
        assert!(matches!(
            decide(&fresh, "a", now, ttl, true),
            Decision::Take(_)
        ));
        // Our own lease from before a restart.
        assert!(matches!(
            decide(&fresh, "b", now, ttl, false),
            Decision::Take(_)
        ));
        let stale = lease("b", LeaseState::Live, now - ttl - 1);
        assert!(matches!(
            decide(&stale, "a", now, ttl, false),
            Decision::Take(_)
        ));
        let edge = lease("b", LeaseState::Live, now - ttl);
        assert_eq!(decide(&edge, "a", now, ttl, false), Decision::Refuse);
        for s in [LeaseState::Waiting, LeaseState::Released] {
            assert!(matches!(
                decide(&lease("b", s, now), "a", now, ttl, false),
                Decision::Take(_)
            ));
        }
    }
}
