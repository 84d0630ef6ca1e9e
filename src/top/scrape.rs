//! One GET of a daemon's `/metrics` over plain HTTP/1.1 (the listener has no TLS), parsed.
//! hyper is already in the tree for axum and the exporter; no other HTTP client is added.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header;
use hyper_util::rt::TokioIo;

use super::exposition::{self, ParseError};
use super::view::Scrape;
use crate::telemetry::names;

/// Far above the daemon's few dozen KiB, far below trouble: a wrong URL pointing at a large
/// file fails fast instead of filling memory.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Where to scrape: `http://host:port[/path]`, `/metrics` when the URL has no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as used, for display.
    pub url: String,
    /// `host:port` to connect to (IPv6 in brackets) and to send as `Host`.
    authority: String,
    path_and_query: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("{url:?} is not a URL: {source}")]
    BadUrl {
        url: String,
        source: url::ParseError,
    },
    #[error("{0:?}: only http:// URLs (the daemon's listener has no TLS), with a host")]
    Unsupported(String),
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the server answered {0}")]
    Status(hyper::StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the response is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("reading the response: {0}")]
    Body(String),
    #[error("the response is not UTF-8 text")]
    NotUtf8,
    #[error("not the Prometheus text format: {0}")]
    Parse(#[from] ParseError),
    #[error("no {0} in the response: not an enalysis-ingest /metrics")]
    NotIngest(&'static str),
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, ScrapeError> {
        let parsed = url::Url::parse(url).map_err(|source| ScrapeError::BadUrl {
            url: url.to_string(),
            source,
        })?;
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            None => return Err(ScrapeError::Unsupported(url.to_string())),
        };
        if parsed.scheme() != "http" {
            return Err(ScrapeError::Unsupported(url.to_string()));
        }
        let port = parsed.port_or_known_default().unwrap_or(80);
        let mut path_and_query = match parsed.path() {
            "" | "/" => "/metrics".to_string(),
            p => p.to_string(),
        };
        if let Some(q) = parsed.query() {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        let authority = format!("{host}:{port}");
        Ok(Target {
            url: format!("http://{authority}{path_and_query}"),
            authority,
            path_and_query,
        })
    }
}

/// GETs and parses the target's metrics, within `timeout`. The response must carry the
/// daemon's metrics (`ingest_messages_received_total`, exported from the start), so a URL of
/// some other service is an error rather than a screen of dashes.
pub async fn fetch(target: &Target, timeout: Duration) -> Result<Scrape, ScrapeError> {
    let body = tokio::time::timeout(timeout, get(target))
        .await
        .map_err(|_| ScrapeError::Timeout(timeout))??;
    let at = Instant::now();
    let text = std::str::from_utf8(&body).map_err(|_| ScrapeError::NotUtf8)?;
    let metrics = exposition::parse(text)?;
    if metrics.sum(names::MESSAGES_RECEIVED).is_none() {
        return Err(ScrapeError::NotIngest(names::MESSAGES_RECEIVED));
    }
    Ok(Scrape { at, metrics })
}

async fn get(target: &Target) -> Result<Bytes, ScrapeError> {
    let stream = tokio::net::TcpStream::connect(&target.authority)
        .await
        .map_err(|source| ScrapeError::Connect {
            authority: target.authority.clone(),
            source,
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection future does the I/O; it ends with the response or with an error, which
    // `send_request` or the body then reports.
    let io = tokio::spawn(connection);
    let request = hyper::Request::get(target.path_and_query.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::ACCEPT, "text/plain")
        .body(Empty::<Bytes>::new())?;
    let result = async {
        let response = sender.send_request(request).await?;
        if response.status() != hyper::StatusCode::OK {
            return Err(ScrapeError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ScrapeError::TooLarge
                } else {
                    ScrapeError::Body(e.to_string())
                }
            })?;
        Ok(body.to_bytes())
    }
    .await;
    io.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_host_a_port_and_the_metrics_path() {
        for (url, expected) in [
            ("http://127.0.0.1:9464", "http://127.0.0.1:9464/metrics"),
            ("http://127.0.0.1:9464/", "http://127.0.0.1:9464/metrics"),
            (
                "http://localhost:19464/metrics",
                "http://localhost:19464/metrics",
            ),
            ("http://[::1]:9464", "http://[::1]:9464/metrics"),
            ("http://example.test/m?x=1", "http://example.test:80/m?x=1"),
        ] {
            let t = Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(t.url, expected);
        }
        let t = Target::parse("http://[::1]:9464").expect("ipv6");
        assert_eq!(t.authority, "[::1]:9464");
        for bad in [
            "https://127.0.0.1:9464",
            "127.0.0.1:9464",
            "unix:/x",
            "not a url",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
