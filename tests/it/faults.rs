//! Faults: the daemon killed, the database gone, the broker restarted or crashed, the network
//! to the broker cut or silently dead, a member of a shared group killed. Every reading the
//! broker accepted ends up in `measurements` exactly once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

use crate::common;
use crate::support::{
    self, Daemon, Publisher, assert_exactly_once, daemon_env, dedicated_with_inventory, set_env,
    wait_count, with_http_port,
};

/// Distinct readings: message `i` carries one reading, value `i`, at a timestamp of its own
/// (a fixed base plus `i` ms, so the same `i` is always the same reading).
fn reading(i: i64) -> String {
    static BASE: OnceLock<DateTime<Utc>> = OnceLock::new();
    let base = *BASE.get_or_init(|| Utc::now() - ChronoDuration::hours(1));
    let ts = base + ChronoDuration::milliseconds(i);
    json!({"ts": ts.to_rfc3339(), "metric": "power", "value": i as f64}).to_string()
}

/// Publishes readings `range` at QoS 1 and waits until the broker has acknowledged every
/// publish of `p` so far (`acked_total`): from then on the broker owns them.
async fn publish_owned(p: &Publisher, topic: &str, range: std::ops::Range<i64>, acked_total: i64) {
    for i in range {
        p.publish(topic, reading(i)).await;
    }
    p.wait_acked(acked_total as usize).await;
}

/// The daemon is healthy again: `/readyz` answers 200 (when `port` is given) and new readings,
/// `published..published + 100`, are stored like the rest (through a new publisher).
async fn assert_ingesting_again(
    port: Option<u16>,
    broker_url: &str,
    topic: &str,
    client: &tokio_postgres::Client,
    published: i64,
) {
    if let Some(port) = port {
        support::wait_readyz(port, 200, "").await;
    }
    let p = Publisher::connect(broker_url).await;
    publish_owned(&p, topic, published..published + 100, 100).await;
    assert_exactly_once(client, published + 100).await;
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
    // The operator reading the log sees the database come back, not only the warnings stop.
    daemon.wait_for_log("batch written after retries", 1).await;
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
    // Readings of the meter created after start-up: at least one.
    wait_count(&client, "SELECT least(count(*), 1) FROM measurements", 1).await;
}

#[tokio::test]
async fn readyz_says_503_while_the_database_is_down_and_200_when_it_is_back() {
    let mut pg = common::PgServer::dedicated();
    let db = common::fresh_db(&pg).await;
    let broker = common::Broker::start();
    let mut env = daemon_env(&db.url, &broker.url());
    let port = with_http_port(&mut env);
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
    support::wait_readyz(port, 200, "").await;
}

#[tokio::test]
async fn sigkill_while_a_batch_is_retried_and_a_restart_before_the_database_is_back_loses_nothing()
{
    let (mut pg, db, ids) = dedicated_with_inventory().await;
    let broker = common::Broker::start();
    let mut env = daemon_env(&db.url, &broker.url());
    let port = with_http_port(&mut env);
    let mut daemon = Daemon::start(&env).await;
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    let p = Publisher::connect(&broker.url()).await;
    publish_owned(&p, &topic, 0..500, 500).await;
    pg.stop();
    publish_owned(&p, &topic, 500..1000, 1000).await;
    // The writer holds a batch it cannot commit and retries: nothing of it is acknowledged.
    daemon.wait_for_log("batch not written; retrying", 1).await;
    daemon.kill9();
    // Same client id, so the same broker session. It waits for the database before it even
    // connects to the broker, which keeps what it holds meanwhile.
    let daemon = Daemon::spawn(&env);
    daemon.wait_for_log("database not reachable yet", 1).await;
    pg.start();
    let client = support::connect(&db.url).await;
    assert_exactly_once(&client, 1000).await;
    assert_ingesting_again(Some(port), &broker.url(), &topic, &client, 1000).await;
}

/// How the broker goes away in [`broker_goes_away_while_acks_are_pending`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerFault {
    /// SIGTERM: mosquitto writes its persistence file on the way out.
    CleanRestart,
    /// SIGKILL right after an autosave that followed the last PUBACK to the publisher.
    CrashAfterAutosave,
}

/// The database is down, so the daemon holds messages it received but cannot commit (their
/// PUBACKs pending) while more wait at the broker; the broker goes away and comes back on the
/// same port and persistence file; then the database comes back. Every reading must be stored
/// once: the broker restores the daemon's session (unacknowledged in-flight messages and the
/// queue), redelivers, and the writer skips what it already stored.
async fn broker_goes_away_while_acks_are_pending(fault: BrokerFault) {
    let (mut pg, db, ids) = dedicated_with_inventory().await;
    // mosquitto writes its database only at a clean stop and every `autosave_interval` seconds
    // (deploy/: 60). A crash loses whatever arrived after the last save, so the crash variant
    // saves every second and crashes only after a save that followed the publishes.
    let mut broker = common::Broker::start_with_config(match fault {
        BrokerFault::CleanRestart => "",
        BrokerFault::CrashAfterAutosave => "autosave_interval 1",
    });
    let mut env = daemon_env(&db.url, &broker.url());
    // A small queue: part of the stream is in flight to the daemon, the rest queued at the
    // broker, and both must survive.
    set_env(&mut env, "ENALYSIS_INGEST__QUEUE_MESSAGES", "100");
    set_env(&mut env, "ENALYSIS_INGEST__BATCH_MAX_ROWS", "50");
    let port = with_http_port(&mut env);
    let daemon = Daemon::start(&env).await;
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    pg.stop();
    let total: i64 = 1000;
    {
        let p = Publisher::connect(&broker.url()).await;
        publish_owned(&p, &topic, 0..total, total).await;
    }
    daemon.wait_for_log("batch not written; retrying", 1).await;
    match fault {
        BrokerFault::CleanRestart => broker.restart(),
        BrokerFault::CrashAfterAutosave => {
            // The first save seen after this moment may have started before it; the second
            // one started after it, so it holds every message acknowledged to the publisher.
            let mut after = SystemTime::now();
            for _ in 0..2 {
                common::wait_until(Duration::from_secs(10), "a broker autosave", || {
                    let saved = broker.saved_at();
                    async move { saved.is_some_and(|t| t > after) }
                })
                .await;
                after = broker.saved_at().expect("saved");
            }
            broker.kill();
            broker.resume();
        }
    }
    daemon.wait_for_log("connected to the MQTT broker", 2).await;
    pg.start();
    let client = support::connect(&db.url).await;
    assert_exactly_once(&client, total).await;
    assert_ingesting_again(Some(port), &broker.url(), &topic, &client, total).await;
}

#[tokio::test]
async fn the_broker_restarted_while_acks_are_pending_loses_nothing_and_stores_nothing_twice() {
    broker_goes_away_while_acks_are_pending(BrokerFault::CleanRestart).await;
}

#[tokio::test]
async fn the_broker_crashing_after_an_autosave_while_acks_are_pending_loses_nothing() {
    broker_goes_away_while_acks_are_pending(BrokerFault::CrashAfterAutosave).await;
}

/// A TCP proxy on 127.0.0.1 between the daemon and the broker. A test can reset its open
/// connections (RST to both ends, like a network failure) or freeze them (open, forwarding
/// nothing more: a silently dead path). Connections made afterwards are relayed normally.
struct Proxy {
    port: u16,
    shared: Arc<ProxyShared>,
    accept: tokio::task::JoinHandle<()>,
}

struct ProxyShared {
    /// What connections accepted from now on answer to; cutting or freezing starts a new one.
    generation: Mutex<Generation>,
    /// Bytes forwarded from the broker to the client, across connections.
    downstream: AtomicU64,
    /// Ends every connection when the proxy is dropped.
    all: CancellationToken,
}

#[derive(Clone)]
struct Generation {
    cut: CancellationToken,
    freeze: CancellationToken,
}

impl Generation {
    fn new(all: &CancellationToken) -> Self {
        Self {
            cut: all.child_token(),
            freeze: CancellationToken::new(),
        }
    }
}

impl Proxy {
    async fn start(upstream_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let all = CancellationToken::new();
        let shared = Arc::new(ProxyShared {
            generation: Mutex::new(Generation::new(&all)),
            downstream: AtomicU64::new(0),
            all,
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let generation = s.generation.lock().expect("lock").clone();
                let s = s.clone();
                tokio::spawn(async move {
                    // Broker down: dropping the client's socket tells it so.
                    if let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)).await {
                        relay(client, upstream, generation, &s.downstream).await;
                    }
                });
            }
        });
        Proxy {
            port,
            shared,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn downstream_bytes(&self) -> u64 {
        self.shared.downstream.load(Ordering::SeqCst)
    }

    fn next_generation(&self) -> Generation {
        let mut g = self.shared.generation.lock().expect("lock");
        std::mem::replace(&mut *g, Generation::new(&self.shared.all))
    }

    /// Resets every open connection, both ends at once.
    fn cut(&self) {
        self.next_generation().cut.cancel();
    }

    /// Open connections stay open but forward nothing more, either way.
    fn freeze(&self) {
        self.next_generation().freeze.cancel();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.all.cancel();
    }
}

/// Relays bytes both ways until either side closes or the connection is cut (then RST).
async fn relay(client: TcpStream, upstream: TcpStream, g: Generation, downstream: &AtomicU64) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    tokio::select! {
        _ = pump(&mut cr, &mut uw, &g.freeze, None) => {}
        _ = pump(&mut ur, &mut cw, &g.freeze, Some(downstream)) => {}
        _ = g.cut.cancelled() => {}
    }
    if g.cut.is_cancelled() {
        // SO_LINGER 0 and close, without a FIN first: the peer sees "connection reset".
        for (r, w) in [(cr, cw), (ur, uw)] {
            if let Ok(stream) = r.reunite(w) {
                let _ = stream.set_zero_linger();
            }
        }
    }
}

async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    freeze: &CancellationToken,
    count: Option<&AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            biased;
            _ = freeze.cancelled() => break,
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        if freeze.is_cancelled() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if let Some(c) = count {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
    if freeze.is_cancelled() {
        // Frozen: hold the connection open, silent, until it is cut or the proxy dropped.
        std::future::pending::<()>().await;
    }
}

/// Publishes rounds of readings straight to the broker while the daemon reads them through
/// `proxy`; once the daemon is receiving a round, `fault` hits its connection. Batches wait a
/// second before they are written, so the fault lands while their PUBACKs are pending.
/// Returns the daemon (for its log) and the number of readings published.
async fn stream_through_a_faulty_link(
    db: &str,
    broker: &common::Broker,
    proxy: &Proxy,
    topic: &str,
    rounds: i64,
    fault: impl Fn(&Proxy),
) -> (Daemon, i64) {
    let mut env = daemon_env(db, &proxy.url());
    set_env(&mut env, "ENALYSIS_INGEST__BATCH_MAX_AGE_MS", "1000");
    let daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&broker.url()).await;
    let per_round: i64 = 500;
    for round in 0..rounds {
        let before = proxy.downstream_bytes();
        let range = round * per_round..(round + 1) * per_round;
        publish_owned(&p, topic, range, (round + 1) * per_round).await;
        // A few dozen messages' worth reached the daemon.
        common::wait_until(
            Duration::from_secs(10),
            "the daemon to receive the round",
            || async move { proxy.downstream_bytes() > before + 5_000 },
        )
        .await;
        fault(proxy);
        daemon
            .wait_for_log("connected to the MQTT broker", round as usize + 2)
            .await;
    }
    (daemon, rounds * per_round)
}

/// Waits until the log shows that the fault hit messages whose PUBACKs were pending: a
/// committed batch either had acks for a connection that had ended (`stale_acks`), or met
/// readings already stored (`duplicates`: the acks went into a dead connection and never
/// reached the broker, which redelivered after the reconnect).
async fn wait_until_the_fault_hit_pending_acks(daemon: &Daemon) {
    common::wait_until(
        Duration::from_secs(20),
        "a committed batch with stale acks or duplicates (the fault hit pending acks)",
        || {
            let hit = daemon.log_text().lines().any(|l| {
                l.contains("batch committed")
                    && !(l.contains("\"stale_acks\":0") && l.contains("\"duplicates\":0"))
            });
            async move { hit }
        },
    )
    .await;
}

/// Streams through a proxy that suffers `fault` `rounds` times while acks are pending, then
/// checks exactly-once, that the fault really hit pending acks, and that ingest goes on.
async fn through_a_faulty_link_nothing_is_lost(rounds: i64, fault: fn(&Proxy)) {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    let ids = support::insert_hierarchy(&client).await;
    let broker = common::Broker::start();
    let proxy = Proxy::start(broker.port()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    let (daemon, total) =
        stream_through_a_faulty_link(&db, &broker, &proxy, &topic, rounds, fault).await;
    assert_exactly_once(&client, total).await;
    wait_until_the_fault_hit_pending_acks(&daemon).await;
    assert_ingesting_again(None, &broker.url(), &topic, &client, total).await;
}

#[tokio::test]
async fn the_connection_to_the_broker_reset_while_acks_are_pending_loses_nothing() {
    through_a_faulty_link_nothing_is_lost(3, Proxy::cut).await;
}

/// Nothing is reset: the daemon notices only when its keep-alive ping goes unanswered with
/// nothing else heard since (within three keep-alive intervals: 15 s at most with the tests'
/// 5 s, the smallest allowed), the broker when the daemon has been silent for 1.5 intervals. Whichever comes first, the new connection
/// takes the session over.
#[tokio::test]
async fn a_connection_to_the_broker_gone_silent_is_replaced_and_loses_nothing() {
    through_a_faulty_link_nothing_is_lost(1, Proxy::freeze).await;
}

/// Two daemons share a group (`$share/ingest/...`), and one is SIGKILLed mid-stream.
///
/// The guarantee, and what it rests on (mosquitto 2.0, persistent sessions): every message
/// is delivered to one member's *session*. What the killed member had in flight stays in its
/// session unacknowledged, and mosquitto keeps giving the offline member its round-robin share
/// of new messages too, queued in that session (the survivor takes only its own share). All of
/// it is delivered, and stored once, when the member comes back with the same client id. If it
/// never comes back, those messages wait until its session expires (`mqtt.session_expiry_secs`)
/// and mosquitto then discards them: run every member with a stable client id under a
/// supervisor that restarts it, and a session expiry longer than any outage.
#[tokio::test]
async fn a_daemon_killed_in_a_shared_group_gets_its_share_when_it_comes_back() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    let ids = support::insert_hierarchy(&client).await;
    let broker = common::Broker::start();
    let mut env_a = daemon_env(&db, &broker.url());
    set_env(&mut env_a, "ENALYSIS_MQTT__SHARED_GROUP", "ingest");
    let mut env_b = env_a.clone();
    set_env(
        &mut env_b,
        "ENALYSIS_MQTT__CLIENT_ID",
        format!("ingest-b-{}", uuid::Uuid::new_v4().simple()),
    );
    // A writes its batches a second late, so the kill finds messages it has not acknowledged.
    set_env(&mut env_a, "ENALYSIS_INGEST__BATCH_MAX_AGE_MS", "1000");
    let mut a = Daemon::start(&env_a).await;
    let b = Daemon::start(&env_b).await;
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    let p = Publisher::connect(&broker.url()).await;
    publish_owned(&p, &topic, 0..1000, 1000).await;
    // The stream is split: both committed some of it.
    a.wait_for_log("batch committed", 1).await;
    b.wait_for_log("batch committed", 1).await;
    publish_owned(&p, &topic, 1000..1500, 1500).await;
    a.kill9();
    publish_owned(&p, &topic, 1500..2500, 2500).await;
    // The survivor takes new messages.
    common::wait_until(
        Duration::from_secs(20),
        "readings published after the kill to be stored by the survivor",
        || {
            let client = &client;
            async move {
                client
                    .query_one("SELECT count(*) FROM measurements WHERE value >= 1500", &[])
                    .await
                    .map(|r| r.get::<_, i64>(0) > 0)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    // But not A's share, which waits in A's session.
    let stored: i64 = client
        .query_one("SELECT count(*) FROM measurements", &[])
        .await
        .expect("count")
        .get(0);
    assert!(stored < 2500, "everything stored without the killed member");
    let a = Daemon::start(&env_a).await;
    assert_exactly_once(&client, 2500).await;
    a.wait_for_log("batch committed", 1).await;
    // Both members still up: new readings are split and stored.
    let _members = (a, b);
    assert_ingesting_again(None, &broker.url(), &topic, &client, 2500).await;
}

/// A correction committed but not acknowledged when the daemon is killed is redelivered; the
/// restarted daemon finds it stored and leaves it alone: one revision per corrected key, never
/// two. The acknowledgements are held back by freezing the daemon's link to the broker after the
/// corrections reached it (batches wait a second, so they commit after the freeze).
#[tokio::test]
async fn a_correction_redelivered_after_kill_9_leaves_exactly_one_revision() {
    let db = support::migrated_db().await;
    let client = support::connect(&db).await;
    let ids = support::insert_hierarchy(&client).await;
    let broker = common::Broker::start();
    let link = Proxy::start(broker.port()).await;
    let proxy = &link;
    let mut env = daemon_env(&db, &proxy.url());
    set_env(&mut env, "ENALYSIS_INGEST__BATCH_MAX_AGE_MS", "1000");
    let mut daemon = Daemon::start(&env).await;
    let p = Publisher::connect(&broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
    let base = Utc::now() - ChronoDuration::hours(1);
    let n: i64 = 50;
    let energy = |i: i64, value: f64, quality: &str| {
        let ts = base + ChronoDuration::seconds(i);
        json!({"ts": ts.to_rfc3339(), "metric": "energy", "value": value, "quality": quality})
            .to_string()
    };
    for i in 0..n {
        p.publish(&topic, energy(i, 100.0 + i as f64, "estimated"))
            .await;
    }
    wait_count(&client, "SELECT count(*) FROM measurements", n).await;
    let before = proxy.downstream_bytes();
    for i in 0..n {
        p.publish(&topic, energy(i, 104.0 + i as f64, "good")).await;
    }
    common::wait_until(
        Duration::from_secs(10),
        "the corrections to reach the daemon",
        || async move { proxy.downstream_bytes() > before + 50 * 100 },
    )
    .await;
    proxy.freeze();
    let good = "SELECT count(*) FROM measurements WHERE quality = 'good'";
    common::wait_until(
        Duration::from_secs(10),
        "corrections committed behind the frozen link",
        || {
            let client = &client;
            async move {
                client
                    .query_one(good, &[])
                    .await
                    .is_ok_and(|r| r.get::<_, i64>(0) > 0)
            }
        },
    )
    .await;
    daemon.kill9();
    let daemon = Daemon::start(&env).await;
    wait_count(&client, good, n).await;
    // The redelivered corrections met themselves: duplicates, no new revision.
    common::wait_until(
        Duration::from_secs(20),
        "a committed batch of redelivered corrections (duplicates)",
        || {
            let hit = daemon
                .log_text()
                .lines()
                .any(|l| l.contains("batch committed") && !l.contains("\"duplicates\":0"));
            async move { hit }
        },
    )
    .await;
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT ts), count(*) FILTER (WHERE quality = 'estimated')
             FROM measurement_revisions",
            &[],
        )
        .await
        .expect("revisions");
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (n, n, n)
    );
}
