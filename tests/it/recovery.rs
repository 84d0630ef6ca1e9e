//! Recovery (issue #17): no reconnect to the broker while intake is paused (overload, a
//! database outage), and a PostgreSQL failover followed without a restart, nothing lost.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::json;

use crate::common::{self, PgPair, Replication};
use crate::support::{
    self, Daemon, Publisher, assert_exactly_once, daemon_env, set_env, wait_count, with_http_port,
};

/// The tests' keep-alive (`support::daemon_env`), the smallest the daemon accepts.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Most messages one read from the broker brings (rumqttc's read batch, `MQTT_READ_BATCH` in
/// src/config.rs): the bound on what waits beyond the queue.
const READ_BATCH: f64 = 10.0;

/// Reading `i` of a test: value `i`, at a timestamp of its own (the same `i`, the same reading).
fn reading(i: i64) -> serde_json::Value {
    static BASE: OnceLock<DateTime<Utc>> = OnceLock::new();
    let base = *BASE.get_or_init(|| Utc::now() - ChronoDuration::hours(1));
    let ts = base + ChronoDuration::milliseconds(i);
    json!({"ts": ts.to_rfc3339(), "metric": "power", "value": i as f64})
}

/// Message `m` of ten readings, `10m..10m + 10`.
fn ten_readings(m: i64) -> String {
    readings(m, 10)
}

/// Message `m` of `per` readings, `per * m..per * (m + 1)`.
fn readings(m: i64, per: i64) -> String {
    json!((per * m..per * (m + 1)).map(reading).collect::<Vec<_>>()).to_string()
}

/// The value of an unlabelled metric on the daemon's `/metrics`.
async fn metric(port: u16, name: &str) -> Option<f64> {
    let text = support::http_get(port, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Samples `ingest_mqtt_connected` every 100 ms until stopped; returns whether it was ever
/// anything but 1 (0, or missing once it had been seen).
fn watch_connected(port: u16) -> (tokio::task::JoinHandle<bool>, std::sync::Arc<AtomicBool>) {
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    let task = tokio::spawn(async move {
        let mut dropped = false;
        while !done.load(Ordering::SeqCst) {
            if metric(port, "ingest_mqtt_connected").await != Some(1.0) {
                dropped = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        dropped
    });
    (task, stop)
}

/// No reconnect, by every account: the connection gauge never left 1, the reconnect counter
/// never moved, the log shows one connection and no loss of it.
async fn assert_no_reconnect(
    daemon: &Daemon,
    port: u16,
    watch: (tokio::task::JoinHandle<bool>, std::sync::Arc<AtomicBool>),
) {
    watch.1.store(true, Ordering::SeqCst);
    let dropped = watch.0.await.expect("the watcher");
    let log = daemon.log_text();
    let connects = log
        .lines()
        .filter(|l| l.contains("connected to the MQTT broker"))
        .count();
    assert!(
        !dropped && connects == 1 && !log.contains("lost the MQTT connection"),
        "the daemon lost its broker connection (gauge dropped: {dropped}, connects: {connects}):\n{log}"
    );
    assert_eq!(
        metric(port, "ingest_mqtt_reconnects_total")
            .await
            .unwrap_or(0.0),
        0.0
    );
}

/// What waited beyond the queue never exceeded one read from the broker.
async fn assert_overflow_bounded(port: u16) {
    let peak = metric(port, "ingest_mqtt_overflow_peak_messages")
        .await
        .unwrap_or(0.0);
    assert!(
        peak <= READ_BATCH,
        "{peak} messages waited beyond the queue; the bound is one read, {READ_BATCH}"
    );
    eprintln!("peak overflow: {peak} messages (bound {READ_BATCH})");
}

/// A publisher far faster than the database (every statement into `measurements` made 100 ms
/// slower by a trigger, batches of 100 rows: ~1,000 readings/s at most) for 25,000 readings of
/// ten per message, so the daemon is paused by a full queue for 25 s, five keep-alive
/// periods. Before the fix the PINGRESP waited behind the backlog the broker had sent first
/// and the daemon reconnected every two periods ("Last pingreq isn't acked").
#[tokio::test]
async fn a_publisher_faster_than_the_database_for_several_keep_alive_periods_causes_no_reconnect() {
    let s = support::setup().await;
    s.client
        .batch_execute(
            "CREATE FUNCTION slow_statement() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(0.1); RETURN NULL; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON measurements
               FOR EACH STATEMENT EXECUTE FUNCTION slow_statement();",
        )
        .await
        .expect("slow the database down");
    let mut env = daemon_env(&s.db, &s.broker.url());
    set_env(&mut env, "ENALYSIS_INGEST__QUEUE_MESSAGES", "100");
    set_env(&mut env, "ENALYSIS_INGEST__BATCH_MAX_ROWS", "100");
    let port = with_http_port(&mut env);
    let daemon = Daemon::start(&env).await;
    let watch = watch_connected(port);
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    let p = Publisher::connect(&s.broker.url()).await;
    let messages: i64 = 2_500;
    for m in 0..messages {
        p.publish(&topic, ten_readings(m)).await;
    }
    p.wait_acked(messages as usize).await;
    assert_exactly_once(&s.client, 10 * messages).await;
    assert_no_reconnect(&daemon, port, watch).await;
    assert_overflow_bounded(port).await;
}

/// The database stopped for three keep-alive periods (the broker drops a client silent for
/// 1.5) while a backlog far larger than the daemon may hold waits: intake pauses on a spent
/// byte budget, the session stays up. Before the fix the MQTT task stopped polling while the
/// budget was spent, sent no PINGREQ, and the broker dropped it. (While the queue alone is
/// full the broker's flow control kept the old loop polling: mosquitto holds to the Receive
/// Maximum, the queue's size, while no acks flow.)
#[tokio::test]
async fn a_database_outage_longer_than_the_keep_alive_with_a_backlog_causes_no_reconnect() {
    let (mut pg, db, ids) = support::dedicated_with_inventory().await;
    let client = support::connect(&db.url).await;
    let broker = common::Broker::start();
    let mut env = daemon_env(&db.url, &broker.url());
    // The smallest budget these packets allow: 11 x 64 KiB kept for one read, 4 MiB more.
    let budget: f64 = (11 * 65536 + (4 << 20)) as f64;
    set_env(&mut env, "ENALYSIS_MQTT__MAX_PACKET_BYTES", "65536");
    set_env(&mut env, "ENALYSIS_INGEST__MAX_PAYLOAD_BYTES", "65536");
    set_env(
        &mut env,
        "ENALYSIS_INGEST__MAX_BUFFERED_BYTES",
        format!("{budget}"),
    );
    set_env(&mut env, "ENALYSIS_INGEST__QUEUE_MESSAGES", "100");
    set_env(&mut env, "ENALYSIS_INGEST__BATCH_MAX_ROWS", "1400");
    let port = with_http_port(&mut env);
    let daemon = Daemon::start(&env).await;
    let watch = watch_connected(port);
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    let p = Publisher::connect(&broker.url()).await;
    // 700 readings (~53 KB) a message: what the queue holds is more than the budget.
    let per: i64 = 700;
    for m in 0..2 {
        p.publish(&topic, readings(m, per)).await;
    }
    wait_count(&client, "SELECT count(*) FROM measurements", 2 * per).await;
    drop(client);
    pg.stop();
    let messages: i64 = 150;
    for m in 2..messages {
        p.publish(&topic, readings(m, per)).await;
    }
    p.wait_acked(messages as usize).await;
    daemon.wait_for_log("batch not written; retrying", 1).await;
    // The scenario: intake paused on a spent budget (short of the read reserve).
    let reserve = (11 * 65536) as f64;
    common::wait_until(
        Duration::from_secs(20),
        "the budget to be spent",
        || async move {
            metric(port, "ingest_buffered_bytes")
                .await
                .is_some_and(|b| b + reserve >= budget)
        },
    )
    .await;
    // Down for three keep-alive periods: the daemon must keep its session all along.
    let down = tokio::time::Instant::now();
    common::wait_until(
        2 * 3 * KEEP_ALIVE,
        "three keep-alive periods of outage",
        || async move { down.elapsed() >= 3 * KEEP_ALIVE },
    )
    .await;
    assert!(
        support::http_get(port, "/readyz")
            .await
            .starts_with("HTTP/1.0 503")
    );
    pg.start();
    let client = support::connect(&db.url).await;
    assert_exactly_once(&client, per * messages).await;
    assert_no_reconnect(&daemon, port, watch).await;
    assert_overflow_bounded(port).await;
}

/// What [`failover_mid_stream`] leaves: the promoted standby, the daemon, what was published.
struct AfterFailover {
    new_primary: tokio_postgres::Client,
    daemon: Daemon,
    port: u16,
    messages: i64,
    _pair: PgPair,
    _broker: common::Broker,
}

/// A primary and its standby, the daemon given both (`target_session_attrs=read-write`), a
/// steady stream of ten-reading messages; mid-stream the primary crashes (`kill -9` of all
/// its processes) and the standby is promoted. With `behind` readings, the primary's WAL
/// sender is stopped (SIGSTOP: a slow network to the standby) until the primary has committed
/// that many more, then the primary crashes. Returns once the broker has every message.
async fn failover_mid_stream(replication: Replication, behind: Option<i64>) -> AfterFailover {
    let mut pair = PgPair::start(replication).await;
    let db = common::fresh_db(&pair.primary).await;
    let primary = support::connect(&db.url).await;
    enalysis_ingest::migrate::run(&mut support::connect(&db.url).await)
        .await
        .expect("migrate");
    let ids = support::insert_hierarchy(&primary).await;
    let broker = common::Broker::start();
    let mut env = daemon_env(&pair.url(&db.name), &broker.url());
    set_env(&mut env, "ENALYSIS_INGEST__BATCH_MAX_ROWS", "50");
    set_env(&mut env, "ENALYSIS_DATABASE__CONNECT_TIMEOUT_MS", "1000");
    let port = with_http_port(&mut env);
    let daemon = Daemon::start(&env).await;
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    let p = Publisher::connect(&broker.url()).await;
    // ~2,000 readings/s, for longer than the failover takes.
    let messages: i64 = 600;
    let stream = {
        let (client, topic) = (p.client.clone(), topic.clone());
        tokio::spawn(async move {
            for m in 0..messages {
                client
                    .publish(
                        topic.as_str(),
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        false,
                        ten_readings(m),
                    )
                    .await
                    .expect("queue publish");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    common::wait_until(
        Duration::from_secs(30),
        "readings committed on the primary",
        || {
            let primary = &primary;
            async move {
                primary
                    .query_one("SELECT count(*) FROM measurements", &[])
                    .await
                    .is_ok_and(|r| r.get::<_, i64>(0) >= 500)
            }
        },
    )
    .await;
    if let Some(n) = behind {
        stop_the_wal_sender(&primary, n).await;
    }
    drop(primary);
    // SIGKILL ends a stopped process too.
    pair.primary.kill9();
    pair.standby.promote();
    stream.await.expect("the publisher");
    p.wait_acked(messages as usize).await;
    let new_primary = support::connect(&pair.standby.url(&db.name)).await;
    AfterFailover {
        new_primary,
        daemon,
        port,
        messages,
        _pair: pair,
        _broker: broker,
    }
}

/// Stops the primary's WAL sender to the standby (what it has not sent, the standby never
/// gets), then waits until the primary has committed `n` readings more.
async fn stop_the_wal_sender(primary: &tokio_postgres::Client, n: i64) {
    let pid: i32 = primary
        .query_one(
            "SELECT pid FROM pg_stat_replication WHERE application_name = $1",
            &[&common::STANDBY_NAME],
        )
        .await
        .expect("the WAL sender")
        .get(0);
    assert!(common::signal(pid as u32, "STOP"), "SIGSTOP the WAL sender");
    let count = "SELECT count(*) FROM measurements";
    let before: i64 = primary.query_one(count, &[]).await.expect("count").get(0);
    common::wait_until(
        Duration::from_secs(30),
        "readings committed on the primary while the standby is behind",
        || async move {
            primary
                .query_one(count, &[])
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) >= before + n)
        },
    )
    .await;
}

/// The daemon went through the failover as a database outage: it took nothing for the rows'
/// fault, kept its broker connection, is still running and ready.
async fn assert_followed(f: &mut AfterFailover) {
    let rejected: i64 = f
        .new_primary
        .query_one("SELECT count(*) FROM rejected_readings", &[])
        .await
        .expect("rejections")
        .get(0);
    assert_eq!(rejected, 0, "a reading was stored as a rejection");
    assert!(
        f.daemon.is_running(),
        "the daemon exited:\n{}",
        f.daemon.log_text()
    );
    let log = f.daemon.log_text();
    assert!(
        !log.contains("keeps refusing") && !log.contains("keeps failing"),
        "the failover was taken for the rows' fault:\n{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("connected to the MQTT broker"))
            .count(),
        1,
        "{log}"
    );
    support::wait_readyz(f.port, 200, "").await;
}

/// With a synchronous standby, every reading is stored exactly once on the new primary, and
/// the daemon follows without a restart (nor a broker reconnect).
#[tokio::test]
async fn the_primary_killed_mid_stream_and_the_standby_promoted_loses_nothing() {
    let mut f = failover_mid_stream(Replication::Synchronous, None).await;
    assert_exactly_once(&f.new_primary, 10 * f.messages).await;
    assert_followed(&mut f).await;
}

/// With asynchronous replication a failover loses what the primary committed (and the daemon
/// acknowledged) but had not streamed to the standby before it died: here the standby is
/// 1,000 readings behind, and what is lost is those last commits before the crash, one run of
/// consecutive readings. Everything else is stored exactly once. The loss is printed (README,
/// Guarantees).
#[tokio::test]
async fn with_asynchronous_replication_a_failover_loses_the_commits_the_standby_had_not_received() {
    let behind = 1_000;
    let mut f = failover_mid_stream(Replication::Asynchronous, Some(behind)).await;
    let total = 10 * f.messages;
    // Everything after the loss arrives: the last reading is stored.
    wait_count(
        &f.new_primary,
        &format!(
            "SELECT count(*) FROM measurements WHERE value = {}",
            total - 1
        ),
        1,
    )
    .await;
    assert_followed(&mut f).await;
    let row = f
        .new_primary
        .query_one(
            "SELECT count(*), count(DISTINCT value), min(value), max(value),
                    (SELECT count(*) FROM generate_series(0, $1::bigint - 1) AS v
                     WHERE v NOT IN (SELECT value FROM measurements))
             FROM measurements",
            &[&total],
        )
        .await
        .expect("counts");
    let (stored, distinct) = (row.get::<_, i64>(0), row.get::<_, i64>(1));
    let lost = total - stored;
    assert_eq!(stored, distinct);
    assert_eq!(row.get::<_, i64>(4), lost);
    // Acknowledged after their commit, so not redelivered: lost, save those whose acks had
    // not gone out yet.
    assert!(
        lost > 0,
        "nothing lost although the standby was {behind} readings behind"
    );
    {
        // One run: the lowest and highest missing values are `lost - 1` apart.
        let run = f
            .new_primary
            .query_one(
                "SELECT min(v), max(v) FROM generate_series(0, $1::bigint - 1) AS v
                 WHERE v NOT IN (SELECT value FROM measurements)",
                &[&total],
            )
            .await
            .expect("the missing run");
        assert_eq!(
            run.get::<_, i64>(1) - run.get::<_, i64>(0) + 1,
            lost,
            "the readings lost are not one run of the last commits"
        );
    }
    eprintln!(
        "asynchronous failover, the standby {behind}+ readings behind: {lost} of {total} readings lost"
    );
}

/// A daemon whose `DATABASE_URL` names only a standby (`target_session_attrs=read-write`)
/// waits: `/readyz` is 503 and names the reason, nothing is acknowledged — what the broker
/// holds for its session is stored, exactly once, by a daemon given the primary.
#[tokio::test]
async fn a_daemon_pointed_only_at_a_standby_waits_and_acks_nothing() {
    let pair = PgPair::start(Replication::Synchronous).await;
    let db = common::fresh_db(&pair.primary).await;
    let primary = support::connect(&db.url).await;
    enalysis_ingest::migrate::run(&mut support::connect(&db.url).await)
        .await
        .expect("migrate");
    let ids = support::insert_hierarchy(&primary).await;
    let broker = common::Broker::start();
    let on_primary = daemon_env(&pair.url(&db.name), &broker.url());
    // The daemon's session at the broker exists: it ran once against the primary.
    let mut first = Daemon::start(&on_primary).await;
    first.signal("TERM");
    assert_eq!(first.wait_exit(30).await, Some(0));
    let standby_url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?target_session_attrs=read-write",
        pair.standby.port(),
        db.name
    );
    let mut on_standby = on_primary.clone();
    set_env(&mut on_standby, "DATABASE_URL", standby_url);
    let port = with_http_port(&mut on_standby);
    let waiting = Daemon::spawn(&on_standby);
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    let p = Publisher::connect(&broker.url()).await;
    let messages: i64 = 100;
    for m in 0..messages {
        p.publish(&topic, ten_readings(m)).await;
    }
    p.wait_acked(messages as usize).await;
    support::wait_readyz(port, 503, "no server accepts writes").await;
    waiting
        .wait_for_log(
            "no server accepts writes (target_session_attrs=read-write)",
            1,
        )
        .await;
    let stored: i64 = primary
        .query_one("SELECT count(*) FROM measurements", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 0);
    drop(waiting);
    // Nothing was acknowledged: the broker still holds every message for the session.
    let _daemon = Daemon::start(&on_primary).await;
    assert_exactly_once(&primary, 10 * messages).await;
}

/// A server that starts answering read-only under a running daemon (every write `25006`,
/// as a demoted primary or a standby would): the batch is retried as the database being away
/// — never a row error, never acknowledged — the pooled connections to it are dropped,
/// `/readyz` is 503 naming the reason, and once it takes writes again everything is stored
/// exactly once.
#[tokio::test]
async fn a_server_turned_read_only_is_waited_for_never_taken_for_a_row_error() {
    let (pg, db, ids) = support::dedicated_with_inventory().await;
    let client = support::connect(&db.url).await;
    let broker = common::Broker::start();
    let url = format!("{}?target_session_attrs=read-write", db.url);
    let mut env = daemon_env(&url, &broker.url());
    set_env(&mut env, "ENALYSIS_INGEST__BATCH_MAX_ROWS", "50");
    let port = with_http_port(&mut env);
    let daemon = Daemon::start(&env).await;
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    let p = Publisher::connect(&broker.url()).await;
    for m in 0..10 {
        p.publish(&topic, ten_readings(m)).await;
    }
    wait_count(&client, "SELECT count(*) FROM measurements", 100).await;
    // Open sessions take the new default at their next transaction.
    pg.execute_blocking(
        "postgres",
        "ALTER SYSTEM SET default_transaction_read_only = on",
    );
    pg.execute_blocking("postgres", "SELECT pg_reload_conf()");
    let messages: i64 = 200;
    for m in 10..messages {
        p.publish(&topic, ten_readings(m)).await;
    }
    p.wait_acked(messages as usize).await;
    daemon.wait_for_log("read-only transaction", 1).await;
    support::wait_readyz(port, 503, "no server accepts writes").await;
    let stored: i64 = client
        .query_one("SELECT count(*) FROM measurements", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 100, "written to a read-only server?");
    pg.execute_blocking(
        "postgres",
        "ALTER SYSTEM RESET default_transaction_read_only",
    );
    pg.execute_blocking("postgres", "SELECT pg_reload_conf()");
    assert_exactly_once(&client, 10 * messages).await;
    let rejected: i64 = client
        .query_one("SELECT count(*) FROM rejected_readings", &[])
        .await
        .expect("rejections")
        .get(0);
    assert_eq!(rejected, 0, "a reading was stored as a rejection");
    let log = daemon.log_text();
    assert!(
        !log.contains("keeps refusing") && !log.contains("keeps failing"),
        "read-only was taken for the rows' fault:\n{log}"
    );
}
