//! The HTTP listener (CONTRACT.md §5): `/metrics`, `/healthz`, `/readyz`.

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
    let seconds = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
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
    metrics: Option<PrometheusHandle>,
    db: Db,
    link: Arc<Link>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
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
        .with_state(AppState { metrics, db, link });
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
