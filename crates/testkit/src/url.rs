//! `rtmp://host[:port]/app[/more][?q]/stream[?query]` parsing.

use std::fmt;

/// A parsed RTMP push URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    pub host: String,
    pub port: u16,
    /// Application path, with its query if it has one (`live?vhost=a.com`).
    pub app: String,
    /// Stream key with its query (`cam1?token=x`); empty when the URL has no stream.
    pub stream: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError {
    pub url: String,
    pub reason: &'static str,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad RTMP URL {:?}: {}", self.url, self.reason)
    }
}

impl std::error::Error for UrlError {}

impl RtmpUrl {
    /// Parses a push URL. The stream is the last path segment; the app is everything
    /// between the host and it (so it may hold a query or several segments). A query on
    /// the stream may contain `/`: the split point is the last `/` before the last `?`
    /// when there is one, otherwise the last `/`.
    ///
    /// `rtmp://h/live` has app `live` and an empty stream (see [`RtmpUrl::app_only`]).
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let err = |reason| UrlError {
            url: url.to_string(),
            reason,
        };
        let rest = url
            .strip_prefix("rtmp://")
            .ok_or_else(|| err("scheme is not rtmp://"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let (h, after) = h.split_once(']').ok_or_else(|| err("unclosed [ in host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| err("bad port"))?,
                None if after.is_empty() => 1935,
                None => return Err(err("junk after ]")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| err("bad port"))?),
                None => (authority.to_string(), 1935),
            }
        };
        if host.is_empty() {
            return Err(err("empty host"));
        }
        if path.is_empty() {
            return Err(err("no app"));
        }
        let split = match path.rfind('?') {
            Some(q) => path[..q].rfind('/').or_else(|| path.rfind('/')),
            None => path.rfind('/'),
        };
        let (app, stream) = match split {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (path, ""),
        };
        if app.is_empty() {
            return Err(err("empty app"));
        }
        Ok(Self {
            host,
            port,
            app: app.to_string(),
            stream: stream.to_string(),
        })
    }

    /// Parses a URL that names only an app (`rtmp://h:1935/live`, `rtmp://h/live?vhost=a`),
    /// as `publish_many` takes: the whole path is the app.
    pub fn app_only(url: &str) -> Result<Self, UrlError> {
        let mut u = Self::parse(&format!("{}/x", url.trim_end_matches('/')))?;
        if u.stream != "x" {
            // the query held a '/': fall back to the whole path as app
            let path = url.strip_prefix("rtmp://").unwrap_or(url);
            u.app = path.split_once('/').map(|x| x.1).unwrap_or("").to_string();
        }
        u.stream.clear();
        Ok(u)
    }

    /// `host:port` for `TcpStream::connect`.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The tcUrl a client sends: `rtmp://host:port/app`.
    pub fn tc_url(&self) -> String {
        format!("rtmp://{}/{}", self.addr(), self.app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(u: &str) -> (String, u16, String, String) {
        let r = RtmpUrl::parse(u).unwrap();
        (r.host, r.port, r.app, r.stream)
    }

    fn t(h: &str, port: u16, a: &str, s: &str) -> (String, u16, String, String) {
        (h.into(), port, a.into(), s.into())
    }

    #[test]
    fn parses_push_urls() {
        assert_eq!(p("rtmp://h/live/cam1"), t("h", 1935, "live", "cam1"));
        assert_eq!(
            p("rtmp://127.0.0.1:19350/live/cam1"),
            t("127.0.0.1", 19350, "live", "cam1")
        );
        assert_eq!(
            p("rtmp://h/live/cam1?txSecret=ab&txTime=5F"),
            t("h", 1935, "live", "cam1?txSecret=ab&txTime=5F")
        );
        assert_eq!(
            p("rtmp://h/live?vhost=a.com/cam1"),
            t("h", 1935, "live?vhost=a.com", "cam1")
        );
        assert_eq!(
            p("rtmp://h/live?vhost=a.com/cam1?token=x"),
            t("h", 1935, "live?vhost=a.com", "cam1?token=x")
        );
        assert_eq!(
            p("rtmp://h/live/cam1?sig=a/b"),
            t("h", 1935, "live", "cam1?sig=a/b")
        );
        assert_eq!(p("rtmp://h/app/inst/s"), t("h", 1935, "app/inst", "s"));
        assert_eq!(p("rtmp://[::1]:1936/live/s"), t("::1", 1936, "live", "s"));
        assert_eq!(p("rtmp://h/live"), t("h", 1935, "live", ""));
        let u = RtmpUrl::parse("rtmp://h/live/s").unwrap();
        assert_eq!(u.tc_url(), "rtmp://h:1935/live");
        assert_eq!(u.addr(), "h:1935");
    }

    #[test]
    fn rejects_bad_urls() {
        for u in [
            "http://h/live/s",
            "rtmp:///live/s",
            "rtmp://h",
            "rtmp://h/",
            "rtmp://h:x/live/s",
            "rtmp://h:99999/live/s",
            "rtmp://h//s",
        ] {
            assert!(RtmpUrl::parse(u).is_err(), "{u}");
        }
    }

    #[test]
    fn app_only_urls() {
        let u = RtmpUrl::app_only("rtmp://h:1937/live").unwrap();
        assert_eq!(
            (u.port, u.app.as_str(), u.stream.as_str()),
            (1937, "live", "")
        );
        let u = RtmpUrl::app_only("rtmp://h/live?vhost=a.com").unwrap();
        assert_eq!(u.app, "live?vhost=a.com");
        let u = RtmpUrl::app_only("rtmp://h/live/").unwrap();
        assert_eq!(u.app, "live");
    }
}
