//! The callback outbox (R-CB-4): every event is a row before it is sent — a file event
//! in the same transaction that indexes its file (`index_in`), a status event on its
//! own — and leaves `pending` only when an endpoint answered 2xx (`sent`) or its
//! `max_age` passed (`failed`, kept for the API's retry).

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::Value;

use super::{Ctx, Db, DbError};
use crate::callback::event::NewEvent;

/// An event of the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Callback {
    pub id: i64,
    pub event_id: String,
    pub event_type: u32,
    pub url: String,
    pub order_key: String,
    pub body: Value,
    pub created_ms: i64,
    /// Start of its retry window: its creation, or its last retry over the API.
    pub since_ms: i64,
    pub status: String,
    pub attempts: u32,
    pub next_ms: i64,
    pub last_error: Option<String>,
    pub sent_ms: Option<i64>,
}

const COLUMNS: &str = "SELECT id, event_id, event_type, url, order_key, body, created_ms, \
     since_ms, status, attempts, next_ms, last_error, sent_ms FROM callbacks";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Callback, String)> {
    let body: String = r.get(5)?;
    Ok((
        Callback {
            id: r.get(0)?,
            event_id: r.get(1)?,
            event_type: r.get(2)?,
            url: r.get(3)?,
            order_key: r.get(4)?,
            body: Value::Null,
            created_ms: r.get(6)?,
            since_ms: r.get(7)?,
            status: r.get(8)?,
            attempts: r.get(9)?,
            next_ms: r.get(10)?,
            last_error: r.get(11)?,
            sent_ms: r.get(12)?,
        },
        body,
    ))
}

fn parse(rows: Vec<(Callback, String)>) -> Result<Vec<Callback>, DbError> {
    rows.into_iter()
        .map(|(mut c, body)| {
            c.body = serde_json::from_str(&body).map_err(|source| DbError::Json {
                op: "read callback",
                key: c.event_id.clone(),
                source,
            })?;
            Ok(c)
        })
        .collect()
}

/// Queues `ev` inside the caller's transaction. A second event with the same `dedup`
/// (a file indexed again) is dropped: true when it was queued.
pub(super) fn queue_in(tx: &Transaction<'_>, ev: &NewEvent, now_ms: i64) -> Result<bool, DbError> {
    let body = serde_json::to_string(&ev.body).map_err(|source| DbError::Json {
        op: "queue callback",
        key: ev.event_id.clone(),
        source,
    })?;
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO callbacks
                 (event_id, dedup, url, order_key, event_type, body, created_ms, since_ms,
                  status, attempts, next_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, 'pending', 0, ?7)",
        )
        .and_then(|mut st| {
            st.execute(params![
                ev.event_id,
                ev.dedup,
                ev.url,
                ev.order_key,
                ev.event_type,
                body,
                now_ms
            ])
        })
        .ctx("queue callback", &ev.event_id)?;
    Ok(n > 0)
}

/// Counts for `/healthz` and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallbackCounts {
    pub pending: u64,
    pub failed: u64,
    /// Creation of the oldest pending event, unix ms.
    pub oldest_pending_ms: Option<i64>,
}

impl Db {
    /// Rung when an event was queued or made due again.
    pub fn callbacks_wake(&self) -> &tokio::sync::Notify {
        &self.shared.callbacks_wake
    }

    /// Queues a status event (R-CB-2); file events are queued by the indexing itself.
    pub async fn queue_callback(&self, ev: NewEvent) -> Result<(), DbError> {
        self.call("queue callback", move |c| {
            let now = super::now_ms();
            let id = ev.event_id.clone();
            c.write("queue callback", &id, |tx, _| queue_in(tx, &ev, now))?;
            c.shared.callbacks_wake.notify_one();
            Ok(())
        })
        .await
    }

    /// The events to send now: of each order key with pending events, its oldest, if
    /// due; at most `limit`, oldest due first. Also when the next one not yet due is.
    pub async fn callbacks_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<(Vec<Callback>, Option<i64>), DbError> {
        self.call("callbacks due", move |c| {
            let heads = "FROM callbacks c WHERE status = 'pending' AND id = (
                     SELECT min(id) FROM callbacks
                     WHERE status = 'pending' AND order_key = c.order_key)";
            let sql = format!(
                "{} {heads} AND next_ms <= ?1 ORDER BY next_ms, id LIMIT ?2",
                COLUMNS.replace("FROM callbacks", "")
            );
            let rows =
                c.db.prepare_cached(&sql)
                    .and_then(|mut st| {
                        st.query_map(params![now_ms, limit as i64], row)?
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .ctx("callbacks due", now_ms)?;
            let next: Option<i64> =
                c.db.query_row(
                    &format!("SELECT min(next_ms) {heads} AND next_ms > ?1"),
                    [now_ms],
                    |r| r.get(0),
                )
                .ctx("callbacks due", now_ms)?;
            Ok((parse(rows)?, next))
        })
        .await
    }

    /// The oldest pending event of `order_key`, due or not: what the sender sends next
    /// for that key once its previous event is settled (one index seek, where
    /// [`Db::callbacks_due`] walks every pending event).
    pub async fn callback_head(&self, order_key: String) -> Result<Option<Callback>, DbError> {
        self.call("callback head", move |c| {
            let rows =
                c.db.prepare_cached(&format!(
                    "{COLUMNS} WHERE status = 'pending' AND order_key = ?1 ORDER BY id LIMIT 1"
                ))
                .and_then(|mut st| {
                    st.query_map([&order_key], row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .ctx("callback head", &order_key)?;
            Ok(parse(rows)?.pop())
        })
        .await
    }

    /// An endpoint took the event.
    pub async fn callback_sent(&self, id: i64, now_ms: i64) -> Result<(), DbError> {
        self.update(
            id,
            "UPDATE callbacks SET status = 'sent', sent_ms = ?2, attempts = attempts + 1,
                 last_error = NULL WHERE id = ?1 AND status = 'pending'",
            now_ms,
            None,
        )
        .await
    }

    /// An attempt failed; the next one is at `next_ms`.
    pub async fn callback_retry_at(
        &self,
        id: i64,
        next_ms: i64,
        error: String,
    ) -> Result<(), DbError> {
        self.update(
            id,
            "UPDATE callbacks SET next_ms = ?2, attempts = attempts + 1, last_error = ?3
                 WHERE id = ?1 AND status = 'pending'",
            next_ms,
            Some(error),
        )
        .await
    }

    /// The last attempt inside `max_age` failed: kept as `failed`, out of the way of
    /// the stream's later events.
    pub async fn callback_failed(
        &self,
        id: i64,
        now_ms: i64,
        error: String,
    ) -> Result<(), DbError> {
        self.update(
            id,
            "UPDATE callbacks SET status = 'failed', next_ms = ?2, attempts = attempts + 1,
                 last_error = ?3 WHERE id = ?1 AND status = 'pending'",
            now_ms,
            Some(error),
        )
        .await
    }

    async fn update(
        &self,
        id: i64,
        sql: &'static str,
        at: i64,
        error: Option<String>,
    ) -> Result<(), DbError> {
        self.call("update callback", move |c| {
            c.write("update callback", &id, |tx, _| {
                tx.prepare_cached(sql)
                    .and_then(|mut st| match &error {
                        Some(e) => st.execute(params![id, at, e]),
                        None => st.execute(params![id, at]),
                    })
                    .ctx("update callback", id)?;
                Ok(())
            })
        })
        .await
    }

    /// Events by status (all when None), newest first, for the API.
    pub async fn callbacks(
        &self,
        status: Option<String>,
        limit: usize,
    ) -> Result<Vec<Callback>, DbError> {
        self.call("list callbacks", move |c| {
            let rows =
                c.db.prepare_cached(&format!(
                    "{COLUMNS} WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC LIMIT ?2"
                ))
                .and_then(|mut st| {
                    st.query_map(params![status, limit as i64], row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .ctx("list callbacks", "")?;
            parse(rows)
        })
        .await
    }

    /// Sends a failed event again, now, with a new `max_age` window; the same event id.
    /// None when there is no such event; Some(false) when it is not failed.
    pub async fn retry_callback(&self, event_id: String) -> Result<Option<bool>, DbError> {
        self.call("retry callback", move |c| {
            let now = super::now_ms();
            let status: Option<String> =
                c.db.query_row(
                    "SELECT status FROM callbacks WHERE event_id = ?1",
                    [&event_id],
                    |r| r.get(0),
                )
                .optional()
                .ctx("retry callback", &event_id)?;
            match status.as_deref() {
                None => Ok(None),
                Some("failed") => {
                    c.write("retry callback", &event_id, |tx, _| {
                        tx.execute(
                            "UPDATE callbacks SET status = 'pending', next_ms = ?2, since_ms = ?2
                                 WHERE event_id = ?1",
                            params![event_id, now],
                        )
                        .ctx("retry callback", &event_id)?;
                        Ok(())
                    })?;
                    c.shared.callbacks_wake.notify_one();
                    Ok(Some(true))
                }
                Some(_) => Ok(Some(false)),
            }
        })
        .await
    }

    pub async fn callback_counts(&self) -> Result<CallbackCounts, DbError> {
        self.call("count callbacks", |c| {
            let (pending, oldest): (i64, Option<i64>) =
                c.db.query_row(
                    "SELECT count(*), min(created_ms) FROM callbacks WHERE status = 'pending'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .ctx("count callbacks", "pending")?;
            let failed: i64 =
                c.db.query_row(
                    "SELECT count(*) FROM callbacks WHERE status = 'failed'",
                    [],
                    |r| r.get(0),
                )
                .ctx("count callbacks", "failed")?;
            Ok(CallbackCounts {
                pending: pending.max(0) as u64,
                failed: failed.max(0) as u64,
                oldest_pending_ms: oldest,
            })
        })
        .await
    }

    /// Forgets sent events older than `before_ms` (failed ones stay until retried).
    pub async fn prune_sent_callbacks(&self, before_ms: i64) -> Result<usize, DbError> {
        self.call("prune callbacks", move |c| {
            c.write("prune callbacks", &before_ms, |tx, _| {
                tx.execute(
                    "DELETE FROM callbacks WHERE status = 'sent' AND sent_ms < ?1",
                    [before_ms],
                )
                .ctx("prune callbacks", before_ms)
            })
        })
        .await
    }
}
