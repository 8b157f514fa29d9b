//! The web console (issue 16) and the stored files it plays.
//!
//! The console is four static files compiled into the binary with `include_bytes!`: a
//! fixed, small list needs no embedding crate, and nothing is read from disk at run time,
//! so the page always matches the daemon serving it. The page itself is public (it holds
//! no data); every request it makes goes to `/v1/…` with the bearer token.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::wire::error;
use super::Ctxt;
use crate::sink::store::Backend;

/// (path under `/ui/`, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/style.css"),
    ),
    (
        "vendor/hls.js/hls.light.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/vendor/hls.js/hls.light.min.js"),
    ),
];

/// `GET /ui`: to `ui/`, relative, so the page's own relative URLs resolve under
/// whatever prefix a reverse proxy serves the daemon at.
pub async fn redirect() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "ui/")]).into_response()
}

pub async fn index() -> Response {
    asset("")
}

pub async fn file(Path(path): Path<String>) -> Response {
    asset(&path)
}

fn asset(path: &str) -> Response {
    let Some((_, kind, bytes)) = FILES.iter().find(|(p, _, _)| *p == path) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such console file").into_response();
    };
    let mut r = Response::new(Body::from(*bytes));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Revalidated every time: a daemon upgraded behind the same URL serves its own page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // The page holds a token: no framing by other sites, no referrer to leak paths.
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

/// The content type of a stored file, by the extension the formats give it.
fn media_type(key: &str) -> &'static str {
    match key.rsplit_once('.').map(|(_, e)| e) {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        Some("mp4") => "video/mp4",
        Some("aac") => "audio/aac",
        Some("flv") => "video/x-flv",
        _ => "application/octet-stream",
    }
}

/// A key the files route serves: a relative path of plain names, outside the daemon's
/// own state (`.liverec/`: tasks, leases, the catalog), which the API shows its own way.
fn servable(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(".liverec/")
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\\'))
}

/// `GET /v1/files/{key}` (issue 16): a stored recording's bytes, from the recordings
/// directory or the bucket, streamed. The console plays them with the bearer token; HLS
/// playlists name their segments relatively, so a player resolves them here too.
pub async fn stored(State(ctx): Ctxt, Path(key): Path<String>) -> Response {
    if !servable(&key) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            "a key is a relative path of names, outside .liverec/",
        )
        .into_response();
    }
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no stored file {key:?}"),
        )
        .into_response()
    };
    let (body, len) = match ctx.sink.backend().as_ref() {
        Backend::Local { root } => {
            let f = match tokio::fs::File::open(root.join(&key)).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return not_found(),
                Err(e) => return read_failed(&key, &e.to_string()),
            };
            match f.metadata().await {
                Ok(m) if m.is_file() => {}
                Ok(_) => return not_found(),
                Err(e) => return read_failed(&key, &e.to_string()),
            }
            let len = f.metadata().await.map(|m| m.len()).ok();
            (Body::from_stream(tokio_util::io::ReaderStream::new(f)), len)
        }
        Backend::S3(s3) => {
            let path = match s3.path(&key) {
                Ok(p) => p,
                Err(_) => return not_found(),
            };
            match object_store::ObjectStoreExt::get(s3.store.as_ref(), &path).await {
                Ok(got) => {
                    let len = got.meta.size;
                    (Body::from_stream(got.into_stream()), Some(len))
                }
                Err(object_store::Error::NotFound { .. }) => return not_found(),
                Err(e) => return read_failed(&key, &e.to_string()),
            }
        }
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media_type(&key)),
    );
    if let Some(n) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    // An open HLS recording's playlist grows: a player must not keep an old copy.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn read_failed(key: &str, why: &str) -> Response {
    tracing::warn!(key, "cannot read a stored file for /v1/files: {why}");
    error(StatusCode::BAD_GATEWAY, "store_read_failed", why).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_keys_outside_the_state_are_served() {
        assert!(servable("live/app/cam/cam_1.flv"));
        assert!(servable("live/app/cam/cam_1.m3u8"));
        for bad in [
            "",
            "/etc/passwd",
            "live/../../etc/passwd",
            "live/./a.flv",
            "live//a.flv",
            ".liverec/state/tasks/x.json",
            "a\\..\\b",
        ] {
            assert!(!servable(bad), "{bad:?} must be refused");
        }
    }

    #[test]
    fn every_console_file_is_embedded_and_typed() {
        for (path, kind, bytes) in FILES {
            assert!(!bytes.is_empty(), "{path:?} is empty");
            assert!(kind.contains("charset=utf-8"), "{path:?}");
        }
        assert_eq!(media_type("a/b.m3u8"), "application/vnd.apple.mpegurl");
        assert_eq!(media_type("a/b.s3.ts"), "video/mp2t");
    }
}
