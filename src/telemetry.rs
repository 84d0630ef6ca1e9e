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
    /// Bytes charged to `ingest.max_buffered_bytes`: received and not yet acknowledged.
    pub const BUFFERED_BYTES: &str = "ingest_buffered_bytes";
    /// Messages the database kept refusing, isolated and stored as rejections.
    pub const MESSAGES_ISOLATED: &str = "ingest_messages_isolated_total";
    pub const MQTT_CONNECTED: &str = "ingest_mqtt_connected";
    /// QoS 1 messages received on the current connection whose PUBACK is not written yet.
    pub const MQTT_UNACKED: &str = "ingest_mqtt_unacked_messages";
    pub const DB_ERRORS: &str = "ingest_db_errors_total";
    pub const REGISTRY_ENTITIES: &str = "ingest_registry_entities";
    pub const PARTITIONS_CREATED: &str = "ingest_partitions_created_total";
    pub const PARTITIONS_DROPPED: &str = "ingest_partitions_dropped_total";
    /// Label `state`: `open`, `idle`.
    pub const DB_POOL_CONNECTIONS: &str = "ingest_db_pool_connections";
    pub const DB_POOL_WAITING: &str = "ingest_db_pool_waiting";
    pub const MQTT_RECONNECTS: &str = "ingest_mqtt_reconnects_total";
    pub const REGISTRY_REFRESHED: &str = "ingest_registry_last_refresh_timestamp_seconds";
    // Process basics, with the names Prometheus client libraries use.
    pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
    pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
    pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
}

/// Rejections are logged as a summary per interval, never one line each: a gateway sending
/// garbage thousands of times a second must not flood the log. One WARN line per interval with
/// the count per reason and one sample (topic, detail).
#[derive(Debug)]
pub struct RejectionSummary {
    every: std::time::Duration,
    started: std::time::Instant,
    counts: std::collections::BTreeMap<&'static str, u64>,
    sample: Option<(String, String)>,
}

impl RejectionSummary {
    pub fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            started: std::time::Instant::now(),
            counts: Default::default(),
            sample: None,
        }
    }

    pub fn record(&mut self, topic: &str, rejection: &crate::model::Rejection) {
        *self.counts.entry(rejection.reason.as_str()).or_default() += u64::from(rejection.count);
        if self.sample.is_none() {
            self.sample = Some((topic.to_string(), rejection.describe().into_owned()));
        }
    }

    /// When the summary is due (for a timer), if anything was recorded.
    pub fn due_at(&self) -> Option<std::time::Instant> {
        (!self.counts.is_empty()).then_some(self.started + self.every)
    }

    /// Logs and resets if the interval is over.
    pub fn maybe_log(&mut self) {
        if self.started.elapsed() >= self.every {
            self.log_now();
        }
    }

    /// Logs what was recorded (if anything) and starts a new interval: at shutdown, so the
    /// last rejections are not left out of the log.
    pub fn log_now(&mut self) {
        if !self.counts.is_empty() {
            let total: u64 = self.counts.values().sum();
            let (topic, detail) = self.sample.take().unwrap_or_default();
            let reasons = self
                .counts
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect::<Vec<_>>()
                .join(",");
            tracing::warn!(
                rejected = total,
                reasons = %reasons,
                interval_secs = self.every.as_secs(),
                topic = %topic,
                detail = %detail,
                "readings rejected"
            );
            self.counts.clear();
        }
        self.started = std::time::Instant::now();
    }
}
