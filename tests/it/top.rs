//! `enalysis-ingest top` against a running daemon: `--once` prints what the daemon did, and
//! anything but a daemon's metrics is one clear error line.

use std::time::{Duration, Instant};

use crate::common;
use crate::support::{Cmd, Traffic};

/// The cells of the row labelled `what` in `--once` output (its label stripped).
fn row<'a>(stdout: &'a str, what: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(what))
        .unwrap_or_else(|| panic!("no row {what:?} in:\n{stdout}"))
}

#[tokio::test]
async fn once_prints_what_a_running_daemon_has_done() {
    let port = common::free_port();
    let _traffic = Traffic::start(port).await;
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let out = Cmd::new(&["top", "--once", "--url", &url]).run();
    let took = started.elapsed();
    out.assert_ok();
    // Two scrapes a second apart.
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let text = &out.stdout;
    assert!(
        text.starts_with(&format!("enalysis-ingest top: {url}/metrics\n")),
        "{text}"
    );
    assert!(text.contains("\nThroughput, over "), "{text}");
    let messages = Traffic::ACCEPTED / 2 + Traffic::REJECTED.len() as i64;
    // Nothing was published during the second: rates 0, totals what Traffic sent.
    for (what, cells) in [
        ("messages in", format!("0.0/s  total {messages}")),
        (
            "readings stored",
            format!("0.0/s  total {}", Traffic::ACCEPTED),
        ),
        ("readings duplicate", "0.0/s  total 0".to_string()),
        ("readings corrected", "0.0/s  total 0".to_string()),
        (
            "readings rejected",
            format!("0.0/s  total {}", Traffic::REJECTED.len()),
        ),
        ("database errors", "0.0/s  total 0".to_string()),
        ("mqtt", "connected  reconnects 0".to_string()),
        ("p99", "no commit".to_string()),
        ("readings buffered", "0".to_string()),
        ("bytes buffered", "0 B".to_string()),
        ("messages unacked", "0".to_string()),
    ] {
        assert_eq!(row(text, what).trim(), cells, "row {what}:\n{text}");
    }
    for reason in Traffic::REJECTED {
        assert_eq!(row(text, reason).trim(), "0.0/s  total 1", "{text}");
    }
    assert!(
        row(text, "resident memory").trim().ends_with("MiB"),
        "{text}"
    );
}

#[tokio::test]
async fn anything_but_a_daemons_metrics_is_one_error_line() {
    let port = common::free_port();
    let _traffic = Traffic::start(port).await;
    let closed = common::free_port();
    for (url, needle) in [
        (
            format!("http://127.0.0.1:{closed}"),
            format!(
                "cannot read http://127.0.0.1:{closed}/metrics: cannot connect to 127.0.0.1:{closed}"
            ),
        ),
        // The daemon's own listener, other paths: a body that is not the text format, a 404.
        (
            format!("http://127.0.0.1:{port}/healthz"),
            "not the Prometheus text format: line 1: ok has no value".to_string(),
        ),
        (
            format!("http://127.0.0.1:{port}/nothing-here"),
            "the server answered 404 Not Found".to_string(),
        ),
        (
            format!("https://127.0.0.1:{port}"),
            "only http:// URLs".to_string(),
        ),
    ] {
        let out = Cmd::new(&["top", "--once", "--url", &url]).run();
        out.assert_failed_with(&needle);
    }
    // Without --once it needs a terminal; the test's stdout is a pipe.
    Cmd::new(&["top", "--url", &format!("http://127.0.0.1:{port}")])
        .run()
        .assert_failed_with("top needs a terminal on stdout; use --once");
}
