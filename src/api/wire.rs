//! The API's request and response shapes (SPEC §13), kept apart from the domain types
//! they convert into, so the wire format can stay stable while the model changes.

use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use crate::model::StreamId;
use crate::tasks::{NewTask, TaskFilter};

use crate::config::{Rule, Template};
use crate::model::FormatConfig;

pub type Reply = (StatusCode, Json<Value>);

/// The error shape of every route: a stable code and a message.
pub fn error(status: StatusCode, code: &str, message: &str) -> Reply {
    (
        status,
        Json(serde_json::json!({ "code": code, "message": message })),
    )
}

/// `POST /v1/tasks` (R-TK-1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    pub domain: String,
    pub app: String,
    pub stream: String,
    pub end_time: i64,
    #[serde(default)]
    pub start_time: Option<i64>,
    #[serde(default)]
    pub template_id: Option<i64>,
    #[serde(default)]
    pub extension: String,
    #[serde(default)]
    pub stream_type: u8,
    #[serde(default)]
    pub preroll_seconds: u64,
}

impl CreateTask {
    pub fn stream_id(&self) -> StreamId {
        StreamId::new(&self.domain, &self.app, &self.stream)
    }
}

impl From<CreateTask> for NewTask {
    fn from(c: CreateTask) -> NewTask {
        NewTask {
            domain: c.domain,
            app: c.app,
            stream: c.stream,
            end_time: c.end_time,
            start_time: c.start_time,
            template_id: c.template_id,
            extension: c.extension,
            stream_type: c.stream_type,
            preroll_seconds: c.preroll_seconds,
        }
    }
}

/// `GET /v1/recordings` query (R-QY-1): the filter and the page. Flat rather than two
/// `#[serde(flatten)]`ed structs, since a flattened query string loses its numbers'
/// types (serde_urlencoded hands them over as strings).
#[derive(Debug, Default, Deserialize)]
pub struct RecordingQuery {
    pub domain: Option<String>,
    pub app: Option<String>,
    pub stream: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub format: Option<String>,
    pub task_id: Option<String>,
    pub page_token: Option<String>,
    pub page_size: Option<usize>,
}

impl RecordingQuery {
    pub fn split(self) -> (crate::db::RecordingFilter, crate::db::PageRequest) {
        (
            crate::db::RecordingFilter {
                domain: self.domain,
                app: self.app,
                stream: self.stream,
                from: self.from,
                to: self.to,
                format: self.format,
                task_id: self.task_id,
            },
            crate::db::PageRequest {
                page_size: self.page_size,
                page_token: self.page_token,
            },
        )
    }
}

/// `GET /v1/tasks` query (R-TK-4).
#[derive(Debug, Default, Deserialize)]
pub struct TaskQuery {
    pub domain: Option<String>,
    pub app: Option<String>,
    pub stream: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub page_token: Option<String>,
    pub page_size: Option<usize>,
}

impl TaskQuery {
    pub fn filter(&self) -> TaskFilter {
        TaskFilter {
            domain: self.domain.clone(),
            app: self.app.clone(),
            stream: self.stream.clone(),
            from: self.from,
            to: self.to,
        }
    }
}

/// A template as the HTTP API takes it and stores it in the state store (R-TP-5): the
/// TOML shape in JSON, the id optional on create.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TemplateBody {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub flv: Option<FormatConfig>,
    #[serde(default)]
    pub hls: Option<FormatConfig>,
    #[serde(default)]
    pub mp4: Option<FormatConfig>,
    #[serde(default)]
    pub aac: Option<FormatConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

impl TemplateBody {
    pub fn into_template(self, id: i64) -> Template {
        Template {
            id,
            name: self.name,
            flv: self.flv,
            hls: self.hls,
            mp4: self.mp4,
            aac: self.aac,
            callback_url: self.callback_url,
        }
    }
}

/// A rule as the HTTP API takes it and stores it; `rule_id` is its key.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    #[serde(default)]
    pub rule_id: Option<String>,
    pub domain: String,
    #[serde(default)]
    pub app: String,
    #[serde(default)]
    pub stream: String,
    pub template_id: i64,
}

impl RuleBody {
    pub fn rule(&self) -> Rule {
        Rule {
            domain: self.domain.clone(),
            app: self.app.clone(),
            stream: self.stream.clone(),
            template_id: self.template_id,
        }
    }

    pub fn of(id: &str, r: &Rule) -> RuleBody {
        RuleBody {
            rule_id: Some(id.to_string()),
            domain: r.domain.clone(),
            app: r.app.clone(),
            stream: r.stream.clone(),
            template_id: r.template_id,
        }
    }
}
