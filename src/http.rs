//! The HTTP listener (CONTRACT.md §5): `/metrics`, `/healthz`, `/readyz`, and the admin API
//! under `/api/v1` (behind its bearer token; see `admin`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::ack::Link;
use crate::db::Db;
use crate::telemetry::names;

/// Installs the process-wide Prometheus recorder, with histogram buckets chosen for each range.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    // Finer between 0.1 and 0.5 s: a batch waits up to `ingest.batch_max_age_ms` (100 ms by
    // default) before its commit, so that is where the receipt→commit latencies fall.
    let seconds = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0,
        2.5, 5.0, 10.0, 30.0,
    ];
    let rows = [
        1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(names::FLUSH_DURATION.into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full(names::END_TO_END_LATENCY.into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full(names::BATCH_ROWS.into()), &rows)?
        .install_recorder()?;
    describe();
    // Counters exist from the start (at 0), so a scrape always shows every contract name and
    // rate() has a baseline before the first event.
    for name in [
        names::MESSAGES_RECEIVED,
        names::READINGS_ACCEPTED,
        names::READINGS_DUPLICATE,
        names::DB_ERRORS,
        names::MESSAGES_ISOLATED,
        names::MQTT_RECONNECTS,
        names::PARTITIONS_CREATED,
        names::PARTITIONS_DROPPED,
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in crate::model::Reason::ALL {
        metrics::counter!(names::READINGS_REJECTED, "reason" => reason.as_str()).increment(0);
    }
    metrics::gauge!(names::BUFFERED_READINGS).set(0.0);
    metrics::gauge!(names::BUFFERED_BYTES).set(0.0);
    metrics::gauge!(names::MQTT_CONNECTED).set(0.0);
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(names::MESSAGES_RECEIVED, "MQTT messages received");
    describe_counter!(
        names::READINGS_ACCEPTED,
        "Readings committed to measurements"
    );
    describe_counter!(
        names::READINGS_REJECTED,
        "Readings or messages stored in rejected_readings, by reason"
    );
    describe_counter!(
        names::READINGS_DUPLICATE,
        "Redelivered readings that were already stored"
    );
    describe_histogram!(
        names::BATCH_ROWS,
        "Rows (readings and rejections) per batch"
    );
    describe_histogram!(
        names::FLUSH_DURATION,
        "Time to commit a batch, retries included, in seconds"
    );
    describe_histogram!(
        names::END_TO_END_LATENCY,
        "From receipt of a batch's first message to its commit, in seconds"
    );
    describe_gauge!(names::BUFFERED_READINGS, "Rows in the batch being built");
    describe_gauge!(
        names::BUFFERED_BYTES,
        "Bytes received and not yet acknowledged, against ingest.max_buffered_bytes"
    );
    describe_counter!(
        names::MESSAGES_ISOLATED,
        "Messages the database kept refusing, isolated and stored as rejections"
    );
    describe_gauge!(names::MQTT_CONNECTED, "1 while connected to the broker");
    describe_counter!(names::DB_ERRORS, "Failed database writes (each is retried)");
    describe_gauge!(
        names::REGISTRY_ENTITIES,
        "Active meters, assets and energy sources known"
    );
    describe_counter!(names::PARTITIONS_CREATED, "measurements partitions created");
    describe_counter!(
        names::PARTITIONS_DROPPED,
        "measurements partitions dropped (retention)"
    );
    describe_gauge!(
        names::DB_POOL_CONNECTIONS,
        "Database connections of the pool, by state"
    );
    describe_gauge!(
        names::DB_POOL_WAITING,
        "Tasks waiting for a pooled connection"
    );
    describe_counter!(
        names::MQTT_RECONNECTS,
        "Connections to the broker lost and retried"
    );
    describe_gauge!(
        names::MQTT_UNACKED,
        "QoS 1 messages received on the current connection whose PUBACK is not written yet"
    );
    describe_gauge!(
        names::REGISTRY_REFRESHED,
        "Unix time of the last successful registry load"
    );
    describe_gauge!(names::PROCESS_RESIDENT_MEMORY, "Resident memory in bytes");
    describe_counter!(
        names::PROCESS_CPU_SECONDS,
        "CPU time used, user and system, in seconds"
    );
    describe_gauge!(names::PROCESS_OPEN_FDS, "Open file descriptors");
}

/// Resident memory, CPU time and open file descriptors, from /proc (Linux only; elsewhere the
/// gauges are simply not set).
fn process_metrics() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
        if let Some(kib) = rss_kib {
            metrics::gauge!(names::PROCESS_RESIDENT_MEMORY).set(kib * 1024.0);
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may contain spaces, hence the last ')').
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            // USER_HZ is 100 on every Linux architecture we run on. The metrics facade's
            // counters are integers: whole seconds, plenty for rate() over minutes.
            metrics::counter!(names::PROCESS_CPU_SECONDS)
                .absolute(((user + system) / 100.0) as u64);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!(names::PROCESS_OPEN_FDS).set(fds.count() as f64);
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Option<PrometheusHandle>,
    db: Db,
    link: Arc<Link>,
}

/// Serves until `shutdown`. Returns the bound address (port 0 picks a free one).
pub async fn serve(
    addr: SocketAddr,
    admin_token: &str,
    metrics: Option<PrometheusHandle>,
    db: Db,
    link: Arc<Link>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    crate::admin::check_listen(addr, admin_token).map_err(|e| anyhow::anyhow!(e))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (http.addr): {e}"))?;
    let bound = listener.local_addr()?;
    if let Some(handle) = metrics.clone() {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
                }
            }
        });
    }
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState {
            metrics,
            db: db.clone(),
            link,
        })
        // A panic is a JSON 500, not a dropped connection; the admin router has its own.
        .route_layer(crate::admin::catch_panic())
        .merge(crate::admin::router(
            crate::admin::AdminState { db },
            admin_token.to_string(),
        ));
    tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    });
    Ok(bound)
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    // Gauges that describe the moment of the scrape are refreshed by the scrape.
    let pool = state.db.pool.status();
    metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "open").set(pool.size as f64);
    metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "idle").set(pool.available as f64);
    metrics::gauge!(names::DB_POOL_WAITING).set(pool.waiting as f64);
    process_metrics();
    let body = state.metrics.map(|h| h.render()).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn ready_handler(State(state): State<AppState>) -> impl IntoResponse {
    let db = tokio::time::timeout(Duration::from_secs(2), state.db.check()).await;
    let db_error = match db {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("database check timed out".to_string()),
    };
    let mqtt_ok = state.link.is_connected();
    if db_error.is_none() && mqtt_ok {
        return (StatusCode::OK, Json(serde_json::json!({"status": "ready"})));
    }
    let mut reasons = Vec::new();
    if let Some(e) = db_error {
        reasons.push(format!("database: {e}"));
    }
    if !mqtt_ok {
        reasons.push("broker: not connected".to_string());
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"status": "unavailable", "reasons": reasons})),
    )
}
