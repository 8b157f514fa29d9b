//! The domain: the vocabulary that ingest, the recording supervisor, the task scheduler,
//! the recordings index and the HTTP API share. Pure data and rules, no I/O: stream
//! identity and name validation (R-IN-2, R-IN-3), rule matching (R-TP-3), the recording
//! plan a template makes (R-TP-1), a record task and its status (R-TK), and the record of
//! a stored file (R-QY-1). Wire shapes of the API live beside the routes (`api/`).

use media::Millis;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes, longer than 128")]
    TooLong(usize),
    #[error("is `.` or `..`")]
    Dots,
    #[error(
        "starts with `.` (dot-names are the daemon's own: `.liverec/` state, the spool's database)"
    )]
    LeadingDot,
    #[error("contains byte 0x{0:02x}; allowed are A-Z a-z 0-9 . _ -")]
    BadByte(u8),
}

pub fn validate_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 128 {
        return Err(NameError::TooLong(s.len()));
    }
    if s == "." || s == ".." {
        return Err(NameError::Dots);
    }
    // R-IN-3: a pushed name can never reach `.liverec/` (tasks, rules, templates, the
    // catalog), the spool's own files, or a name spool recovery passes by.
    if s.starts_with('.') {
        return Err(NameError::LeadingDot);
    }
    if let Some(b) = s
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
    {
        return Err(NameError::BadByte(b));
    }
    Ok(())
}

/// Who a publish is: the key of the stream registry and of every object the stream makes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamId {
    pub domain: String,
    pub app: String,
    pub stream: String,
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.domain, self.app, self.stream)
    }
}

impl StreamId {
    pub fn new(domain: &str, app: &str, stream: &str) -> Self {
        StreamId {
            domain: domain.to_string(),
            app: app.to_string(),
            stream: stream.to_string(),
        }
    }
}

/// R-TP-3's priority of a rule for a stream (1 = most specific: domain+app+stream, then
/// domain+stream, domain+app, domain), or None when it does not match. Empty `app` or
/// `stream` in the rule match any.
pub fn rule_priority(
    rule_domain: &str,
    rule_app: &str,
    rule_stream: &str,
    id: &StreamId,
) -> Option<u8> {
    if rule_domain != id.domain
        || (!rule_app.is_empty() && rule_app != id.app)
        || (!rule_stream.is_empty() && rule_stream != id.stream)
    {
        return None;
    }
    Some(match (rule_app.is_empty(), rule_stream.is_empty()) {
        (false, false) => 1,
        (true, false) => 2,
        (false, true) => 3,
        (true, true) => 4,
    })
}

/// One format of a template, as the TOML file and the API write it (R-TP-1).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FormatConfig {
    #[serde(default)]
    pub enable: bool,
    #[serde(default = "default_interval")]
    pub record_interval: u64,
    /// Seconds the files are kept (0 = forever, R-ST-5).
    #[serde(default)]
    pub storage_time: u64,
    #[serde(default)]
    pub file_name: Option<String>,
    /// HLS segment target length in seconds (R-FM-2).
    #[serde(default)]
    pub segment_duration: Option<f64>,
    /// Splicing window (R-SP-1); parsed so configs written for later releases load.
    #[serde(default)]
    pub continue_timeout: Option<u64>,
}

fn default_interval() -> u64 {
    1800
}

pub const DEFAULT_FILE_NAME: &str = "{StreamID}_{StartYear}-{StartMonth}-{StartDay}-{StartHour}-{StartMinute}-{StartSecond}_{EndYear}-{EndMonth}-{EndDay}-{EndHour}-{EndMinute}-{EndSecond}";

/// One format a stream records, resolved from a template.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub format: record::Format,
    /// HLS segment target length (R-FM-2).
    pub segment_ms: Millis,
    pub record_interval_ms: Millis,
    pub hard_cap_ms: Millis,
    pub file_name: String,
    /// Seconds the files are kept (0 = forever, R-ST-5).
    pub storage_time: u64,
    /// How long a recording stays open after its push ends, for the stream to come back
    /// (R-SP-1; zero = not at all).
    pub continue_timeout: std::time::Duration,
}

impl Plan {
    /// The plan of one enabled format; files are cut regardless at `hard_cap_factor` ×
    /// the interval (R-SG-1).
    pub fn new(format: record::Format, f: &FormatConfig, hard_cap_factor: f64) -> Plan {
        let interval = f.record_interval.min(i64::MAX as u64 / 1000) as i64 * 1000;
        Plan {
            format,
            segment_ms: Millis::from_secs_f64(f.segment_duration.unwrap_or(10.0)),
            record_interval_ms: Millis::from_ms(interval),
            hard_cap_ms: Millis::from_ms((interval as f64 * hard_cap_factor) as i64),
            storage_time: f.storage_time,
            continue_timeout: std::time::Duration::from_secs(f.continue_timeout.unwrap_or(0)),
            file_name: f
                .file_name
                .clone()
                .unwrap_or_else(|| DEFAULT_FILE_NAME.to_string()),
        }
    }

    /// Template 0, built in: FLV in 1800 s files kept forever (R-TP-1, R-OP-1).
    pub fn builtin(hard_cap_factor: f64) -> Plan {
        let builtin = FormatConfig {
            enable: true,
            record_interval: 1800,
            storage_time: 0,
            file_name: None,
            segment_duration: None,
            continue_timeout: None,
        };
        Plan::new(record::Format::Flv, &builtin, hard_cap_factor)
    }
}

/// Where a record task is (R-TK-2…4). `Finished` and `Stopped` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// The window has not opened yet.
    Scheduled,
    /// The window is open but the stream is not live.
    Waiting,
    /// The window is open and the stream is being recorded.
    Recording,
    /// `end_time` passed.
    Finished,
    /// Stopped over the API (R-TK-4).
    Stopped,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Scheduled,
        TaskStatus::Waiting,
        TaskStatus::Recording,
        TaskStatus::Finished,
        TaskStatus::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Scheduled => "scheduled",
            TaskStatus::Waiting => "waiting",
            TaskStatus::Recording => "recording",
            TaskStatus::Finished => "finished",
            TaskStatus::Stopped => "stopped",
        }
    }

    /// Nothing more happens to the task: only pruning after `[record] task_history`.
    pub fn is_final(self) -> bool {
        matches!(self, TaskStatus::Finished | TaskStatus::Stopped)
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record task (R-TK-1): as the API shows it and the state store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    pub task_id: String,
    pub domain: String,
    pub app: String,
    pub stream: String,
    /// Unix seconds.
    pub start_time: i64,
    pub end_time: i64,
    pub template_id: i64,
    pub extension: String,
    pub stream_type: u8,
    pub preroll_seconds: u64,
    pub created: i64,
    /// Created without `start_time` (R-TK-3): starts at the newest keyframe, not after.
    #[serde(default)]
    pub realtime: bool,
    pub status: TaskStatus,
}

impl Task {
    pub fn stream_id(&self) -> StreamId {
        StreamId::new(&self.domain, &self.app, &self.stream)
    }
}

/// One stored recording file (R-QY-1), indexed when the store confirmed it. The index,
/// the store's catalog and the recordings API share it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct FileRecord {
    pub key: String,
    pub format: String,
    pub domain: String,
    pub app: String,
    pub stream: String,
    #[serde(default)]
    pub task_id: String,
    /// Wall-clock start and end, unix milliseconds.
    pub start_ms: i64,
    pub end_ms: i64,
    pub duration_ms: i64,
    pub size: u64,
    /// Unix seconds after which retention deletes it (0: kept forever). In the store's
    /// catalog so a node that lost its spool can expire it again after a rebuild.
    #[serde(default)]
    pub expires: i64,
    /// The interruptions a spliced file spans (R-SP-4); empty for an unspliced one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<Gap>,
    /// The node that stored it when several share the store (R-SC-1); empty for this
    /// node's own files in its index. Its owner expires it, or after `orphan_after`
    /// another node does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Where the file's event goes once it is indexed (R-CB-1); carried with the file
    /// through the spool and the node database, never into the catalog or the API.
    /// Boxed: most records (every one read back from the index) carry none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<Box<Notice>>,
}

/// What a recording's callbacks need beyond the file itself (R-CB-1), fixed when the
/// recording starts: the endpoint (the template's `callback_url`, else `[callback]
/// url`), the publish's query with its secrets redacted, the task's `extension`, and
/// the base of `video_url`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Notice {
    pub url: String,
    #[serde(default)]
    pub stream_param: String,
    #[serde(default)]
    pub extension: String,
    #[serde(default)]
    pub public_base_url: String,
    /// Whether file events (100) are wanted; status events (332) may be wanted alone.
    #[serde(default)]
    pub file_events: bool,
    #[serde(default)]
    pub status_events: bool,
}

/// One interruption inside a spliced file (R-SP-4): the push ended at `start_time_ms`
/// and the next began at `end_time_ms` (wall clock, unix ms, the arrivals of the last
/// and first packets around it); `offset_ms` is where it sits in the file's media.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Gap {
    pub start_time_ms: i64,
    pub end_time_ms: i64,
    pub offset_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_priority_follows_r_tp_3() {
        let id = StreamId::new("d", "live", "s");
        assert_eq!(rule_priority("d", "live", "s", &id), Some(1));
        assert_eq!(rule_priority("d", "", "s", &id), Some(2));
        assert_eq!(rule_priority("d", "live", "", &id), Some(3));
        assert_eq!(rule_priority("d", "", "", &id), Some(4));
        assert_eq!(rule_priority("other", "", "", &id), None);
        assert_eq!(rule_priority("d", "vod", "", &id), None);
        assert_eq!(rule_priority("d", "", "t", &id), None);
    }

    #[test]
    fn task_status_is_lowercase_on_the_wire() {
        for s in TaskStatus::ALL {
            let j = serde_json::to_value(s).unwrap();
            assert_eq!(j, serde_json::Value::String(s.as_str().into()));
            assert_eq!(serde_json::from_value::<TaskStatus>(j).unwrap(), s);
        }
        assert!(serde_json::from_str::<TaskStatus>("\"paused\"").is_err());
    }

    #[test]
    fn plan_caps_and_defaults() {
        let p = Plan::builtin(1.5);
        assert_eq!(p.record_interval_ms, Millis::from_ms(1_800_000));
        assert_eq!(p.hard_cap_ms, Millis::from_ms(2_700_000));
        assert_eq!(p.segment_ms, Millis::from_ms(10_000));
        assert_eq!(p.file_name, DEFAULT_FILE_NAME);
        // A huge interval saturates instead of overflowing.
        let f = FormatConfig {
            enable: true,
            record_interval: u64::MAX,
            storage_time: 0,
            file_name: None,
            segment_duration: Some(2.0),
            continue_timeout: None,
        };
        assert!(Plan::new(record::Format::Hls, &f, 1.0).record_interval_ms > Millis::ZERO);
    }
}
