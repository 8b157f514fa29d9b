//! Callbacks (R-CB-1…4): what liverec tells a platform about its recordings. Events are
//! rows of the node database's outbox before anything is sent (`db/callbacks.rs`), file
//! events in the transaction that indexes the file; [`sender`] delivers them at least
//! once, in order per stream and endpoint, signed at each attempt ([`sign`]).

pub mod event;
pub mod sender;
pub mod sign;

use serde_json::Value;
use tracing::warn;

use crate::clock::Clock as _;
use crate::config::Loaded;
use crate::db::Db;
use crate::model::{Notice, StreamId};
use event::{RecordEvent, Subject};

/// The callback target of a recording that starts now under `template_id` (R-CB-1):
/// the template's `callback_url`, else `[callback] url`; None when neither is set or
/// `[callback] events` wants nothing.
pub fn notice(
    config: &Loaded,
    template_id: i64,
    query: Option<&str>,
    extension: &str,
) -> Option<Notice> {
    let cb = &config.config.callback;
    let url = config
        .template(template_id)
        .and_then(|t| t.callback_url.clone())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| cb.url.clone());
    let file_events = cb.events.contains(&event::FILE);
    let status_events = cb.events.contains(&event::STATUS);
    if url.is_empty() || !(file_events || status_events) {
        return None;
    }
    Some(Notice {
        url,
        stream_param: query
            .map(crate::ingest::identity::redact_query)
            .unwrap_or_default(),
        extension: extension.to_string(),
        public_base_url: config.config.storage.public_base_url.clone(),
        file_events,
        status_events,
    })
}

/// The node-wide target (no template), for the spool-quota events.
pub fn node_notice(config: &Loaded) -> Option<Notice> {
    notice(config, -1, None, "")
}

/// What a recording says about itself (R-CB-2): queued in the background so a recorder
/// never waits on the database; a failure to queue is logged.
#[derive(Clone)]
pub struct StatusReporter {
    pub db: Db,
    pub notice: Option<Notice>,
    pub subject: Subject,
}

impl StatusReporter {
    pub fn new(
        db: Db,
        notice: Option<Notice>,
        stream: &StreamId,
        task_id: &str,
        format: &str,
    ) -> Self {
        StatusReporter {
            db,
            notice,
            subject: Subject {
                stream: Some(stream.clone()),
                task_id: task_id.to_string(),
                format: format.to_string(),
            },
        }
    }

    pub fn report(&self, what: RecordEvent, reason: &str) {
        let Some(n) = &self.notice else { return };
        queue_status(&self.db, n, &self.subject, what, reason, Value::Null);
    }
}

/// Queues a status event in the background.
pub fn queue_status(
    db: &Db,
    notice: &Notice,
    subject: &Subject,
    what: RecordEvent,
    reason: &str,
    extra: Value,
) {
    let now = crate::clock::SystemClock.now_ms();
    let Some(ev) = event::status_event(notice, subject, what, reason, now, extra) else {
        return;
    };
    let db = db.clone();
    tokio::spawn(async move {
        let id = ev.event_id.clone();
        if let Err(e) = db.queue_callback(ev).await {
            warn!(event_id = %id, record_event = what.as_str(), "status callback not queued: {e}");
        }
    });
}

/// A publish refused before any recording could start (spool full, too many streams):
/// `record_start_failed` with the reason, to the stream's template's endpoint (R-CB-2).
pub fn publish_refused(db: &Db, config: &Loaded, id: &StreamId, query: Option<&str>, reason: &str) {
    let Some(n) = notice(config, config.template_for(id).0, query, "") else {
        return;
    };
    let subject = Subject {
        stream: Some(id.clone()),
        ..Subject::default()
    };
    queue_status(
        db,
        &n,
        &subject,
        RecordEvent::StartFailed,
        reason,
        Value::Null,
    );
}

/// The spool-quota events (R-ST-4's status callback): one when the spool reaches its
/// quota (publishes are refused from then on), one when it has room again. Polled once
/// a second, so an episode shorter than that may go unreported; the refusals themselves
/// are in the metrics and the log.
/// `spool` says (full, used bytes, quota bytes).
pub async fn watch_spool_quota(
    db: Db,
    spool: impl Fn() -> (bool, u64, u64) + Send + 'static,
    config: std::sync::Arc<crate::config::RunningConfig>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut full = false;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let (now_full, used, max) = spool();
        if now_full == full {
            continue;
        }
        full = !full;
        let Some(n) = node_notice(&config.snapshot()) else {
            continue;
        };
        let (what, reason) = if full {
            (
                RecordEvent::SpoolQuotaReached,
                "the spool reached spool.max_bytes: new publishes are refused",
            )
        } else {
            (RecordEvent::SpoolQuotaCleared, "the spool has room again")
        };
        let extra = serde_json::json!({"spool_bytes": used, "spool_max_bytes": max});
        queue_status(&db, &n, &Subject::default(), what, reason, extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(toml_text: &str) -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, toml_text).unwrap();
        crate::config::load(Some(&p)).unwrap()
    }

    /// R-CB-1: a template's `callback_url` wins over `[callback] url`; without either
    /// there is no target; `events` decides which kinds go; the query is redacted.
    #[test]
    fn the_templates_url_wins_and_events_narrow_what_is_sent() {
        let both = loaded(
            "[callback]\nurl = \"http://global/x\"\n[[template]]\nid = 1\ncallback_url = \"http://tpl/y\"\nflv = { enable = true }\n[[template]]\nid = 2\nflv = { enable = true }\n",
        );
        let n = notice(&both, 1, Some("txSecret=abc&a=1"), "ext").unwrap();
        assert_eq!(n.url, "http://tpl/y");
        assert_eq!(n.stream_param, "txSecret=***&a=1");
        assert_eq!(n.extension, "ext");
        assert!(n.file_events && n.status_events);
        assert_eq!(notice(&both, 2, None, "").unwrap().url, "http://global/x");
        assert_eq!(node_notice(&both).unwrap().url, "http://global/x");

        let template_only = loaded(
            "[[template]]\nid = 1\ncallback_url = \"http://tpl/y\"\nflv = { enable = true }\n",
        );
        assert!(notice(&template_only, 1, None, "").is_some());
        assert!(
            notice(&template_only, 0, None, "").is_none(),
            "no url, no target"
        );
        assert!(node_notice(&template_only).is_none());

        let files_only = loaded("[callback]\nurl = \"http://g/\"\nevents = [100]\n");
        let n = notice(&files_only, 0, None, "").unwrap();
        assert!(n.file_events && !n.status_events);
        let none = loaded("[callback]\nurl = \"http://g/\"\nevents = []\n");
        assert!(notice(&none, 0, None, "").is_none());
    }
}
