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
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::ack::Link;
use crate::db::Db;
use crate::telemetry::{self, names};

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
    admin: crate::admin::AdminState,
    link: Arc<Link>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let db = admin.db.clone();
    // `addr` comes from `Config::listen_addr`, which applies the listen rule.
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
        .merge(crate::admin::router(admin, admin_token.to_string()));
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
    telemetry::process::sample();
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
