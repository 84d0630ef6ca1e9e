//! The admin API under schemathesis (issue #11): the real daemon on a migrated, seeded database,
//! and `schemathesis run` with every phase (examples, coverage, fuzzing, stateful) and the checks
//! that matter for a client: no 5xx, only documented status codes, responses that match their
//! documented schema and content type. The test fails when schemathesis does, with its report.
//!
//! schemathesis is a Python tool: it is installed once, pinned, into a virtualenv under
//! `target/tmp/` (`python3 -m venv`, then `pip install` from PyPI). `scripts/dev deps` installs
//! python3-venv. `SCHEMATHESIS_MAX_TIME` (seconds, default 60) bounds the run;
//! `SCHEMATHESIS_SEED` replays the seed a failed run printed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common;
use crate::support::{self, Daemon, daemon_env};

/// The schemathesis release this test was written against (its CLI flags and check names).
const VERSION: &str = "4.32.5";
const TOKEN: &str = "schemathesis-token-0123456789";

/// The virtualenv holding schemathesis, created on first use; a marker file records a
/// finished install, so an interrupted one is redone.
async fn schemathesis() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("schemathesis-{VERSION}"));
    let bin = venv.join("bin").join("schemathesis");
    let marker = venv.join("installed");
    if marker.exists() {
        return bin;
    }
    let _ = std::fs::remove_dir_all(&venv);
    run_checked(
        tokio::process::Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv),
        "python3 -m venv (apt-get install python3-venv, or scripts/dev deps)",
        Duration::from_secs(120),
    )
    .await;
    run_checked(
        tokio::process::Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={VERSION}")),
        "pip install schemathesis",
        Duration::from_secs(600),
    )
    .await;
    std::fs::write(&marker, VERSION).expect("write the install marker");
    bin
}

/// Runs `cmd` to completion within `limit`; panics with its output unless it exits 0.
async fn run_checked(cmd: &mut tokio::process::Command, what: &str, limit: Duration) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after {limit:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_undocumented_status_or_schema_mismatch() {
    let bin = schemathesis().await;

    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    enalysis_ingest::seed::run(&client)
        .await
        .expect("seed asset types");
    // Rows written through SQL too, so lists return every table's rows for the schema checks.
    support::insert_hierarchy(&client).await;
    let broker = common::Broker::start();
    let port = common::free_port();
    let mut env = daemon_env(&db, &broker.url());
    env.retain(|(k, _)| k != "ENALYSIS_HTTP_ADDR" && k != "RUST_LOG");
    env.extend([
        ("ENALYSIS_HTTP_ADDR".into(), format!("127.0.0.1:{port}")),
        ("ENALYSIS_ADMIN_TOKEN".into(), TOKEN.into()),
        // Tens of thousands of requests: keep the log to what matters.
        ("RUST_LOG".into(), "info".into()),
    ]);
    let daemon = Daemon::start(&env).await;

    let max_time: u64 = std::env::var("SCHEMATHESIS_MAX_TIME")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("run")
        .arg(format!("http://127.0.0.1:{port}/api/v1/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance,\
             content_type_conformance",
        ])
        // The budget for the whole run; fuzzing and stateful repeat until it is spent. One
        // worker: the machine's other core runs the daemon and PostgreSQL (and other tests).
        .args(["--max-time", &max_time.to_string()])
        .args(["--workers", "1"])
        // A hung request is a failure, not a hung test.
        .args(["--request-timeout", "10"])
        // Nothing left behind: no example database, reports in the temp dir.
        .args(["--generation-database", "none"])
        .arg("--no-color")
        .current_dir(dir.path())
        .env("NO_COLOR", "1");
    if let Ok(seed) = std::env::var("SCHEMATHESIS_SEED") {
        cmd.args(["--seed", &seed]);
    }
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start schemathesis");
    let out = tokio::time::timeout(
        Duration::from_secs(max_time + 120),
        child.wait_with_output(),
    )
    .await
    .expect("schemathesis ends within its budget")
    .expect("schemathesis output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let took = started.elapsed();
    if !out.status.success() {
        let log = daemon.log_text();
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(r#""level":"ERROR""#))
            .map(|l| l.get(..2000).unwrap_or(l))
            .collect();
        panic!(
            "schemathesis failed ({}, after {took:?}):\n{stdout}\n{stderr}\n\
             daemon ERROR lines:\n{}",
            out.status,
            errors.join("\n")
        );
    }
    // The run really ran: it tested operations and sent requests (a summary line such as
    // "12345 generated, 12345 passed").
    assert!(
        stdout.contains("Tested:") && stdout.contains(" generated, "),
        "no test summary:\n{stdout}"
    );
    println!("schemathesis passed in {took:?}:\n{stdout}");
}
