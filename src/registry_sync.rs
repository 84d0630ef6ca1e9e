//! Keeps the in-memory [`Registry`] in step with the database: a full load at start, a reload on
//! every `enalysis_registry` notification (triggers on portfolios / sites / meters / assets /
//! energy_sources), and a periodic reload as a safety net for notifications missed while the
//! listener reconnects.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::db::{Db, DbError, pg_error_message};
use crate::model::{Entity, EntityKind, MeterCategory};
use crate::registry::Registry;
use crate::telemetry::names;

pub const CHANNEL: &str = "enalysis_registry";

/// Active entities (all the way up: the entity, its meter, its site and its portfolio; the view
/// of `0007_completeness.sql`) with the category of their meter.
const LOAD: &str = "
    SELECT entity_type, id, external_id, category, is_battery FROM active_entities";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Connect(#[from] DbError),
    #[error("loading the registry failed: {0}")]
    Query(String),
}

impl From<tokio_postgres::Error> for LoadError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Query(pg_error_message(&e))
    }
}

/// Reads the whole registry.
pub async fn load(db: &Db) -> Result<Registry, LoadError> {
    let client = db.get().await?;
    let rows = client.query(LOAD, &[]).await?;
    let entities = rows.iter().map(|row| Entity {
        kind: row.get::<_, EntityKind>(0),
        id: row.get(1),
        external_id: row.get(2),
        category: row.get::<_, MeterCategory>(3),
        is_battery: row.get(4),
    });
    Ok(Registry::new(entities))
}

/// Loads the registry once (retrying until the database answers or `shutdown` fires) and keeps
/// it fresh in the background. `None` if shut down before the first load.
pub async fn start(
    db: Db,
    refresh_every: Duration,
    shutdown: CancellationToken,
) -> Option<watch::Receiver<Arc<Registry>>> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let first = loop {
        match load(&db).await {
            Ok(r) => break r,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_ms = delay.as_millis() as u64, "cannot load the registry yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    publish_size(&first);
    let (tx, rx) = watch::channel(Arc::new(first));
    let changed = Arc::new(Notify::new());
    tokio::spawn(listen(db.clone(), changed.clone(), shutdown.clone()));
    tokio::spawn(reload_loop(db, tx, changed, refresh_every, shutdown));
    Some(rx)
}

fn publish_size(r: &Registry) {
    metrics::gauge!(names::REGISTRY_ENTITIES).set(r.len() as f64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    metrics::gauge!(names::REGISTRY_REFRESHED).set(now);
}

async fn reload_loop(
    db: Db,
    tx: watch::Sender<Arc<Registry>>,
    changed: Arc<Notify>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
        match load(&db).await {
            Ok(r) => {
                tracing::debug!(entities = r.len(), "registry reloaded");
                publish_size(&r);
                tx.send_replace(Arc::new(r));
            }
            Err(e) => {
                tracing::warn!(error = %e, "registry reload failed; keeping the previous one")
            }
        }
    }
}

/// Holds a dedicated connection with `LISTEN`, reconnecting when it drops. Every notification,
/// and every (re)connect (notifications may have been missed meanwhile), triggers a reload.
async fn listen(db: Db, changed: Arc<Notify>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match db.connect_dedicated().await {
            Ok((client, mut connection)) => {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listening = async {
                    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
                    Ok::<_, tokio_postgres::Error>(())
                };
                // The LISTEN only completes while the connection is being driven.
                let mut listening = std::pin::pin!(listening);
                let ok = loop {
                    tokio::select! {
                        r = &mut listening => break r.is_ok(),
                        m = messages.next() => if m.is_none() { break false },
                    }
                };
                if ok {
                    backoff.reset();
                    changed.notify_one();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            m = messages.next() => match m {
                                Some(Ok(AsyncMessage::Notification(_))) => changed.notify_one(),
                                Some(Ok(_)) => {}
                                Some(Err(e)) => {
                                    tracing::warn!(error = %pg_error_message(&e), "registry listener lost its connection");
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "registry listener cannot connect"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
