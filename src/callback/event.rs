//! The bodies of the events (R-CB-1, R-CB-2), built when the event is queued so the
//! outbox holds exactly what is sent (only `t` and `sign`, which expire, are added at
//! each attempt). Field names are the reference product's, snake_case.

use serde_json::{json, Value};

use crate::model::{FileRecord, Notice, StreamId};

/// R-CB-1's event type: a finished, stored file.
pub const FILE: u32 = 100;
/// R-CB-2's event type: a recording's status changed.
pub const STATUS: u32 = 332;

/// What a status event says happened (R-CB-2), plus the node-wide spool-quota events
/// (R-ST-4's "status callback").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordEvent {
    StartSucceeded,
    StartFailed,
    Paused,
    Resumed,
    Error,
    Ended,
    SpoolQuotaReached,
    SpoolQuotaCleared,
}

impl RecordEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordEvent::StartSucceeded => "record_start_succeeded",
            RecordEvent::StartFailed => "record_start_failed",
            RecordEvent::Paused => "record_paused",
            RecordEvent::Resumed => "record_resumed",
            RecordEvent::Error => "record_error",
            RecordEvent::Ended => "record_ended",
            RecordEvent::SpoolQuotaReached => "spool_quota_reached",
            RecordEvent::SpoolQuotaCleared => "spool_quota_cleared",
        }
    }
}

/// One event ready for the outbox: its body, where it goes, and the order it keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: String,
    pub event_type: u32,
    pub url: String,
    /// Events with the same key are delivered in the order they were queued: one
    /// endpoint's view of one stream (R-CB-4).
    pub order_key: String,
    /// Set for file events: a file indexed twice (a recovery after a crash between the
    /// index and its acknowledgement) is announced once.
    pub dedup: Option<String>,
    pub body: Value,
}

pub fn new_event_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn order_key(url: &str, stream: Option<&StreamId>) -> String {
    match stream {
        Some(s) => format!("{url} {s}"),
        None => format!("{url} "),
    }
}

/// Recordings of HLS are listed as `hls`; the spool's name for them is the extension.
fn file_format(format: &str) -> &str {
    match format {
        "m3u8" => "hls",
        f => f,
    }
}

fn split_ms(ms: i64) -> (i64, i64) {
    (ms.div_euclid(1000), ms.rem_euclid(1000) * 1000)
}

/// The file event of `rec` (stored at `rec.key`), or None when its recording wants none.
pub fn file_event(rec: &FileRecord, notice: &Notice) -> Option<NewEvent> {
    if !notice.file_events || notice.url.is_empty() {
        return None;
    }
    let event_id = new_event_id();
    let (start_time, start_usec) = split_ms(rec.start_ms);
    let (end_time, end_usec) = split_ms(rec.end_ms);
    let base = notice.public_base_url.trim_end_matches('/');
    let video_url = if base.is_empty() {
        String::new()
    } else {
        format!("{base}/{}", rec.key)
    };
    let stream = StreamId {
        domain: rec.domain.clone(),
        app: rec.app.clone(),
        stream: rec.stream.clone(),
    };
    let body = json!({
        "event_type": FILE,
        "event_id": event_id,
        "domain": rec.domain,
        "app": rec.app,
        "stream_id": rec.stream,
        "stream_param": notice.stream_param,
        "file_format": file_format(&rec.format),
        // The recordings API names a file by its key, so the key is its id.
        "file_id": rec.key,
        "object_key": rec.key,
        "video_url": video_url,
        "task_id": rec.task_id,
        "extension": notice.extension,
        "start_time": start_time,
        "end_time": end_time,
        "start_time_usec": start_usec,
        "end_time_usec": end_usec,
        // Whole seconds as the reference product sends them; the exact span is in the
        // *_usec fields.
        "duration": (rec.duration_ms.max(0) + 500) / 1000,
        "file_size": rec.size,
        "gaps": rec.gaps,
    });
    Some(NewEvent {
        event_type: FILE,
        url: notice.url.clone(),
        order_key: order_key(&notice.url, Some(&stream)),
        dedup: Some(format!("{FILE}:{}:{}", notice.url, rec.key)),
        event_id,
        body,
    })
}

/// What a status event is about: a recording (its stream, task and format) or, for the
/// spool-quota events, the node.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub stream: Option<StreamId>,
    pub task_id: String,
    pub format: String,
}

/// A status event, or None when its recording wants none.
pub fn status_event(
    notice: &Notice,
    subject: &Subject,
    what: RecordEvent,
    reason: &str,
    now_ms: i64,
    extra: Value,
) -> Option<NewEvent> {
    if !notice.status_events || notice.url.is_empty() {
        return None;
    }
    let event_id = new_event_id();
    let (time, usec) = split_ms(now_ms);
    let (domain, app, stream) = match &subject.stream {
        Some(s) => (s.domain.as_str(), s.app.as_str(), s.stream.as_str()),
        None => ("", "", ""),
    };
    let mut body = json!({
        "event_type": STATUS,
        "event_id": event_id,
        "record_event": what.as_str(),
        "domain": domain,
        "app": app,
        "stream_id": stream,
        "stream_param": notice.stream_param,
        "task_id": subject.task_id,
        "extension": notice.extension,
        "file_format": file_format(&subject.format),
        "event_time": time,
        "event_time_usec": usec,
        "reason": reason,
    });
    if let (Some(b), Value::Object(more)) = (body.as_object_mut(), extra) {
        b.extend(more);
    }
    Some(NewEvent {
        event_type: STATUS,
        url: notice.url.clone(),
        order_key: order_key(&notice.url, subject.stream.as_ref()),
        dedup: None,
        event_id,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Gap;

    fn notice() -> Notice {
        Notice {
            url: "http://cb/x".into(),
            stream_param: "txSecret=***".into(),
            extension: "ext".into(),
            public_base_url: "https://cdn.example/".into(),
            file_events: true,
            status_events: true,
        }
    }

    #[test]
    fn a_file_event_carries_the_reference_fields() {
        let rec = FileRecord {
            key: "d/live/s/a.m3u8".into(),
            format: "hls".into(),
            domain: "d".into(),
            app: "live".into(),
            stream: "s".into(),
            task_id: "t1".into(),
            start_ms: 1_700_000_000_250,
            end_ms: 1_700_000_010_999,
            duration_ms: 10_749,
            size: 1234,
            gaps: vec![Gap {
                start_time_ms: 1,
                end_time_ms: 2,
                offset_ms: 3,
            }],
            ..Default::default()
        };
        let e = file_event(&rec, &notice()).expect("wanted");
        let b = &e.body;
        assert_eq!(b["event_type"], 100);
        assert_eq!(b["event_id"], e.event_id.as_str());
        assert_eq!(b["stream_id"], "s");
        assert_eq!(b["file_format"], "hls");
        assert_eq!(b["start_time"], 1_700_000_000);
        assert_eq!(b["start_time_usec"], 250_000);
        assert_eq!(b["end_time"], 1_700_000_010);
        assert_eq!(b["end_time_usec"], 999_000);
        assert_eq!(b["duration"], 11);
        assert_eq!(b["file_size"], 1234);
        assert_eq!(b["video_url"], "https://cdn.example/d/live/s/a.m3u8");
        assert_eq!(b["gaps"][0]["offset_ms"], 3);
        assert_eq!(b["stream_param"], "txSecret=***");
        assert_eq!(b["extension"], "ext");
        assert_eq!(e.order_key, "http://cb/x d/live/s");
        let n = Notice {
            file_events: false,
            ..notice()
        };
        assert!(
            file_event(&rec, &n).is_none(),
            "events = [332] sends no file event"
        );
    }

    #[test]
    fn quota_events_have_no_stream_and_share_one_order() {
        let e = status_event(
            &notice(),
            &Subject::default(),
            RecordEvent::SpoolQuotaReached,
            "spool full",
            5_001,
            json!({"spool_bytes": 9}),
        )
        .expect("wanted");
        assert_eq!(e.body["record_event"], "spool_quota_reached");
        assert_eq!(e.body["event_time"], 5);
        assert_eq!(e.body["event_time_usec"], 1000);
        assert_eq!(e.body["spool_bytes"], 9);
        assert_eq!(e.body["stream_id"], "");
        assert_eq!(e.order_key, "http://cb/x ");
    }
}
