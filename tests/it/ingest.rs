//! The pipeline end to end: a real MQTT client publishes, the daemon (a subprocess) writes, the
//! tests read the rows back.

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::json;

use crate::common;
use crate::support::{
    self, Daemon, Publisher, daemon_env, set_env, setup, wait_count, with_http_port,
};

const MEAS: &str = "SELECT count(*) FROM measurements";
const REJ: &str = "SELECT count(*) FROM rejected_readings";

async fn ext(client: &tokio_postgres::Client, table: &str, id: uuid::Uuid) -> String {
    client
        .query_one(
            &format!("SELECT external_id FROM {table} WHERE id = $1"),
            &[&id],
        )
        .await
        .expect("external id")
        .get(0)
}

fn ts(offset_ms: i64) -> String {
    (Utc::now() - ChronoDuration::minutes(1) + ChronoDuration::milliseconds(offset_ms)).to_rfc3339()
}

#[tokio::test]
async fn every_accepted_shape_lands_in_measurements_with_canonical_units() {
    let s = setup().await;
    let daemon = Daemon::start(&daemon_env(&s.db, &s.broker.url())).await;
    let publisher = Publisher::connect(&s.broker.url()).await;
    let meter_ext = ext(&s.client, "meters", s.ids.meter).await;
    let bat_ext = ext(&s.client, "energy_sources", s.ids.battery).await;
    let epoch_ms = (Utc::now() - ChronoDuration::seconds(30)).timestamp_millis();

    // 1. single object, meter by UUID, watts converted to kW
    publisher
        .publish(
            &format!("enalysis/v1/meters/{}/readings", s.ids.meter),
            json!({"ts": ts(1), "metric": "power", "value": 12500.0, "unit": "W"}).to_string(),
        )
        .await;
    // 2. array, meter by external id (2 readings)
    publisher
        .publish(
            &format!("enalysis/v1/meters/{meter_ext}/readings"),
            json!([
                {"ts": ts(2), "metric": "voltage", "value": 0.231, "unit": "kV"},
                {"ts": ts(2), "metric": "energy", "value": 1.5, "unit": "MWh", "quality": "estimated"}
            ])
            .to_string(),
        )
        .await;
    // 3. values map on an asset, epoch-ms timestamp (3 readings)
    publisher
        .publish(
            &format!("enalysis/v1/assets/{}/readings", s.ids.asset),
            json!({"ts": epoch_ms, "values": {"power": 3.0, "current": 4.0, "frequency": 50.0}})
                .to_string(),
        )
        .await;
    // 4. energy source topic (1 reading), bad quality is stored, not dropped
    publisher
        .publish(
            &format!("enalysis/v1/energy-sources/{}/readings", s.ids.source),
            json!({"ts": ts(4), "metric": "power", "value": 7.0, "quality": "bad"}).to_string(),
        )
        .await;
    // 5. gateway topic naming each reading's entity (3 readings)
    publisher
        .publish(
            "enalysis/v1/gateways/gw-1/readings",
            json!([
                {"meter": s.ids.stor_meter.to_string(), "ts": ts(5), "metric": "power", "value": -4.0},
                {"asset": s.ids.asset.to_string(), "ts": ts(5), "metric": "temperature", "value": 21.5},
                {"energy_source": bat_ext, "ts": ts(5), "metric": "state_of_charge", "value": 80.0}
            ])
            .to_string(),
        )
        .await;

    wait_count(&s.client, MEAS, 10).await;
    wait_count(&s.client, REJ, 0).await;
    let row = s
        .client
        .query_one(
            "SELECT value, unit, quality::text FROM measurements
             WHERE entity_id = $1 AND metric = 'power'",
            &[&s.ids.meter],
        )
        .await
        .expect("power row");
    assert_eq!(row.get::<_, f64>(0), 12.5);
    assert_eq!(row.get::<_, String>(1), "kW");
    assert_eq!(row.get::<_, String>(2), "good");
    let row = s
        .client
        .query_one(
            "SELECT value, unit, quality::text FROM measurements
             WHERE entity_id = $1 AND metric = 'energy'",
            &[&s.ids.meter],
        )
        .await
        .expect("energy row");
    assert_eq!(row.get::<_, f64>(0), 1500.0);
    assert_eq!(row.get::<_, String>(1), "kWh");
    assert_eq!(row.get::<_, String>(2), "estimated");
    let v: f64 = s
        .client
        .query_one(
            "SELECT value FROM measurements WHERE entity_id = $1 AND metric = 'voltage'",
            &[&s.ids.meter],
        )
        .await
        .expect("voltage")
        .get(0);
    assert!((v - 231.0).abs() < 1e-9, "{v}");
    let q: String = s
        .client
        .query_one(
            "SELECT quality::text FROM measurements WHERE entity_id = $1",
            &[&s.ids.source],
        )
        .await
        .expect("source row")
        .get(0);
    assert_eq!(q, "bad");
    drop(daemon);
}

#[tokio::test]
async fn every_rejection_reason_is_stored_with_the_raw_payload() {
    let s = setup().await;
    let mut env = daemon_env(&s.db, &s.broker.url());
    env.push(("ENALYSIS_INGEST__MAX_PAYLOAD_BYTES".into(), "4096".into()));
    let _daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let meter = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    let future = (Utc::now() + ChronoDuration::hours(1)).to_rfc3339();
    let stale = (Utc::now() - ChronoDuration::days(500)).to_rfc3339();
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("malformed_payload", meter.clone(), b"{not json".to_vec()),
        ("payload_too_large", meter.clone(), vec![b' '; 5000]),
        // The daemon only subscribes to the contract's patterns, so the broker only delivers an
        // unknown topic when it matches one with an empty entity level.
        (
            "unknown_topic",
            "enalysis/v1/meters//readings".into(),
            b"{}".to_vec(),
        ),
        (
            "unknown_entity",
            "enalysis/v1/meters/no-such-meter/readings".into(),
            json!({"ts": ts(0), "metric": "power", "value": 1.0})
                .to_string()
                .into(),
        ),
        (
            "invalid_timestamp",
            meter.clone(),
            json!({"ts": "yesterday", "metric": "power", "value": 1.0})
                .to_string()
                .into(),
        ),
        (
            "future_timestamp",
            meter.clone(),
            json!({"ts": future, "metric": "power", "value": 1.0})
                .to_string()
                .into(),
        ),
        (
            "stale_timestamp",
            meter.clone(),
            json!({"ts": stale, "metric": "power", "value": 1.0})
                .to_string()
                .into(),
        ),
        (
            "unknown_metric",
            meter.clone(),
            json!({"ts": ts(0), "metric": "vibes", "value": 1.0})
                .to_string()
                .into(),
        ),
        (
            "invalid_unit",
            meter.clone(),
            json!({"ts": ts(0), "metric": "power", "value": 1.0, "unit": "V"})
                .to_string()
                .into(),
        ),
        (
            "invalid_value",
            meter.clone(),
            json!({"ts": ts(0), "metric": "power", "value": "12"})
                .to_string()
                .into(),
        ),
        (
            "invalid_quality",
            meter.clone(),
            json!({"ts": ts(0), "metric": "power", "value": 1.0, "quality": "great"})
                .to_string()
                .into(),
        ),
        (
            "out_of_range",
            meter.clone(),
            json!({"ts": ts(0), "metric": "power_factor", "value": 1.5})
                .to_string()
                .into(),
        ),
        (
            "category_violation",
            meter.clone(),
            json!({"ts": ts(0), "metric": "power", "value": -1.0})
                .to_string()
                .into(),
        ),
    ];
    for (_, topic, payload) in &cases {
        p.publish(topic, payload.clone()).await;
    }
    wait_count(&s.client, REJ, cases.len() as i64).await;
    for (reason, topic, payload) in &cases {
        let row = s
            .client
            .query_one(
                "SELECT topic, payload, payload_size, detail FROM rejected_readings
                 WHERE reason = $1::text::rejection_reason_enum",
                &[reason],
            )
            .await
            .unwrap_or_else(|e| panic!("{reason}: {e}"));
        assert_eq!(&row.get::<_, String>(0), topic, "{reason}");
        let stored: Vec<u8> = row.get(1);
        let size: i32 = row.get(2);
        assert_eq!(size as usize, payload.len(), "{reason}");
        if *reason == "payload_too_large" {
            assert_eq!(stored.len(), 4096, "kept up to the limit");
        } else {
            assert_eq!(&stored, payload, "{reason}: exact bytes");
        }
        assert!(!row.get::<_, String>(3).is_empty(), "{reason}: detail");
    }
    wait_count(&s.client, MEAS, 0).await;
}

#[tokio::test]
async fn a_message_delivered_twice_is_stored_once() {
    let s = setup().await;
    let _daemon = Daemon::start(&daemon_env(&s.db, &s.broker.url())).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    let payload = json!([
        {"ts": ts(0), "metric": "power", "value": 1.0},
        {"ts": ts(0), "metric": "power", "value": -1.0, "quality": "bad"},
        {"ts": ts(1), "metric": "power", "value": 2.0}
    ])
    .to_string();
    for _ in 0..3 {
        p.publish(&topic, payload.clone()).await;
    }
    p.wait_acked(3).await;
    // A fresh reading after the duplicates proves they were all processed.
    p.publish(
        &topic,
        json!({"ts": ts(9), "metric": "power", "value": 9.0}).to_string(),
    )
    .await;
    wait_count(&s.client, MEAS, 3).await;
    wait_count(&s.client, REJ, 1).await;
}

#[tokio::test]
async fn a_meter_created_while_the_daemon_runs_is_accepted_at_once() {
    let s = setup().await;
    let _daemon = Daemon::start(&daemon_env(&s.db, &s.broker.url())).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let new_meter: uuid::Uuid = s
        .client
        .query_one(
            "INSERT INTO meters (site_id, name, external_id, category)
             VALUES ($1, 'New', 'brand-new', 'PROD') RETURNING id",
            &[&s.ids.site],
        )
        .await
        .expect("insert meter")
        .get(0);
    // The NOTIFY-driven reload is fast, but not instantaneous: publish until accepted, each
    // reading with its own timestamp, and require the first accepted one within a second.
    let started = std::time::Instant::now();
    let mut i = 0;
    loop {
        p.publish(
            "enalysis/v1/meters/brand-new/readings",
            json!({"ts": ts(i), "metric": "power", "value": 1.0}).to_string(),
        )
        .await;
        i += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let n: i64 = s
            .client
            .query_one(
                "SELECT count(*) FROM measurements WHERE entity_id = $1",
                &[&new_meter],
            )
            .await
            .expect("count")
            .get(0);
        if n > 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the new meter was not accepted"
        );
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "accepted only after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn readings_keep_flowing_after_the_broker_restarts() {
    let mut s = setup().await;
    let daemon = Daemon::start(&daemon_env(&s.db, &s.broker.url())).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    {
        let p = Publisher::connect(&s.broker.url()).await;
        p.publish(
            &topic,
            json!({"ts": ts(0), "metric": "power", "value": 1.0}).to_string(),
        )
        .await;
        wait_count(&s.client, MEAS, 1).await;
    }
    s.broker.restart();
    daemon.wait_for_log("connected to the MQTT broker", 2).await;
    let p = Publisher::connect(&s.broker.url()).await;
    for i in 1..=20 {
        p.publish(
            &topic,
            json!({"ts": ts(i), "metric": "power", "value": 1.0}).to_string(),
        )
        .await;
    }
    wait_count(&s.client, MEAS, 21).await;
}

#[tokio::test]
async fn sigterm_drains_everything_received_and_exits_0() {
    let s = setup().await;
    let mut env = daemon_env(&s.db, &s.broker.url());
    // Long batches: the drain, not the timer, must write them.
    env.push(("ENALYSIS_INGEST__BATCH_MAX_AGE_MS".into(), "60000".into()));
    let mut daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    for i in 0..200 {
        p.publish(
            &topic,
            json!({"ts": ts(i), "metric": "power", "value": 1.0}).to_string(),
        )
        .await;
    }
    p.wait_acked(200).await;
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(30).await, Some(0), "{}", daemon.log_text());
    // Batches only flush on the 60 s timer, so anything in the table was written by the drain.
    let drained: i64 = s.client.query_one(MEAS, &[]).await.expect("count").get(0);
    assert!(drained > 0, "nothing was drained: {}", daemon.log_text());
    // Whatever the daemon had not received yet is still at the broker for the next run.
    let _next = Daemon::start(&daemon_env_same_client(&env)).await;
    wait_count(&s.client, MEAS, 200).await;
}

/// The same settings, so the same client id: the broker's session with what it still holds.
fn daemon_env_same_client(env: &[(String, String)]) -> Vec<(String, String)> {
    env.iter()
        .filter(|(k, _)| k != "ENALYSIS_INGEST__BATCH_MAX_AGE_MS")
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_row_the_database_refuses_is_rejected_alone_and_the_rest_of_the_batch_commits() {
    let s = setup().await;
    // A rule of the application's that the daemon does not know about.
    s.client
        .batch_execute("ALTER TABLE measurements ADD CONSTRAINT no_666 CHECK (value <> 666)")
        .await
        .expect("constraint");
    let mut env = daemon_env(&s.db, &s.broker.url());
    set_env(&mut env, "ENALYSIS_INGEST__BATCH_MAX_AGE_MS", "300");
    let _daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    for i in 0..50 {
        let value = if i == 17 { 666.0 } else { i as f64 };
        p.publish(
            &topic,
            json!({"ts": ts(i), "metric": "power", "value": value}).to_string(),
        )
        .await;
    }
    wait_count(&s.client, MEAS, 49).await;
    wait_count(&s.client, REJ, 1).await;
    let row = s
        .client
        .query_one(
            "SELECT reason::text, detail, payload_text FROM rejected_readings",
            &[],
        )
        .await
        .expect("rejection");
    assert_eq!(row.get::<_, String>(0), "invalid_value");
    assert!(
        row.get::<_, String>(1).contains("no_666"),
        "{}",
        row.get::<_, String>(1)
    );
    assert!(row.get::<_, String>(2).contains("666"));
}

/// A message the database refuses for a reason that is not a row's value (here a trigger of
/// the application's raising an error) is isolated and stored as rejections; the rest flows.
#[tokio::test]
async fn a_message_that_makes_postgresql_refuse_the_statement_cannot_stop_ingestion() {
    let s = setup().await;
    s.client
        .batch_execute(
            "CREATE FUNCTION refuse_666() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.value = 666 THEN RAISE EXCEPTION 'the application refuses 666'; END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_666 BEFORE INSERT ON measurements
                 FOR EACH ROW EXECUTE FUNCTION refuse_666();",
        )
        .await
        .expect("trigger");
    let mut env = daemon_env(&s.db, &s.broker.url());
    set_env(&mut env, "ENALYSIS_INGEST__BATCH_MAX_AGE_MS", "300");
    let _daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    // The poison message holds a good reading beside the refused one: both are kept, as
    // rejections of that message.
    for i in 0..40 {
        let payload = if i == 17 {
            json!([
                {"ts": ts(i), "metric": "power", "value": 666.0},
                {"ts": ts(1000), "metric": "power", "value": 1.0},
            ])
        } else {
            json!({"ts": ts(i), "metric": "power", "value": i as f64})
        };
        p.publish(&topic, payload.to_string()).await;
    }
    wait_count(&s.client, MEAS, 39).await;
    wait_count(&s.client, REJ, 2).await;
    let rows = s
        .client
        .query(
            "SELECT reason::text, detail, payload_text FROM rejected_readings ORDER BY seq",
            &[],
        )
        .await
        .expect("rejections");
    for row in &rows {
        assert_eq!(row.get::<_, String>(0), "invalid_value");
        let detail: String = row.get(1);
        assert!(detail.contains("the application refuses 666"), "{detail}");
        assert!(row.get::<_, String>(2).contains("666"));
    }
    // Later readings flow as usual.
    p.publish(
        &topic,
        json!({"ts": ts(2000), "metric": "power", "value": 2.0}).to_string(),
    )
    .await;
    wait_count(&s.client, MEAS, 40).await;
}

/// A COMMIT the database refuses (a deferred constraint of the application's) while the next
/// batch, holding the same keys, is written beside it (the pipelined writer): the next batch is
/// rolled back, the refused one is written again alone (its poison message stored as
/// rejections), then the next one, as corrections of it. Had the next batch kept its
/// transaction open, the refused one's retry would wait for its locks for ever.
#[tokio::test]
async fn a_commit_refused_while_the_next_batch_holds_its_keys_loses_nothing_and_does_not_hang() {
    let s = setup().await;
    s.client
        .batch_execute(
            // Slow, so the next batch is on its way while this COMMIT runs.
            "CREATE FUNCTION refuse_666_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.value = 666 THEN
                     PERFORM pg_sleep(0.5);
                     RAISE EXCEPTION 'the application refuses 666 at commit';
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE CONSTRAINT TRIGGER refuse_666_at_commit AFTER INSERT ON measurements
                 DEFERRABLE INITIALLY DEFERRED
                 FOR EACH ROW EXECUTE FUNCTION refuse_666_at_commit();",
        )
        .await
        .expect("trigger");
    let mut env = daemon_env(&s.db, &s.broker.url());
    set_env(&mut env, "ENALYSIS_INGEST__BATCH_MAX_ROWS", "10");
    let port = with_http_port(&mut env);
    let _daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    let base = Utc::now() - ChronoDuration::minutes(1);
    let reading = |i: i64, value: f64, quality: &str| {
        let ts = (base + ChronoDuration::seconds(i)).to_rfc3339();
        json!({"ts": ts, "metric": "power", "value": value, "quality": quality})
    };
    // Batch A: ten estimates, the last message with the reading refused at commit beside its
    // own (11 rows: one batch). Batch B: the same ten keys, real values.
    for i in 0..10 {
        let payload = if i == 9 {
            json!([reading(i, 1.0, "estimated"), reading(100, 666.0, "good")])
        } else {
            reading(i, 1.0, "estimated")
        };
        p.publish(&topic, payload.to_string()).await;
    }
    for i in 0..10 {
        p.publish(&topic, reading(i, 2.0, "good").to_string()).await;
    }
    p.wait_acked(20).await;
    wait_count(&s.client, MEAS, 10).await;
    let held = s
        .client
        .query_one(
            "SELECT count(*) FILTER (WHERE value = 2 AND quality = 'good') FROM measurements",
            &[],
        )
        .await
        .expect("measurements");
    assert_eq!(held.get::<_, i64>(0), 10, "every key holds batch B's value");
    let revisions: i64 = s
        .client
        .query_one(
            "SELECT count(*) FROM measurement_revisions WHERE value = 1 AND quality = 'estimated'",
            &[],
        )
        .await
        .expect("revisions")
        .get(0);
    assert_eq!(
        revisions, 9,
        "A's estimates kept, but for the poison message's"
    );
    let rows = s
        .client
        .query(
            "SELECT reason::text, detail FROM rejected_readings ORDER BY seq",
            &[],
        )
        .await
        .expect("rejections");
    assert_eq!(rows.len(), 2, "both readings of the poison message");
    for row in &rows {
        assert_eq!(row.get::<_, String>(0), "invalid_value");
        let detail: String = row.get(1);
        assert!(detail.contains("refuses 666 at commit"), "{detail}");
    }
    // Each reading counted once: 9 of A, then B's 10 (9 of them corrections).
    let body = support::http_get(port, "/metrics").await;
    let value = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(value("ingest_readings_accepted_total"), 19.0, "{body}");
    assert_eq!(value("ingest_readings_corrected_total"), 9.0, "{body}");
}

/// When even the message's rejections are refused (a rule of the application's on the stored
/// payload), one row is kept without the payload, and ingestion goes on.
#[tokio::test]
async fn a_message_whose_rejections_are_refused_too_is_kept_as_one_row_without_its_payload() {
    let s = setup().await;
    s.client
        .batch_execute(
            "ALTER TABLE rejected_messages ADD CONSTRAINT no_secret
                 CHECK (position('SECRET'::bytea IN payload) = 0)",
        )
        .await
        .expect("constraint");
    let mut env = daemon_env(&s.db, &s.broker.url());
    set_env(&mut env, "ENALYSIS_INGEST__BATCH_MAX_AGE_MS", "300");
    let _daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    let poison = json!({"ts": ts(5), "metric": "SECRET", "value": 1.0}).to_string();
    p.publish(&topic, poison.clone()).await;
    for i in 0..10 {
        p.publish(
            &topic,
            json!({"ts": ts(i), "metric": "power", "value": i as f64}).to_string(),
        )
        .await;
    }
    wait_count(&s.client, MEAS, 10).await;
    wait_count(&s.client, REJ, 1).await;
    let row = s
        .client
        .query_one(
            "SELECT reason::text, detail, octet_length(payload), payload_size, seq
             FROM rejected_readings",
            &[],
        )
        .await
        .expect("rejection");
    assert_eq!(row.get::<_, String>(0), "invalid_value");
    assert!(
        row.get::<_, String>(1).contains("no_secret"),
        "{}",
        row.get::<_, String>(1)
    );
    assert_eq!(row.get::<_, i32>(2), 0);
    assert_eq!(row.get::<_, i32>(3) as usize, poison.len());
    assert_eq!(row.get::<_, i32>(4), i32::MAX);
}

#[tokio::test]
async fn metrics_and_readiness_are_served_on_the_http_listener() {
    let s = setup().await;
    let mut env = daemon_env(&s.db, &s.broker.url());
    let port = with_http_port(&mut env);
    let _daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    p.publish(
        &topic,
        json!({"ts": ts(0), "metric": "power", "value": 1.0}).to_string(),
    )
    .await;
    p.publish(&topic, b"garbage".to_vec()).await;
    wait_count(&s.client, MEAS, 1).await;
    wait_count(&s.client, REJ, 1).await;
    let get = |path: &'static str| support::http_get(port, path);
    let ready = get("/readyz").await;
    assert!(ready.starts_with("HTTP/1.0 200"), "{ready}");
    assert!(get("/healthz").await.starts_with("HTTP/1.0 200"));
    let metrics = get("/metrics").await;
    for name in [
        "ingest_messages_received_total",
        "ingest_readings_accepted_total",
        "ingest_readings_rejected_total{reason=\"malformed_payload\"}",
        "ingest_batch_rows_bucket",
        "ingest_flush_duration_seconds_bucket",
        "ingest_end_to_end_latency_seconds_bucket",
        "ingest_mqtt_connected 1",
        "ingest_buffered_readings",
        "ingest_readings_duplicate_total",
        "ingest_db_errors_total",
        "ingest_db_pool_connections{state=\"open\"}",
        "ingest_registry_entities",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    // The exposition passes Prometheus' own linter.
    let body = metrics
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed for this test: apt-get install -y prometheus");
    {
        use std::io::Write;
        let mut stdin = promtool.stdin.take().expect("stdin");
        stdin.write_all(body.as_bytes()).expect("write metrics");
    }
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn daemons_in_a_shared_group_split_the_stream_and_store_it_once_misrouted_topics_too() {
    let s = setup().await;
    let mut env = daemon_env(&s.db, &s.broker.url());
    env.push(("ENALYSIS_MQTT__SHARED_GROUP".into(), "ingest".into()));
    let a = Daemon::start(&env).await;
    // Same group, its own client id.
    let mut env_b = env.clone();
    env_b.retain(|(k, _)| k != "ENALYSIS_MQTT__CLIENT_ID");
    env_b.push((
        "ENALYSIS_MQTT__CLIENT_ID".into(),
        format!("ingest-b-{}", uuid::Uuid::new_v4().simple()),
    ));
    let b = Daemon::start(&env_b).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    // The group's subscription is `$share/ingest/enalysis/v1/#`: misrouted topics reach one
    // of the two, once, and are stored as unknown_topic.
    let misrouted = format!("enalysis/v1/meter/{}/readings", s.ids.meter);
    for i in 0..400 {
        let reading = json!({"ts": ts(i), "metric": "power", "value": 1.0}).to_string();
        if i % 20 == 0 {
            p.publish(&misrouted, reading.clone()).await;
        }
        p.publish(&topic, reading).await;
    }
    wait_count(&s.client, MEAS, 400).await;
    wait_count(
        &s.client,
        "SELECT count(*) FROM rejected_readings WHERE reason = 'unknown_topic'",
        20,
    )
    .await;
    wait_count(&s.client, REJ, 20).await;
    // Both took part: each logged at least one committed batch.
    a.wait_for_log("batch committed", 1).await;
    b.wait_for_log("batch committed", 1).await;
}

#[tokio::test]
async fn mqtts_with_a_private_ca_and_a_password_is_ingested() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    let ids = support::insert_hierarchy(&client).await;
    let pki = common::TestPki::new();
    let d = pki.dir();
    common::run_checked(
        "mosquitto_passwd",
        &["-b", "-c", "passwd", "gateway", "s3cret"],
        d,
    );
    let tls_port = common::free_port();
    let broker = common::Broker::start_with_config(&format!(
        "allow_anonymous false\npassword_file {p}/passwd\n\
         listener {tls_port} 127.0.0.1\ncafile {p}/ca.pem\ncertfile {p}/server.pem\nkeyfile {p}/server.key\n",
        p = d.display()
    ));
    let mut env = daemon_env(&db, &format!("mqtts://gateway:s3cret@127.0.0.1:{tls_port}"));
    env.push((
        "ENALYSIS_MQTT__CA_FILE".into(),
        d.join("ca.pem").display().to_string(),
    ));
    let _daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&format!(
        "mqtt://gateway:s3cret@127.0.0.1:{}",
        broker.port()
    ))
    .await;
    p.publish(
        &format!("enalysis/v1/meters/{}/readings", ids.meter),
        json!({"ts": ts(0), "metric": "power", "value": 1.0}).to_string(),
    )
    .await;
    wait_count(&client, MEAS, 1).await;
}

#[tokio::test]
async fn a_burst_far_larger_than_the_queue_is_acked_without_reconnects_or_redelivery() {
    let s = setup().await;
    let mut env = daemon_env(&s.db, &s.broker.url());
    let port = with_http_port(&mut env);
    // A queue much smaller than the burst: intake must pause and resume, and the acks of
    // committed messages must still be written while it is paused.
    env.push(("ENALYSIS_INGEST__QUEUE_MESSAGES".into(), "200".into()));
    env.push(("ENALYSIS_INGEST__BATCH_MAX_ROWS".into(), "500".into()));
    let daemon = Daemon::start(&env).await;
    // The unacknowledged window, sampled while the burst flows.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut max = 0.0f64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let m = support::http_get(port, "/metrics").await;
                if let Some(v) = m
                    .lines()
                    .find_map(|l| l.strip_prefix("ingest_mqtt_unacked_messages "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                {
                    max = max.max(v);
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            max
        })
    };
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    let total = 40_000;
    for i in 0..total {
        p.publish(
            &topic,
            json!({"ts": ts(i), "metric": "power", "value": 1.0}).to_string(),
        )
        .await;
    }
    p.wait_acked(total as usize).await;
    wait_count(&s.client, MEAS, total).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let max_unacked = sampler.await.expect("sampler");
    let log = daemon.log_text();
    assert!(!log.contains("could not queue a PUBACK"), "{log}");
    assert!(!log.contains("reconnecting"), "{log}");
    // Received but not acknowledged: the MQTT task's overflow (1024), the queue (200), the
    // batch being built, the one being written and the one waiting for it (500 each), and
    // PUBACKs handed to the client but not yet written. mosquitto does not hold the stream to
    // our Receive Maximum, so only prompt PUBACKs keep this bounded: with rumqttc writing one
    // PUBACK per wake-up (vendor/rumqttc/PATCHED.md) it grew with the burst.
    assert!(
        max_unacked <= 5_000.0,
        "the unacknowledged window reached {max_unacked}"
    );
    // Nothing was redelivered.
    let duplicates: u64 = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "batch committed")
        .filter_map(|v| v["duplicates"].as_u64())
        .sum();
    assert_eq!(duplicates, 0);
}

#[tokio::test]
async fn ten_thousand_rejections_make_a_handful_of_log_lines_that_count_them_all() {
    let s = setup().await;
    let mut env = daemon_env(&s.db, &s.broker.url());
    env.push(("ENALYSIS_LOG__REJECTION_SUMMARY_SECS".into(), "1".into()));
    let daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    let total = 10_000;
    for i in 0..total {
        p.publish(&topic, format!("garbage {i}")).await;
    }
    wait_count(&s.client, REJ, total).await;
    let summaries = || {
        daemon
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "readings rejected")
            .collect::<Vec<_>>()
    };
    let started = std::time::Instant::now();
    while summaries()
        .iter()
        .filter_map(|v| v["rejected"].as_u64())
        .sum::<u64>()
        < total as u64
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "summaries do not add up to {total}: {:?}",
            summaries()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let lines = summaries();
    assert!(lines.len() <= 15, "{} summary lines", lines.len());
    assert!(
        lines[0]["reasons"]
            .as_str()
            .is_some_and(|r| r.starts_with("malformed_payload=")),
        "{:?}",
        lines[0]
    );
    assert!(lines[0]["topic"].as_str().is_some_and(|t| t == topic));
    // Nothing else logs per rejection (debug lines, on in tests, log per batch).
    let info_and_above = daemon
        .log_text()
        .lines()
        .filter(|l| !l.contains("\"level\":\"DEBUG\""))
        .count();
    assert!(info_and_above < 50, "{info_and_above} lines");
}

#[tokio::test]
async fn operators_read_readings_and_rejections_and_create_meters_through_the_api() {
    let s = setup().await;
    let token = "test-token";
    let mut env = daemon_env(&s.db, &s.broker.url());
    let port = with_http_port(&mut env);
    env.push(("ENALYSIS_ADMIN_TOKEN".into(), token.into()));
    let _daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    for i in 0..10 {
        p.publish(
            &topic,
            json!({"ts": ts(i * 1000), "metric": "power", "value": i as f64}).to_string(),
        )
        .await;
    }
    p.publish(&topic, b"not json".to_vec()).await;
    wait_count(&s.client, MEAS, 10).await;
    wait_count(&s.client, REJ, 1).await;

    let path = format!("/api/v1/meters/{}/measurements?metric=power", s.ids.meter);
    assert_eq!(support::http(port, "GET", &path, None, None).await.0, 401);
    let (status, body) = support::http(port, "GET", &path, Some(token), None).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["items"].as_array().map(|a| a.len()), Some(10), "{body}");
    assert_eq!(v["items"][0]["value"], 9.0, "newest first: {body}");

    let (status, body) =
        support::http(port, "GET", &format!("{path}&bucket=1h"), Some(token), None).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let count: i64 = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|b| b["count"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(count, 10, "{body}");

    let (status, body) = support::http(
        port,
        "GET",
        "/api/v1/rejections?reason=malformed_payload",
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("not json"), "{body}");
    let (status, _) = support::http(
        port,
        "GET",
        "/api/v1/rejections?reason=nope",
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 400);

    // A meter created through the API is accepted by the running pipeline at once.
    let (status, body) = support::http(
        port,
        "POST",
        "/api/v1/meters",
        Some(token),
        Some(&json!({"site_id": s.ids.site, "name": "Via API", "external_id": "via-api", "category": "PROD"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let started = std::time::Instant::now();
    let mut i = 0;
    loop {
        p.publish(
            "enalysis/v1/meters/via-api/readings",
            json!({"ts": ts(100_000 + i), "metric": "power", "value": 1.0}).to_string(),
        )
        .await;
        i += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let n: i64 = s
            .client
            .query_one(
                "SELECT count(*) FROM measurements m JOIN meters e ON e.id = m.entity_id
                 WHERE e.external_id = 'via-api'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        if n > 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "not accepted"
        );
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn the_daemon_refuses_a_public_listener_without_an_admin_token() {
    let s = setup().await;
    let mut env = daemon_env(&s.db, &s.broker.url());
    set_env(
        &mut env,
        "ENALYSIS_HTTP_ADDR",
        format!("0.0.0.0:{}", common::free_port()),
    );
    let mut daemon = Daemon::spawn(&env);
    assert_eq!(daemon.wait_exit(20).await, Some(1));
    assert!(
        daemon.log_text().contains("error: "),
        "{}",
        daemon.log_text()
    );
}

#[tokio::test]
async fn the_simulators_readings_are_all_accepted_and_the_logs_are_json_lines() {
    let s = setup().await;
    let daemon = Daemon::start(&daemon_env(&s.db, &s.broker.url())).await;
    let out = support::Cmd::new(&[
        "simulate",
        "--rate",
        "300",
        "--duration",
        "2",
        "--connections",
        "2",
    ])
    .env("DATABASE_URL", &s.db)
    .env("MQTT_URL", &s.broker.url())
    .run();
    out.assert_ok();
    // "published N messages (R readings, 0 invalid) …"
    let readings: i64 = out
        .stdout
        .split_once(" messages (")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no reading count in {out:?}"));
    assert!(readings >= 600, "{out:?}");
    wait_count(&s.client, MEAS, readings).await;
    wait_count(&s.client, REJ, 0).await;
    for line in daemon.log_text().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(v.get(field).is_some(), "{field} missing: {line}");
        }
    }
}

#[tokio::test]
async fn the_simulator_can_send_one_invalid_message_for_every_reason() {
    let s = setup().await;
    let _daemon = Daemon::start(&daemon_env(&s.db, &s.broker.url())).await;
    support::Cmd::new(&[
        "simulate",
        "--rate",
        "14",
        "--duration",
        "1",
        "--invalid-share",
        "1",
    ])
    .env("DATABASE_URL", &s.db)
    .env("MQTT_URL", &s.broker.url())
    .run()
    .assert_ok();
    wait_count(
        &s.client,
        "SELECT count(DISTINCT reason) FROM rejected_readings",
        enalysis_ingest::model::Reason::ALL.len() as i64,
    )
    .await;
    // `superseded` takes two readings for one key: the first is stored.
    wait_count(&s.client, MEAS, 1).await;
}

/// The daemon subscribes to everything under the prefix: a misrouted topic is stored as
/// `unknown_topic` (before, the broker never delivered it), and a topic of
/// `mqtt.ignore_topics` is acknowledged, counted and not stored.
#[tokio::test]
async fn a_misrouted_topic_is_stored_and_an_ignored_one_is_acknowledged_only() {
    let s = setup().await;
    let mut env = daemon_env(&s.db, &s.broker.url());
    let port = with_http_port(&mut env);
    env.push((
        "ENALYSIS_MQTT__IGNORE_TOPICS".into(),
        r#"["enalysis/v1/gateways/+/status"]"#.into(),
    ));
    let _daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let reading = json!({"ts": ts(0), "metric": "power", "value": 1.0}).to_string();
    let misrouted = [
        format!("enalysis/v1/meter/{}/readings", s.ids.meter),
        format!("enalysis/v1/meters/{}/reading", s.ids.meter),
        format!("enalysis/v1/meters/{}/readings/extra", s.ids.meter),
        "enalysis/v1".to_string(),
    ];
    for topic in &misrouted {
        p.publish(topic, reading.clone()).await;
    }
    p.publish("enalysis/v1/gateways/gw-1/status", b"online".to_vec())
        .await;
    // Outside the prefix: not ours, never delivered.
    p.publish("elsewhere/meters/x/readings", reading.clone())
        .await;
    let good = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    p.publish(&good, reading.clone()).await;
    wait_count(&s.client, MEAS, 1).await;
    wait_count(&s.client, REJ, misrouted.len() as i64).await;
    let rows = s
        .client
        .query(
            "SELECT topic, reason::text FROM rejected_readings ORDER BY topic",
            &[],
        )
        .await
        .expect("rejections");
    let mut stored: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    stored.sort();
    let mut expected: Vec<(String, String)> = misrouted
        .iter()
        .map(|t| (t.clone(), "unknown_topic".to_string()))
        .collect();
    expected.sort();
    assert_eq!(stored, expected);
    let metrics = support::http_get(port, "/metrics").await;
    assert!(
        metrics.contains("ingest_messages_ignored_total 1"),
        "{metrics}"
    );
}

/// A persistent session made by a release that subscribed to the four contract topics still
/// holds those filters; resumed by this one (which subscribes to `{prefix}/#`), it would get
/// every reading twice. The daemon drops the old filters: each message arrives once.
#[tokio::test]
async fn a_session_left_by_the_four_filter_release_does_not_deliver_twice() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let s = setup().await;
    let mut env = daemon_env(&s.db, &s.broker.url());
    let port = with_http_port(&mut env);
    let client_id = env
        .iter()
        .find(|(k, _)| k == "ENALYSIS_MQTT__CLIENT_ID")
        .map(|(_, v)| v.clone())
        .expect("client id");
    // The old release's session: same client id, persistent, the four filters.
    {
        let mut opts = MqttOptions::new(&client_id, "127.0.0.1", s.broker.port());
        opts.set_clean_start(false);
        opts.set_session_expiry_interval(Some(3600));
        let (client, mut eventloop) = AsyncClient::new(opts, 10);
        for kind in ["meters", "assets", "energy-sources", "gateways"] {
            client
                .subscribe(format!("enalysis/v1/{kind}/+/readings"), QoS::AtLeastOnce)
                .await
                .expect("subscribe");
        }
        let mut subacks = 0;
        while subacks < 4 {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = eventloop.poll().await {
                subacks += 1;
            }
        }
        client.disconnect().await.expect("disconnect");
        while eventloop.poll().await.is_ok() {}
    }
    let daemon = Daemon::start(&env).await;
    daemon.wait_for_log("session_present\":true", 1).await;
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    let n = 50;
    for i in 0..n {
        p.publish(
            &topic,
            json!({"ts": ts(i), "metric": "power", "value": 1.0}).to_string(),
        )
        .await;
    }
    wait_count(&s.client, MEAS, n).await;
    // Give a second copy time to arrive, then count what was received.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let metrics = support::http_get(port, "/metrics").await;
    assert!(
        metrics.contains(&format!("ingest_messages_received_total {n}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("ingest_readings_duplicate_total 0"),
        "{metrics}"
    );
}
