//! The harness itself: servers start, are isolated, survive restarts as promised, and leave
//! nothing behind. Only `common` is used here, so a failure points at the harness.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

use crate::common::{self, Broker, PASSWORD_USER_PASSWORD, PgServer, Prometheus};

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

async fn scalar_i64(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[tokio::test]
async fn pg_starts_and_a_fresh_database_accepts_a_query() {
    let db = common::fresh_db(common::shared_pg()).await;
    assert!(db.name.starts_with("t_"), "unexpected name {}", db.name);
    assert!(db.url.ends_with(&format!("/{}", db.name)), "url {}", db.url);
    let client = connect(&db.url).await;
    let row = client
        .query_one("SELECT current_database(), 1 + 1", &[])
        .await
        .expect("a trivial query on a fresh database");
    assert_eq!(row.get::<_, String>(0), db.name);
    assert_eq!(row.get::<_, i32>(1), 2);
}

#[tokio::test]
async fn two_fresh_databases_are_distinct() {
    let pg = common::shared_pg();
    let (a, b) = tokio::join!(common::fresh_db(pg), common::fresh_db(pg));
    assert_ne!(a.name, b.name);
    connect(&a.url)
        .await
        .batch_execute("CREATE TABLE only_in_a (x int)")
        .await
        .expect("create a table in database a");
    let n = scalar_i64(
        &connect(&b.url).await,
        "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'",
    )
    .await;
    assert_eq!(
        n, 0,
        "a table created in {} is visible in {}",
        a.name, b.name
    );
}

#[tokio::test]
async fn a_dedicated_pg_keeps_its_data_across_stop_and_start() {
    let mut pg = PgServer::dedicated();
    let port = pg.port();
    let db = common::fresh_db(&pg).await;
    connect(&db.url)
        .await
        .batch_execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        .await
        .expect("write before the stop");

    pg.stop();
    assert!(
        tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .is_err(),
        "a stopped server still accepts connections"
    );
    pg.start();
    assert_eq!(pg.port(), port, "the port changed across a restart");
    assert_eq!(
        scalar_i64(&connect(&db.url).await, "SELECT sum(x) FROM kept").await,
        42
    );

    // An immediate (crash-like) stop keeps committed data too: crash recovery replays WAL.
    connect(&db.url)
        .await
        .batch_execute("INSERT INTO kept VALUES (1)")
        .await
        .expect("write before the crash");
    pg.stop_immediate();
    pg.start();
    assert_eq!(
        scalar_i64(&connect(&db.url).await, "SELECT sum(x) FROM kept").await,
        43
    );

    pg.restart_fast();
    assert_eq!(
        scalar_i64(&connect(&db.url).await, "SELECT sum(x) FROM kept").await,
        43
    );
}

#[tokio::test]
async fn the_password_user_is_refused_a_wrong_password_and_accepted_with_the_right_one() {
    let pg = common::shared_pg();
    let err = tokio_postgres::connect(
        &pg.password_user_url("wrong-password"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("a wrong password is refused");
    let msg = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_else(|| err.to_string());
    assert!(msg.contains("password authentication failed"), "{msg}");
    let client = connect(&pg.password_user_url(PASSWORD_USER_PASSWORD)).await;
    let n = scalar_i64(&client, "SELECT 7::bigint").await;
    assert_eq!(n, 7);
}

#[tokio::test]
async fn dropped_servers_leave_no_process_and_no_directory() {
    let pg = PgServer::dedicated();
    let broker = Broker::start();
    let pg_dir = pg.dir().to_path_buf();
    let broker_dir = broker.dir().to_path_buf();
    let pg_port = pg.port();
    let broker_port = broker.port();
    drop(pg);
    drop(broker);
    assert!(!pg_dir.exists(), "{} left behind", pg_dir.display());
    assert!(!broker_dir.exists(), "{} left behind", broker_dir.display());
    let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    for port in [pg_port, broker_port] {
        assert!(
            std::net::TcpStream::connect_timeout(&addr(port), Duration::from_millis(200)).is_err(),
            "port {port} still accepts connections after drop"
        );
    }
}

#[tokio::test]
async fn prometheus_scrapes_its_job_every_second_and_leaves_nothing_behind() {
    // A target where nothing listens: `up` is 0 for it after the first scrape, which shows the
    // job, the target and the interval were taken from the generated configuration.
    let target = format!("127.0.0.1:{}", common::free_port());
    let prom = Prometheus::start("harness-job", std::slice::from_ref(&target), &[]);
    common::wait_until(
        Duration::from_secs(10),
        "prometheus to record a failed scrape of the target",
        || async {
            let up = prom
                .query(r#"up{job="harness-job"}"#)
                .await
                .unwrap_or_default();
            up.len() == 1
                && up[0]["metric"]["instance"] == target.as_str()
                && up[0]["value"][1] == "0"
        },
    )
    .await;
    let err = prom
        .query("sum(")
        .await
        .expect_err("a query that does not parse");
    assert!(err.starts_with("bad_data"), "{err}");
    let (dir, port) = (prom.dir().to_path_buf(), prom.port());
    drop(prom);
    assert!(!dir.exists(), "{} left behind", dir.display());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
        "port {port} still accepts connections after drop"
    );
}

#[tokio::test]
#[should_panic(expected = "waiting for: the impossible")]
async fn wait_until_names_what_it_waited_for_when_it_times_out() {
    common::wait_until(Duration::from_millis(100), "the impossible", || async {
        false
    })
    .await;
}

// ---- MQTT ----------------------------------------------------------------------------------

/// An MQTT 5 client whose event loop runs in a task and forwards every event; it stops at the
/// first connection error (no reconnect storms in tests).
struct Mqtt {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Mqtt {
    /// Connects; with `session_expiry` the session is persistent (clean start off).
    async fn connect(broker: &Broker, id: &str, session_expiry: Option<u32>) -> (Mqtt, ConnAck) {
        let mut opts = MqttOptions::new(id, "127.0.0.1", broker.port());
        opts.set_keep_alive(Duration::from_secs(5));
        if let Some(secs) = session_expiry {
            opts.set_clean_start(false);
            opts.set_session_expiry_interval(Some(secs));
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        let mut mqtt = Mqtt {
            client,
            events,
            task,
        };
        let ack = mqtt
            .next(&format!("CONNACK for {id}"), |e| match e {
                Event::Incoming(Packet::ConnAck(ack)) => Some(ack),
                _ => None,
            })
            .await;
        (mqtt, ack)
    }

    /// The first event that `pick` accepts, within 10 s.
    async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.events.recv().await {
                    Some(event) => {
                        if let Some(t) = pick(event) {
                            return t;
                        }
                    }
                    None => panic!("connection closed while waiting for {what}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue SUBSCRIBE");
        self.next(&format!("SUBACK for {filter}"), |e| match e {
            Event::Incoming(Packet::SubAck(_)) => Some(()),
            _ => None,
        })
        .await;
    }

    /// QoS 1 publish, returning once the broker's PUBACK arrived.
    async fn publish_acked(&mut self, topic: &str, payload: &[u8]) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .expect("queue PUBLISH");
        self.next(&format!("PUBACK for {topic}"), |e| match e {
            Event::Incoming(Packet::PubAck(_)) => Some(()),
            _ => None,
        })
        .await;
    }

    async fn next_publish(&mut self) -> Publish {
        self.next("an incoming PUBLISH", |e| match e {
            Event::Incoming(Packet::Publish(p)) => Some(p),
            _ => None,
        })
        .await
    }

    /// Sends DISCONNECT and waits until the broker closed the connection.
    async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue DISCONNECT");
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.events.recv().await.is_some() {}
        })
        .await
        .expect("the connection closes after DISCONNECT");
        let _ = (&mut self.task).await;
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn the_broker_accepts_a_connection_and_round_trips_a_qos1_message() {
    let broker = Broker::start();
    assert_eq!(broker.url(), format!("mqtt://127.0.0.1:{}", broker.port()));
    let (mut sub, _) = Mqtt::connect(&broker, "rt-sub", None).await;
    sub.subscribe("rt/#").await;
    let (mut publisher, _) = Mqtt::connect(&broker, "rt-pub", None).await;
    publisher.publish_acked("rt/1", b"hello").await;
    let got = sub.next_publish().await;
    assert_eq!(&got.topic[..], b"rt/1");
    assert_eq!(&got.payload[..], b"hello");
    assert_eq!(got.qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn a_broker_restart_keeps_a_persistent_sessions_queued_message() {
    let mut broker = Broker::start();
    let (mut sub, ack) = Mqtt::connect(&broker, "persistent-sub", Some(3600)).await;
    assert!(
        !ack.session_present,
        "a brand-new broker has no session yet"
    );
    sub.subscribe("kept/#").await;
    sub.disconnect().await;

    // The subscriber is offline: the broker queues for it.
    let (mut publisher, _) = Mqtt::connect(&broker, "persistent-pub", None).await;
    publisher.publish_acked("kept/1", b"survives").await;
    publisher.disconnect().await;

    let port = broker.port();
    broker.restart();
    assert_eq!(broker.port(), port, "the port changed across a restart");

    let (mut sub, ack) = Mqtt::connect(&broker, "persistent-sub", Some(3600)).await;
    assert!(
        ack.session_present,
        "the session did not survive the restart; broker log:\n{}",
        broker.log_tail(30)
    );
    let got = sub.next_publish().await;
    assert_eq!(&got.topic[..], b"kept/1");
    assert_eq!(&got.payload[..], b"survives");
}
