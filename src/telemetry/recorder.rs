//! The process-wide Prometheus recorder: histogram buckets chosen for each range, a
//! description of every name, and counters present from the start.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use super::names;

/// Installs the process-wide Prometheus recorder, with histogram buckets chosen for each range.
pub fn install_metrics() -> Result<PrometheusHandle, BuildError> {
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
        names::READINGS_CORRECTED,
        names::DB_ERRORS,
        names::MESSAGES_ISOLATED,
        names::MESSAGES_IGNORED,
        names::MQTT_RECONNECTS,
        names::PARTITIONS_CREATED,
        names::PARTITIONS_DROPPED,
        names::LAST_READINGS_FLUSHED,
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
        names::MESSAGES_IGNORED,
        "Messages on mqtt.ignore_topics, acknowledged and not stored"
    );
    describe_counter!(
        names::READINGS_ACCEPTED,
        "Readings committed to measurements (new keys and corrections)"
    );
    describe_counter!(
        names::READINGS_REJECTED,
        "Readings or messages stored in rejected_readings, by reason"
    );
    describe_counter!(
        names::READINGS_DUPLICATE,
        "Readings already stored with the same value and quality (redeliveries)"
    );
    describe_counter!(
        names::READINGS_CORRECTED,
        "Readings committed in place of a stored one, the replaced version kept in measurement_revisions (also counted as accepted)"
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
    describe_gauge!(
        names::ENTITIES_SILENT,
        "Active entities silent for longer than completeness.silence_factor x their reading frequency, by kind"
    );
    describe_counter!(
        names::LAST_READINGS_FLUSHED,
        "Entities whose last reading was written to entity_last_readings"
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
        names::MQTT_OVERFLOW,
        "Messages read from the broker beyond the queue's room, waiting for it"
    );
    describe_gauge!(
        names::MQTT_OVERFLOW_PEAK,
        "The most messages held beyond the queue's room since the start"
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
