//! Telemetry in one place: logs ([`logs`]), every metric name ([`names`], here), the Prometheus
//! recorder with its buckets and descriptions ([`recorder`]), and process metrics sampled from
//! `/proc` ([`process`]). `http` only serves what is recorded here.

pub mod logs;
pub mod process;
pub mod recorder;

pub use logs::{LogTarget, RejectionSummary, init_logs};
pub use recorder::install_metrics;

/// Every metric name the daemon exports (CONTRACT.md §5), in one place. Labels are bounded:
/// `reason` takes the 14 contract reasons, nothing takes a topic or an id.
pub mod names {
    pub const MESSAGES_RECEIVED: &str = "ingest_messages_received_total";
    /// Messages on `mqtt.ignore_topics`: acknowledged, not stored.
    pub const MESSAGES_IGNORED: &str = "ingest_messages_ignored_total";
    pub const READINGS_ACCEPTED: &str = "ingest_readings_accepted_total";
    /// Label `reason`.
    pub const READINGS_REJECTED: &str = "ingest_readings_rejected_total";
    pub const READINGS_DUPLICATE: &str = "ingest_readings_duplicate_total";
    /// Readings that replaced a stored one (corrections; each replaced version is a revision).
    pub const READINGS_CORRECTED: &str = "ingest_readings_corrected_total";
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
    /// Messages read from the broker beyond the queue's room, waiting for it (at most one
    /// read's packets: the MQTT task reads only while the queue has room).
    pub const MQTT_OVERFLOW: &str = "ingest_mqtt_overflow_messages";
    /// The most messages `ingest_mqtt_overflow_messages` has held since the start.
    pub const MQTT_OVERFLOW_PEAK: &str = "ingest_mqtt_overflow_peak_messages";
    pub const DB_ERRORS: &str = "ingest_db_errors_total";
    pub const REGISTRY_ENTITIES: &str = "ingest_registry_entities";
    pub const PARTITIONS_CREATED: &str = "ingest_partitions_created_total";
    pub const PARTITIONS_DROPPED: &str = "ingest_partitions_dropped_total";
    /// Label `state`: `open`, `idle`.
    pub const DB_POOL_CONNECTIONS: &str = "ingest_db_pool_connections";
    pub const DB_POOL_WAITING: &str = "ingest_db_pool_waiting";
    pub const MQTT_RECONNECTS: &str = "ingest_mqtt_reconnects_total";
    /// Label `kind`: `meter`, `asset`, `energy_source`. Counted from the database, so every
    /// daemon of a shared group reports the same value (CONTRACT.md §7).
    pub const ENTITIES_SILENT: &str = "ingest_entities_silent";
    /// Entities whose last reading went to `entity_last_readings`, per flush.
    pub const LAST_READINGS_FLUSHED: &str = "ingest_last_readings_flushed_total";
    pub const REGISTRY_REFRESHED: &str = "ingest_registry_last_refresh_timestamp_seconds";
    // Process basics, with the names Prometheus client libraries use.
    pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
    pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
    pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
}
