//! Publish authentication (R-SEC-1): who may publish to a domain (or one app of it).
//! Off without `[[publish_auth]]` entries. A push that matches an entry (the most
//! specific: domain+app over domain) is accepted when any method the entry configures
//! accepts it: a signed push URL (`txSecret`/`txTime`, the reference product's), a static
//! stream key (`?key=`), or the `on_publish` HTTP hook. Secrets are compared in constant
//! time and never logged.

use std::net::SocketAddr;
use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::config::PublishAuth;
use crate::model::StreamId;

/// Why a publish was refused; `label` is the metric's `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The entry wants credentials and the push carries none.
    Missing,
    /// A `txSecret` or `key` that no configured key produces.
    Wrong,
    /// A valid `txSecret` whose `txTime` has passed (or is not hex).
    Expired,
    /// The hook answered, and not 2xx.
    HookDenied(u16),
    /// The hook did not answer (timeout, connection refused) and fail_open is off.
    HookUnreachable(String),
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Missing => "auth_missing",
            Refusal::Wrong => "auth_wrong",
            Refusal::Expired => "auth_expired",
            Refusal::HookDenied(_) => "hook_denied",
            Refusal::HookUnreachable(_) => "hook_unreachable",
        }
    }

    /// For the log and the publisher; never contains a secret.
    pub fn message(&self) -> String {
        match self {
            Refusal::Missing => "publish authentication required (txSecret/txTime or key)".into(),
            Refusal::Wrong => "publish authentication failed: wrong txSecret or key".into(),
            Refusal::Expired => "publish authentication failed: txTime has passed".into(),
            Refusal::HookDenied(s) => format!("the on_publish hook refused the publish (HTTP {s})"),
            Refusal::HookUnreachable(e) => {
                format!("the on_publish hook did not answer ({e}) and on_publish_fail_open is off")
            }
        }
    }
}

/// The entry that governs `id`: domain+app over domain alone.
pub fn entry_for<'a>(auth: &'a [PublishAuth], id: &StreamId) -> Option<&'a PublishAuth> {
    let domain = |a: &&PublishAuth| a.domain.eq_ignore_ascii_case(&id.domain);
    auth.iter()
        .filter(domain)
        .find(|a| a.app == id.app)
        .or_else(|| auth.iter().filter(domain).find(|a| a.app.is_empty()))
}

fn param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Whether `given` equals one of `keys`, in time that does not depend on where they
/// differ (every key is compared).
fn any_equal<'a>(given: &str, keys: impl IntoIterator<Item = &'a str>) -> bool {
    let mut ok = subtle::Choice::from(0);
    for k in keys {
        ok |= given.as_bytes().ct_eq(k.as_bytes());
    }
    ok.into()
}

/// A signed push URL: `txSecret = md5(key + stream + txTime)` (lowercase hex; any case
/// accepted), `txTime` the expiry as hex unix seconds. None when the entry has no keys
/// or the push has no `txSecret`.
pub fn check_tx_secret(
    keys: &[String],
    stream: &str,
    query: Option<&str>,
    now_s: u64,
) -> Option<Result<(), Refusal>> {
    if keys.is_empty() {
        return None;
    }
    let secret = param(query, "txSecret")?.to_ascii_lowercase();
    let Some(tx_time) = param(query, "txTime") else {
        return Some(Err(Refusal::Missing));
    };
    let expected: Vec<String> = keys
        .iter()
        .map(|k| crate::callback::sign::md5_hex(&[k, stream, tx_time]))
        .collect();
    if !any_equal(&secret, expected.iter().map(String::as_str)) {
        return Some(Err(Refusal::Wrong));
    }
    match u64::from_str_radix(tx_time, 16) {
        Ok(expiry) if expiry >= now_s => Some(Ok(())),
        _ => Some(Err(Refusal::Expired)),
    }
}

/// A static stream key, `?key=`. None when the entry has no keys or the push no `key`.
pub fn check_stream_key(
    keys: &[String],
    file_keys: &[String],
    query: Option<&str>,
) -> Option<Result<(), Refusal>> {
    if keys.is_empty() && file_keys.is_empty() {
        return None;
    }
    let given = param(query, "key")?;
    let all = keys.iter().chain(file_keys).map(String::as_str);
    Some(if any_equal(given, all) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    })
}

/// The `on_publish` hook: POST the publish (with its raw query: the hook may hold the
/// secrets to check); 2xx allows.
pub async fn ask_hook(
    client: &reqwest::Client,
    entry: &PublishAuth,
    id: &StreamId,
    peer: SocketAddr,
    query: Option<&str>,
) -> Result<(), Refusal> {
    let params: serde_json::Map<String, serde_json::Value> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), serde_json::Value::from(v))
        })
        .collect();
    let body = serde_json::json!({
        "action": "on_publish",
        "domain": id.domain,
        "app": id.app,
        "stream": id.stream,
        "client_ip": peer.ip().to_string(),
        "query": query.unwrap_or(""),
        "params": params,
    });
    let sent = client
        .post(&entry.on_publish)
        .timeout(Duration::from_secs(entry.on_publish_timeout.max(1)))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(Refusal::HookDenied(r.status().as_u16())),
        Err(e) if entry.on_publish_fail_open => {
            tracing::warn!(stream = %id, "the on_publish hook did not answer ({}); allowed by on_publish_fail_open", hook_error(&e));
            Ok(())
        }
        Err(e) => Err(Refusal::HookUnreachable(hook_error(&e))),
    }
}

fn hook_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        "request failed".into()
    }
}

/// Decides a publish of `id` (R-SEC-1): Ok(Some(entry)) when an entry allowed it,
/// Ok(None) when no entry governs the stream.
pub async fn authorize<'a>(
    client: &reqwest::Client,
    auth: &'a [PublishAuth],
    id: &StreamId,
    peer: SocketAddr,
    query: Option<&str>,
    now_s: u64,
) -> Result<Option<&'a PublishAuth>, Refusal> {
    let Some(entry) = entry_for(auth, id) else {
        return Ok(None);
    };
    let tx = check_tx_secret(&entry.tx_secret_keys, &id.stream, query, now_s);
    let key = check_stream_key(&entry.stream_keys, &entry.file_keys, query);
    if matches!(tx, Some(Ok(()))) || matches!(key, Some(Ok(()))) {
        return Ok(Some(entry));
    }
    if !entry.on_publish.is_empty() {
        return ask_hook(client, entry, id, peer, query)
            .await
            .map(|()| Some(entry));
    }
    // The most telling refusal of the methods the push tried.
    Err(match (tx, key) {
        (Some(Err(r)), _) if r != Refusal::Missing => r,
        (_, Some(Err(r))) => r,
        (Some(Err(r)), None) => r,
        _ => Refusal::Missing,
    })
}

/// Tells the entry's `on_unpublish` URL that a publish it allowed ended; the answer is
/// ignored (a notification, not a decision).
pub fn notify_unpublish(client: reqwest::Client, url: String, id: StreamId, peer: SocketAddr) {
    tokio::spawn(async move {
        let body = serde_json::json!({
            "action": "on_unpublish",
            "domain": id.domain, "app": id.app, "stream": id.stream,
            "client_ip": peer.ip().to_string(),
        });
        let r = client
            .post(&url)
            .timeout(Duration::from_secs(3))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        if let Err(e) = r {
            tracing::debug!(stream = %id, "on_unpublish not delivered: {}", hook_error(&e));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(domain: &str, app: &str) -> PublishAuth {
        PublishAuth {
            domain: domain.into(),
            app: app.into(),
            tx_secret_keys: vec!["k1".into(), "k2".into()],
            stream_keys: vec!["s3cr3t".into()],
            stream_keys_file: None,
            on_publish: String::new(),
            on_publish_timeout: 3,
            on_publish_fail_open: false,
            on_unpublish: String::new(),
            file_keys: vec!["fromfile".into()],
        }
    }

    #[test]
    fn the_most_specific_entry_governs() {
        let auth = vec![entry("d", ""), entry("d", "live")];
        let id = StreamId::new("d", "live", "s");
        assert_eq!(entry_for(&auth, &id).unwrap().app, "live");
        assert_eq!(
            entry_for(&auth, &StreamId::new("d", "vod", "s"))
                .unwrap()
                .app,
            ""
        );
        assert!(entry_for(&auth, &StreamId::new("e", "live", "s")).is_none());
    }

    #[test]
    fn tx_secret_takes_either_key_until_tx_time() {
        let keys = vec!["k1".to_string(), "k2".to_string()];
        // md5("k2" + "cam" + "5F5E0FF"), from `printf k2cam5F5E0FF | md5sum`.
        let good = "5120578e5e249cbd321103a87ff3b84a";
        let q = format!("txSecret={good}&txTime=5F5E0FF");
        assert_eq!(
            check_tx_secret(&keys, "cam", Some(&q), 0x5F5E0FF),
            Some(Ok(()))
        );
        let upper = format!("txSecret={}&txTime=5F5E0FF", good.to_uppercase());
        assert_eq!(check_tx_secret(&keys, "cam", Some(&upper), 1), Some(Ok(())));
        assert_eq!(
            check_tx_secret(&keys, "cam", Some(&q), 0x5F5E100),
            Some(Err(Refusal::Expired))
        );
        assert_eq!(
            check_tx_secret(&keys, "other", Some(&q), 1),
            Some(Err(Refusal::Wrong))
        );
        assert_eq!(check_tx_secret(&keys, "cam", Some("x=1"), 1), None);
        assert_eq!(check_tx_secret(&[], "cam", Some(&q), 1), None);
    }

    #[test]
    fn stream_keys_come_from_the_list_and_the_file() {
        let keys = vec!["s3cr3t".to_string()];
        let file = vec!["fromfile".to_string()];
        assert_eq!(
            check_stream_key(&keys, &file, Some("key=s3cr3t")),
            Some(Ok(()))
        );
        assert_eq!(
            check_stream_key(&keys, &file, Some("key=fromfile")),
            Some(Ok(()))
        );
        assert_eq!(
            check_stream_key(&keys, &file, Some("key=s3cr3")),
            Some(Err(Refusal::Wrong))
        );
        assert_eq!(check_stream_key(&keys, &file, None), None);
    }

    #[tokio::test]
    async fn any_configured_method_allows_and_refusals_say_why() {
        let client = reqwest::Client::new();
        let auth = vec![entry("d", "")];
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let id = StreamId::new("d", "live", "cam");
        let ok = authorize(&client, &auth, &id, peer, Some("key=s3cr3t"), 1).await;
        assert!(matches!(ok, Ok(Some(_))));
        let none = authorize(&client, &auth, &id, peer, None, 1).await;
        assert_eq!(none.unwrap_err(), Refusal::Missing);
        let wrong = authorize(&client, &auth, &id, peer, Some("key=nope"), 1).await;
        assert_eq!(wrong.unwrap_err(), Refusal::Wrong);
        let other = StreamId::new("elsewhere", "live", "cam");
        assert!(matches!(
            authorize(&client, &auth, &other, peer, None, 1).await,
            Ok(None)
        ));
        assert!(!Refusal::Wrong.message().contains("s3cr3t"));
    }
}
