//! Stream identity (R-IN-2) and name validation (R-IN-3).
//!
//! Names become path segments of object keys, so they are checked here, at publish
//! time, before any file, key or log line is built from them (reliability.md N1/N2:
//! `..`, `/`, NUL and over-long names have written files outside the recording root in
//! other servers). Validation refuses; it never normalises, so two names can never map
//! to one key.

use std::net::IpAddr;

pub use crate::model::{validate_name, NameError, StreamId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("domain {value:?} {reason}")]
    Domain { value: String, reason: NameError },
    #[error("app {value:?} {reason}")]
    App { value: String, reason: NameError },
    #[error("stream {value:?} {reason}")]
    Stream { value: String, reason: NameError },
    #[error("domain {value:?} (from vhost=/domain=) is not one of [rtmp] domains nor the default_domain")]
    DomainNotListed { value: String },
}

/// Resolves the identity of a publish (R-IN-2).
///
/// `app` and `name` come without their query strings; `query` is the joined query of
/// app and stream key. The values in the error are for logging: they are escaped with
/// `{:?}` so control bytes cannot forge log lines.
pub fn resolve(
    tc_url: Option<&str>,
    app: &str,
    name: &str,
    query: Option<&str>,
    domains: &[String],
    default_domain: &str,
) -> Result<StreamId, IdentityError> {
    let from_query = query.and_then(|q| {
        query_pairs(q)
            .find(|(k, _)| *k == "vhost" || *k == "domain")
            .map(|(_, v)| v.to_string())
    });
    let domain = match from_query {
        // The query may only select a domain the operator listed (or the default):
        // otherwise any publisher could invent top-level directories of the storage
        // (issue 14). With `domains` empty that leaves the default domain alone.
        Some(d)
            if d.eq_ignore_ascii_case(default_domain)
                || domains.iter().any(|l| l.eq_ignore_ascii_case(&d)) =>
        {
            d.to_ascii_lowercase()
        }
        Some(d) => return Err(IdentityError::DomainNotListed { value: d }),
        None => {
            let host = tc_url.and_then(tc_url_host);
            match host {
                Some(h)
                    if h.parse::<IpAddr>().is_err()
                        && domains.iter().any(|d| d.eq_ignore_ascii_case(&h)) =>
                {
                    h.to_ascii_lowercase()
                }
                _ => default_domain.to_string(),
            }
        }
    };
    validate_name(&domain).map_err(|reason| IdentityError::Domain {
        value: domain.clone(),
        reason,
    })?;
    validate_name(app).map_err(|reason| IdentityError::App {
        value: app.to_string(),
        reason,
    })?;
    validate_name(name).map_err(|reason| IdentityError::Stream {
        value: name.to_string(),
        reason,
    })?;
    Ok(StreamId {
        domain,
        app: app.to_string(),
        stream: name.to_string(),
    })
}

/// The host of `rtmp://host[:port]/app...`, without brackets for IPv6.
fn tc_url_host(tc_url: &str) -> Option<String> {
    let rest = tc_url.split_once("://").map(|(_, r)| r)?;
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_string())
}

fn query_pairs(q: &str) -> impl Iterator<Item = (&str, &str)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Query keys whose values are secrets (R-IN-2, reliability.md N8).
const SECRET_KEYS: &[&str] = &[
    "txsecret",
    "token",
    "sign",
    "secret",
    "key",
    "pass",
    "password",
    "auth_key",
    "signature",
];

/// A URL, app or key with the secret values of its query (after the first `?`)
/// replaced by `***`, for logs.
pub fn redact_url(s: &str) -> String {
    match s.split_once('?') {
        Some((head, q)) => format!("{head}?{}", redact_query(q)),
        None => s.to_string(),
    }
}

/// The query string with secret values replaced by `***`, for logs, callbacks and the API.
pub fn redact_query(q: &str) -> String {
    query_pairs(q)
        .map(|(k, v)| {
            if SECRET_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s)) {
                format!("{k}=***")
            } else if v.is_empty() {
                k.to_string()
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> Vec<String> {
        vec!["live.example.com".into()]
    }

    #[test]
    fn names_are_validated_not_normalised() {
        assert!(validate_name("cam-1_A.b").is_ok());
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(".."), Err(NameError::Dots));
        assert_eq!(validate_name("."), Err(NameError::Dots));
        assert_eq!(validate_name("..."), Err(NameError::LeadingDot));
        assert!(validate_name("a...").is_ok());
        assert_eq!(validate_name("a/b"), Err(NameError::BadByte(b'/')));
        assert_eq!(validate_name("a\0b"), Err(NameError::BadByte(0)));
        assert_eq!(validate_name("a\\b"), Err(NameError::BadByte(b'\\')));
        assert_eq!(validate_name("%2e%2e"), Err(NameError::BadByte(b'%')));
        assert_eq!(validate_name("é"), Err(NameError::BadByte(0xc3)));
        assert!(validate_name(&"a".repeat(128)).is_ok());
        assert_eq!(
            validate_name(&"a".repeat(300)),
            Err(NameError::TooLong(300))
        );
    }

    #[test]
    fn domain_comes_from_tcurl_host_when_configured() {
        let id = resolve(
            Some("rtmp://live.example.com:1935/live"),
            "live",
            "cam",
            None,
            &domains(),
            "localhost",
        )
        .unwrap();
        assert_eq!(id.domain, "live.example.com");
        let ip = resolve(
            Some("rtmp://127.0.0.1/live"),
            "live",
            "cam",
            None,
            &domains(),
            "localhost",
        )
        .unwrap();
        assert_eq!(ip.domain, "localhost");
        let unknown = resolve(
            Some("rtmp://other.org/live"),
            "live",
            "cam",
            None,
            &domains(),
            "localhost",
        )
        .unwrap();
        assert_eq!(unknown.domain, "localhost");
        let none = resolve(None, "live", "cam", None, &domains(), "dflt").unwrap();
        assert_eq!(none.domain, "dflt");
        let v6 = resolve(
            Some("rtmp://[::1]:1935/live"),
            "live",
            "cam",
            None,
            &domains(),
            "localhost",
        )
        .unwrap();
        assert_eq!(v6.domain, "localhost");
    }

    #[test]
    fn query_selects_only_a_listed_domain() {
        let id = resolve(
            Some("rtmp://127.0.0.1/live"),
            "live",
            "cam",
            Some("a=1&vhost=Live.Example.com"),
            &domains(),
            "localhost",
        )
        .unwrap();
        assert_eq!(id.domain, "live.example.com");
        let default = resolve(
            None,
            "live",
            "cam",
            Some("domain=localhost"),
            &[],
            "localhost",
        );
        assert_eq!(default.unwrap().domain, "localhost");
        for q in [
            "domain=../x",
            "vhost=tenant1",
            "vhost=.liverec",
            "vhost=.index",
        ] {
            let bad = resolve(None, "live", "cam", Some(q), &domains(), "localhost");
            assert!(
                matches!(bad, Err(IdentityError::DomainNotListed { .. })),
                "{q}: {bad:?}"
            );
            let bad = resolve(None, "live", "cam", Some(q), &[], "localhost");
            assert!(
                matches!(bad, Err(IdentityError::DomainNotListed { .. })),
                "{q} with no domains listed: {bad:?}"
            );
        }
    }

    /// Issue 14: no pushed name may start with a dot — `.liverec/state/…` is the
    /// daemon's own state, and dot-names were skipped by spool recovery.
    #[test]
    fn dot_names_are_refused() {
        assert!(matches!(
            resolve(None, ".liverec", "state", None, &[], "d"),
            Err(IdentityError::App {
                reason: NameError::LeadingDot,
                ..
            })
        ));
        assert!(matches!(
            resolve(None, "live", ".hidden", None, &[], "d"),
            Err(IdentityError::Stream {
                reason: NameError::LeadingDot,
                ..
            })
        ));
        assert!(resolve(None, "live", "a.b", None, &[], "d").is_ok());
    }

    #[test]
    fn bad_app_or_stream_is_refused() {
        assert!(matches!(
            resolve(None, "..", "cam", None, &[], "d"),
            Err(IdentityError::App { .. })
        ));
        assert!(matches!(
            resolve(None, "live", "a/../b", None, &[], "d"),
            Err(IdentityError::Stream { .. })
        ));
        assert!(matches!(
            resolve(None, "live", "", None, &[], "d"),
            Err(IdentityError::Stream { .. })
        ));
    }

    #[test]
    fn urls_are_redacted_after_their_query_mark() {
        assert_eq!(
            redact_url("rtmp://h:1935/live?txSecret=abc&txTime=1/x"),
            "rtmp://h:1935/live?txSecret=***&txTime=1/x"
        );
        assert_eq!(redact_url("live"), "live");
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_query("txSecret=abc&txTime=5F5E0FF&token=t&x"),
            "txSecret=***&txTime=5F5E0FF&token=***&x"
        );
    }
}
