//! Logs: tracing with a JSON formatter on stdout by default, `pretty` for a terminal.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Where log lines go. The daemon logs to stdout (CONTRACT.md §6); one-shot commands log to
/// stderr so their stdout stays the command's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// Installs the global subscriber. `RUST_LOG` wins over `log.level`. tokio-postgres reports
/// server NOTICEs at INFO, which are noise for operators, so it is held at WARN unless
/// `RUST_LOG` says otherwise.
pub fn init_logs(cfg: &LogConfig, target: LogTarget) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new(format!("tokio_postgres=warn,{}", cfg.level)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let result = match (cfg.format, target) {
        (LogFormat::Json, LogTarget::Stdout) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stdout)
            .try_init(),
        (LogFormat::Json, LogTarget::Stderr) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .try_init(),
        (LogFormat::Pretty, LogTarget::Stdout) => builder.with_writer(std::io::stdout).try_init(),
        (LogFormat::Pretty, LogTarget::Stderr) => builder.with_writer(std::io::stderr).try_init(),
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = result;
}

/// Every metric name the daemon exports (CONTRACT.md §5), in one place. Labels are bounded:
/// `reason` takes the 13 contract reasons, nothing takes a topic or an id.
pub mod names {
    pub const MESSAGES_RECEIVED: &str = "ingest_messages_received_total";
    pub const READINGS_ACCEPTED: &str = "ingest_readings_accepted_total";
    /// Label `reason`.
    pub const READINGS_REJECTED: &str = "ingest_readings_rejected_total";
    pub const READINGS_DUPLICATE: &str = "ingest_readings_duplicate_total";
    pub const BATCH_ROWS: &str = "ingest_batch_rows";
    pub const FLUSH_DURATION: &str = "ingest_flush_duration_seconds";
    pub const END_TO_END_LATENCY: &str = "ingest_end_to_end_latency_seconds";
    pub const BUFFERED_READINGS: &str = "ingest_buffered_readings";
    pub const MQTT_CONNECTED: &str = "ingest_mqtt_connected";
    /// QoS 1 messages received on the current connection whose PUBACK is not written yet.
    pub const MQTT_UNACKED: &str = "ingest_mqtt_unacked_messages";
    pub const DB_ERRORS: &str = "ingest_db_errors_total";
    pub const REGISTRY_ENTITIES: &str = "ingest_registry_entities";
    pub const PARTITIONS_CREATED: &str = "ingest_partitions_created_total";
    pub const PARTITIONS_DROPPED: &str = "ingest_partitions_dropped_total";
}
