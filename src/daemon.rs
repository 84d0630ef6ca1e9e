//! `enalysis-ingest run`: wires the path of a reading together and drives shutdown.
//!
//! ```text
//! mqtt (poll loop) --queue--> batch (judge + collect) --batch--> write (COPY, commit) --> ack
//! ```
//! Shutdown is a parameter (a token): stop intake → the batcher flushes → the writer commits and
//! acks → the MQTT task writes the acks and disconnects. All within `shutdown_timeout_secs`;
//! past it, whatever is uncommitted stays unacknowledged and the broker redelivers it.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::ack::Link;
use crate::backoff::Backoff;
use crate::batch::{self, BatchLimits, Judge};
use crate::config::Config;
use crate::db::Db;
use crate::mqtt::{self, IntakeControl};
use crate::registry_sync;
use crate::silence::{self, LastReadings};
use crate::validate::Limits;
use crate::write::{self, Writer};

/// How the daemon ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Everything received was committed and acknowledged.
    Drained,
    /// The deadline passed first; unacknowledged messages will be redelivered.
    DeadlineExceeded,
}

/// Runs until `shutdown` fires, then drains.
pub async fn run(
    config: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<Exit> {
    // Parsed, and the listen rule applied (no admin token off loopback), before anything starts.
    let http_addr = config.listen_addr()?;
    let db = Db::new(&config.database)?;
    // Up first, so /healthz answers (and /readyz says why not ready) while the database or the
    // broker is still coming up.
    let link = Arc::new(Link::default());
    let http_stop = CancellationToken::new();
    let bound = crate::http::serve(
        http_addr,
        &config.admin.token,
        metrics,
        crate::admin::AdminState {
            db: db.clone(),
            silence_factor: config.completeness.silence_factor,
        },
        link.clone(),
        http_stop.clone(),
    )
    .await?;
    let stop_http = http_stop.clone().drop_guard();
    if !wait_for_database(&db, &shutdown).await? {
        return Ok(Exit::Drained);
    }
    if config.database.migrate_on_start {
        let mut client = db.get().await?;
        let report = crate::migrate::run(&mut client)
            .await
            .context("migrating at start-up")?;
        tracing::info!(
            applied = report.applied.len(),
            version = report.current,
            "schema ready"
        );
    }
    let partitions = crate::partitions::Maintenance::new(&config);
    if let Err(e) = partitions.run_once(&db).await {
        // Not fatal: the default partition takes the readings meanwhile, and the hourly round
        // tries again.
        tracing::error!(error = %format!("{e:#}"), "creating measurement partitions failed");
    }
    tokio::spawn(partitions.run_forever(db.clone(), shutdown.clone()));
    // In the background: ingestion need not wait, and the flushes' GREATEST makes the order
    // of the two irrelevant.
    tokio::spawn(seed_last_readings(db.clone()));

    let Some(registry) = registry_sync::start(
        db.clone(),
        config.registry.refresh_interval,
        shutdown.clone(),
    )
    .await
    else {
        return Ok(Exit::Drained);
    };
    tracing::info!(entities = registry.borrow().len(), "registry loaded");

    let abort = CancellationToken::new();
    let writer_done = CancellationToken::new();
    let (queue_tx, queue_rx) = mpsc::channel(config.ingest.queue_messages);
    let (intake, mqtt_task) = mqtt::start(
        &config.mqtt,
        &config.ingest,
        mqtt::Outlet {
            tx: queue_tx,
            budget: crate::budget::Budget::new(
                config.ingest.max_buffered_bytes,
                config.mqtt.poll_reserve(),
            ),
        },
        link,
        IntakeControl {
            stop_intake: shutdown.clone(),
            writer_done: writer_done.clone(),
            abort: abort.clone(),
        },
    )?;
    // One batch being written while the next one fills.
    let (batch_tx, batch_rx) = mpsc::channel(1);
    let ingest = &config.ingest;
    let judge = Judge {
        prefix: config.mqtt.topic_prefix.clone(),
        ignore: config.mqtt.ignore_topics.clone(),
        limits: Limits {
            max_payload_bytes: ingest.max_payload_bytes,
            max_clock_skew: chrono::Duration::seconds(ingest.max_clock_skew.as_secs() as i64),
            max_age: chrono::Duration::days(ingest.max_age_days as i64),
        },
        registry,
    };
    let batcher = tokio::spawn(batch::run(
        queue_rx,
        batch_tx,
        judge,
        BatchLimits {
            max_rows: ingest.batch_max_rows,
            max_age: ingest.batch_max_age,
            log_every: config.log.rejection_summary,
        },
    ));
    let last_readings = Arc::new(LastReadings::default());
    let completeness = &config.completeness;
    // Awaited in the drain: its last flush, after the writer's last commit, must finish before
    // the process exits.
    let flusher = tokio::spawn(silence::flush_loop(
        last_readings.clone(),
        db.clone(),
        completeness.flush_interval,
        writer_done.clone(),
        abort.clone(),
    ));
    tokio::spawn(silence::gauge_loop(
        db.clone(),
        completeness.silence_factor,
        completeness.gauge_interval,
        shutdown.clone(),
    ));
    let writer = tokio::spawn(write::run(
        Writer::new(db.clone(), ingest),
        batch_rx,
        intake.acker.clone(),
        last_readings,
        abort.clone(),
        writer_done.clone(),
    ));
    tracing::info!(
        broker = %crate::config::mask_url_password(config.mqtt.url.as_str()),
        database = db.target(),
        filters = ?mqtt::filters(&config.mqtt),
        http = %bound,
        "ingesting"
    );

    shutdown.cancelled().await;
    tracing::info!(
        deadline_secs = ingest.shutdown_timeout.as_secs(),
        "shutting down: draining"
    );
    let drain = async {
        let _ = batcher.await;
        let _ = writer.await;
        let _ = flusher.await;
        let _ = mqtt_task.await;
    };
    let exit = tokio::select! {
        _ = drain => Exit::Drained,
        _ = tokio::time::sleep(ingest.shutdown_timeout) => {
            abort.cancel();
            Exit::DeadlineExceeded
        }
    };
    drop(stop_http);
    // Only drained if the writer really finished (it cancels `writer_done` at its end).
    let exit = if exit == Exit::Drained && !writer_done.is_cancelled() {
        Exit::DeadlineExceeded
    } else {
        exit
    };
    Ok(exit)
}

async fn seed_last_readings(db: Db) {
    match silence::seed(&db).await {
        Ok(s) => tracing::info!(
            entities = s.entities,
            partitions = s.partitions,
            duration_ms = s.elapsed.as_millis() as u64,
            "last readings seeded"
        ),
        // Not fatal: those entities count from their creation until their next reading.
        Err(e) => tracing::warn!(error = %e, "seeding the last readings failed"),
    }
}

/// Waits until the database answers (it may still be starting). False if shut down first; an
/// error that waiting cannot fix (wrong password, unknown database) ends the daemon.
async fn wait_for_database(db: &Db, shutdown: &CancellationToken) -> anyhow::Result<bool> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match db.check().await {
            Ok(()) => return Ok(true),
            Err(e) if !e.is_transient() => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "database not reachable yet; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
