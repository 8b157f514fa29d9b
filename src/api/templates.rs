//! Templates and rules over the HTTP API (R-TP-5): created, replaced and deleted here,
//! persisted in the state store, merged with the config file's (which stay read-only over
//! the API) and validated exactly like them.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;
use tracing::info;

use super::wire::{error, Reply, RuleBody, TemplateBody};
use super::Ctx;
use crate::config::running::Edit;
use crate::config::{ApiItems, RunningConfig, Template};
use crate::state::State;

/// Makes `next` the API's templates and rules in the running config, if the merged
/// config is valid (not kept yet).
fn apply(edit: &Edit<'_>, next: &ApiItems) -> Result<(), Reply> {
    edit.apply(next).map_err(|errors| {
        let msg: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        error(StatusCode::BAD_REQUEST, "invalid", &msg.join("; "))
    })
}

/// Applies `next` (validated with the file's config), stores the change with `save`, and
/// keeps `next` as the API's items — or puts the running config back when storing fails.
async fn commit(
    edit: &mut Edit<'_>,
    next: ApiItems,
    save: impl std::future::Future<Output = Result<(), crate::state::StateError>>,
    exists_code: &str,
) -> Result<(), Reply> {
    apply(edit, &next)?;
    if let Err(e) = save.await {
        edit.revert();
        return Err(match e {
            // Made meanwhile by another node sharing the store.
            crate::state::StateError::Exists(what) => error(
                StatusCode::CONFLICT,
                exists_code,
                &format!("{what} was created elsewhere (another node sharing the store)"),
            ),
            e => stored_err(e),
        });
    }
    edit.keep(next);
    Ok(())
}

fn is_file_template(edit: &Edit<'_>, id: i64) -> bool {
    id == 0 || edit.file().config.templates.iter().any(|t| t.id == id)
}

fn stored_err(e: crate::state::StateError) -> Reply {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        &format!("could not store the change: {e}"),
    )
}

pub async fn create_template(ctx: Arc<Ctx>, mut body: TemplateBody) -> Reply {
    let mut edit = ctx.config.edit().await;
    let id = match body.id {
        Some(id) => id,
        None => {
            // The next id after every one in use.
            let cfg = ctx.config.snapshot();
            cfg.config
                .templates
                .iter()
                .map(|t| t.id)
                .max()
                .unwrap_or(0)
                .max(0)
                + 1
        }
    };
    if is_file_template(&edit, id) || edit.api().templates.contains_key(&id) {
        return error(
            StatusCode::CONFLICT,
            "template_exists",
            &format!("template {id} already exists"),
        );
    }
    body.id = Some(id);
    let template = body.clone().into_template(id);
    let mut next = edit.api().clone();
    next.templates.insert(id, template.clone());
    let key = id.to_string();
    let save = ctx.state.create("templates", &key, &body);
    if let Err(r) = commit(&mut edit, next, save, "template_exists").await {
        return r;
    }
    info!(template = id, "template created over the API");
    ctx.shared_changed().await;
    (StatusCode::CREATED, Json(api_template_json(&template)))
}

pub async fn put_template(ctx: Arc<Ctx>, id: i64, mut body: TemplateBody) -> Reply {
    let mut edit = ctx.config.edit().await;
    if is_file_template(&edit, id) {
        return error(
            StatusCode::FORBIDDEN,
            "read_only",
            &format!("template {id} comes from the config file; edit the file and reload"),
        );
    }
    if !edit.api().templates.contains_key(&id) {
        return error(
            StatusCode::NOT_FOUND,
            "template_not_found",
            &format!("no template {id}"),
        );
    }
    body.id = Some(id);
    let template = body.clone().into_template(id);
    let mut next = edit.api().clone();
    next.templates.insert(id, template.clone());
    let key = id.to_string();
    let save = ctx.state.put("templates", &key, &body);
    if let Err(r) = commit(&mut edit, next, save, "template_exists").await {
        return r;
    }
    info!(
        template = id,
        "template replaced over the API; new pushes use it"
    );
    ctx.shared_changed().await;
    (StatusCode::OK, Json(api_template_json(&template)))
}

pub async fn delete_template(ctx: Arc<Ctx>, id: i64) -> Reply {
    let mut edit = ctx.config.edit().await;
    if is_file_template(&edit, id) {
        return error(
            StatusCode::FORBIDDEN,
            "read_only",
            &format!("template {id} comes from the config file"),
        );
    }
    if !edit.api().templates.contains_key(&id) {
        return error(
            StatusCode::NOT_FOUND,
            "template_not_found",
            &format!("no template {id}"),
        );
    }
    let mut next = edit.api().clone();
    next.templates.remove(&id);
    // A rule (or the default) still naming it makes the merged config invalid.
    if let Err((_, Json(v))) = apply(&edit, &next) {
        return error(
            StatusCode::CONFLICT,
            "template_in_use",
            v["message"].as_str().unwrap_or("template in use"),
        );
    }
    if let Err(e) = ctx.state.delete("templates", &id.to_string()).await {
        edit.revert();
        return stored_err(e);
    }
    edit.keep(next);
    info!(template = id, "template deleted over the API");
    ctx.shared_changed().await;
    (StatusCode::OK, Json(serde_json::json!({ "deleted": id })))
}

pub async fn create_rule(ctx: Arc<Ctx>, mut body: RuleBody) -> Reply {
    let mut edit = ctx.config.edit().await;
    // The id is the rule's key (one template per key, R-TP-3), so creating it with an
    // exclusive create keeps the key unique across nodes sharing the store. Names are
    // [A-Za-z0-9._-], so `~` cannot occur in them.
    let id = format!("{}~{}~{}", body.domain, body.app, body.stream);
    body.rule_id = Some(id.clone());
    let mut next = edit.api().clone();
    next.rules.insert(id.clone(), body.rule());
    if edit.api().rules.contains_key(&id) {
        return error(
            StatusCode::CONFLICT,
            "rule_exists",
            &format!("a rule for {id} already exists"),
        );
    }
    if let Err((_, Json(v))) = apply(&edit, &next) {
        let msg = v["message"].as_str().unwrap_or("invalid rule").to_string();
        let (status, code) = if msg.contains("already exists") {
            (StatusCode::CONFLICT, "rule_exists")
        } else {
            (StatusCode::BAD_REQUEST, "invalid")
        };
        return error(status, code, &msg);
    }
    let save = ctx.state.create("rules", &id, &body);
    if let Err(r) = commit(&mut edit, next, save, "rule_exists").await {
        return r;
    }
    info!(rule = %id, template = body.template_id, "rule created over the API");
    ctx.shared_changed().await;
    (StatusCode::CREATED, Json(rule_json(&body, "api")))
}

pub async fn delete_rule(ctx: Arc<Ctx>, id: String) -> Reply {
    let mut edit = ctx.config.edit().await;
    if !edit.api().rules.contains_key(&id) {
        let code = if id.starts_with("config-") {
            return error(
                StatusCode::FORBIDDEN,
                "read_only",
                "rules from the config file are read-only over the API",
            );
        } else {
            "rule_not_found"
        };
        return error(StatusCode::NOT_FOUND, code, &format!("no rule {id:?}"));
    }
    let mut next = edit.api().clone();
    next.rules.remove(&id);
    let save = ctx.state.delete("rules", &id);
    if let Err(r) = commit(&mut edit, next, save, "rule_exists").await {
        return r;
    }
    info!(rule = %id, "rule deleted over the API");
    ctx.shared_changed().await;
    (StatusCode::OK, Json(serde_json::json!({ "deleted": id })))
}

pub fn api_template_json(t: &Template) -> Value {
    let mut v = template_json(t);
    v["source"] = "api".into();
    v
}

fn format_json(f: &crate::model::FormatConfig) -> Value {
    serde_json::json!({
        "enable": f.enable,
        "record_interval": f.record_interval,
        "storage_time": f.storage_time,
        "file_name": f.file_name.clone().unwrap_or_else(|| crate::model::DEFAULT_FILE_NAME.to_string()),
        "segment_duration": f.segment_duration,
        "continue_timeout": f.continue_timeout,
    })
}

/// A template as the API shows it (`source` = "config"; callers mark API ones).
pub fn template_json(t: &Template) -> Value {
    let mut v = serde_json::json!({ "id": t.id, "name": t.name, "source": "config" });
    for (k, f) in [
        ("flv", &t.flv),
        ("hls", &t.hls),
        ("mp4", &t.mp4),
        ("aac", &t.aac),
    ] {
        if let Some(f) = f {
            v[k] = format_json(f);
        }
    }
    if let Some(u) = &t.callback_url {
        v["callback_url"] = u.as_str().into();
    }
    v
}

pub fn rule_json(r: &RuleBody, source: &str) -> Value {
    serde_json::json!({
        "rule_id": r.rule_id, "domain": r.domain, "app": r.app, "stream": r.stream,
        "template_id": r.template_id, "source": source,
    })
}

/// Loads the API's templates and rules from the store and merges them (at start).
pub async fn load(config: &RunningConfig, state: &State) -> Result<(usize, usize), String> {
    let templates: Vec<TemplateBody> = state.list("templates").await.map_err(|e| e.to_string())?;
    let rules: Vec<RuleBody> = state.list("rules").await.map_err(|e| e.to_string())?;
    let mut items = ApiItems::default();
    for t in templates {
        if let Some(id) = t.id {
            items.templates.insert(id, t.into_template(id));
        }
    }
    for r in rules {
        if let Some(id) = &r.rule_id {
            items.rules.insert(id.clone(), r.rule());
        }
    }
    let n = (items.templates.len(), items.rules.len());
    let mut edit = config.edit().await;
    apply(&edit, &items).map_err(|(_, Json(v))| {
        format!(
            "the stored API templates/rules do not fit the config file: {}",
            v["message"]
        )
    })?;
    edit.keep(items);
    Ok(n)
}
