//! Faults: the daemon killed, the database gone. Every reading the broker accepted ends up in
//! `measurements` exactly once.

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::json;

use crate::common;
use crate::support::{self, Daemon, Publisher, daemon_env, wait_count};

/// Distinct readings: message `i` carries one reading with its own timestamp.
fn reading(i: i64) -> String {
    let ts = Utc::now() - ChronoDuration::hours(1) + ChronoDuration::milliseconds(i);
    json!({"ts": ts.to_rfc3339(), "metric": "power", "value": i as f64}).to_string()
}

/// Waits until exactly `total` readings are stored and checks they are the published ones:
/// reading `i` carries value `i`, so `total` distinct values from 0 to `total - 1` mean nothing
/// lost and nothing else stored (the primary key already rules out a reading stored twice).
async fn assert_exactly_once(client: &tokio_postgres::Client, total: i64) {
    wait_count(client, "SELECT count(*) FROM measurements", total).await;
    let row = client
        .query_one(
            "SELECT count(DISTINCT value), min(value), max(value) FROM measurements",
            &[],
        )
        .await
        .expect("values");
    assert_eq!(row.get::<_, i64>(0), total);
    assert_eq!(row.get::<_, f64>(1), 0.0);
    assert_eq!(row.get::<_, f64>(2), (total - 1) as f64);
}

/// A cluster of its own (the test stops or disturbs it), migrated, with the test inventory.
async fn dedicated_with_inventory() -> (common::PgServer, common::TestDb, support::Ids) {
    let pg = common::PgServer::dedicated();
    let db = common::fresh_db(&pg).await;
    let mut client = support::connect(&db.url).await;
    enalysis_ingest::migrate::run(&mut client)
        .await
        .expect("migrate");
    let ids = support::insert_hierarchy(&client).await;
    (pg, db, ids)
}

#[tokio::test]
async fn sigkill_mid_stream_and_restart_loses_nothing_and_stores_nothing_twice() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    let ids = support::insert_hierarchy(&client).await;
    let broker = common::Broker::start();
    let env = daemon_env(&db, &broker.url());
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    let p = Publisher::connect(&broker.url()).await;
    let total = 3000;
    let mut daemon = Daemon::start(&env).await;
    for round in 0..3 {
        for i in 0..total / 3 {
            p.publish(&topic, reading(round * 1000 + i)).await;
        }
        // Kill while batches are in flight, then restart with the same client id.
        daemon.kill9();
        daemon = Daemon::start(&env).await;
    }
    p.wait_acked(total as usize).await;
    assert_exactly_once(&client, total).await;
}

#[tokio::test]
async fn the_database_stopped_and_started_mid_stream_loses_nothing() {
    let (mut pg, db, ids) = dedicated_with_inventory().await;
    let db = db.url;
    let broker = common::Broker::start();
    let mut env = daemon_env(&db, &broker.url());
    // A small queue, so the outage outlasts the daemon's buffer and intake must pause.
    env.push(("ENALYSIS_INGEST__QUEUE_MESSAGES".into(), "100".into()));
    env.push(("ENALYSIS_INGEST__BATCH_MAX_ROWS".into(), "50".into()));
    let daemon = Daemon::start(&env).await;
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    let p = Publisher::connect(&broker.url()).await;
    let total: i64 = 2000;
    for i in 0..total / 2 {
        p.publish(&topic, reading(i)).await;
    }
    pg.stop();
    for i in total / 2..total {
        p.publish(&topic, reading(i)).await;
    }
    p.wait_acked(total as usize).await;
    daemon.wait_for_log("batch not written; retrying", 1).await;
    pg.start();
    let client = support::connect(&db).await;
    assert_exactly_once(&client, total).await;
}

#[tokio::test]
async fn connections_killed_from_the_server_side_lose_nothing() {
    let (pg, db, ids) = dedicated_with_inventory().await;
    let client = support::connect(&db.url).await;
    let broker = common::Broker::start();
    let mut env = daemon_env(&db.url, &broker.url());
    env.push(("ENALYSIS_INGEST__BATCH_MAX_ROWS".into(), "20".into()));
    let _daemon = Daemon::start(&env).await;
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    let p = Publisher::connect(&broker.url()).await;
    let total: i64 = 1500;
    for i in 0..total {
        p.publish(&topic, reading(i)).await;
        if i % 300 == 150 {
            pg.execute_blocking(
                &db.name,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'enalysis-ingest'",
            );
        }
    }
    p.wait_acked(total as usize).await;
    assert_exactly_once(&client, total).await;
}

#[tokio::test]
async fn a_daemon_started_before_its_database_waits_for_it_then_ingests() {
    let mut pg = common::PgServer::dedicated();
    let db = common::fresh_db(&pg).await;
    pg.stop();
    let broker = common::Broker::start();
    let daemon = Daemon::spawn(&daemon_env(&db.url, &broker.url()));
    daemon.wait_for_log("database not reachable yet", 1).await;
    pg.start();
    daemon.wait_for_log("subscribed", 1).await;
    let client = support::connect(&db.url).await;
    let ids = support::insert_hierarchy(&client).await;
    let p = Publisher::connect(&broker.url()).await;
    // The registry reloads on the insert's notification; publish until it is accepted.
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    for i in 0..100 {
        p.publish(&topic, reading(i)).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    common::wait_until(
        std::time::Duration::from_secs(20),
        "readings of the meter created after start-up",
        || {
            let client = &client;
            async move {
                client
                    .query_one("SELECT count(*) FROM measurements", &[])
                    .await
                    .map(|r| r.get::<_, i64>(0) > 0)
                    .unwrap_or(false)
            }
        },
    )
    .await;
}

#[tokio::test]
async fn readyz_says_503_while_the_database_is_down_and_200_when_it_is_back() {
    let mut pg = common::PgServer::dedicated();
    let db = common::fresh_db(&pg).await;
    let broker = common::Broker::start();
    let port = common::free_port();
    let mut env = daemon_env(&db.url, &broker.url());
    env.retain(|(k, _)| k != "ENALYSIS_HTTP_ADDR");
    env.push(("ENALYSIS_HTTP_ADDR".into(), format!("127.0.0.1:{port}")));
    let _daemon = Daemon::start(&env).await;
    assert!(
        support::http_get(port, "/readyz")
            .await
            .starts_with("HTTP/1.0 200")
    );
    pg.stop();
    let response = support::http_get(port, "/readyz").await;
    assert!(response.starts_with("HTTP/1.0 503"), "{response}");
    assert!(response.contains("database"), "{response}");
    // Alive all the same.
    assert!(
        support::http_get(port, "/healthz")
            .await
            .starts_with("HTTP/1.0 200")
    );
    pg.start();
    common::wait_until(
        std::time::Duration::from_secs(20),
        "/readyz to be 200 again",
        || async move {
            support::http_get(port, "/readyz")
                .await
                .starts_with("HTTP/1.0 200")
        },
    )
    .await;
}
