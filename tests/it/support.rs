//! Helpers shared by the integration tests: databases in a given state, the binary as a
//! subprocess, a small inventory.

use std::process::{Command, Stdio};

use uuid::Uuid;

use crate::common;

/// A fresh, empty database on the shared cluster.
pub async fn empty_db() -> String {
    common::fresh_db(common::shared_pg()).await.url.clone()
}

/// A fresh database with every migration applied.
pub async fn migrated_db() -> String {
    let url = empty_db().await;
    let mut client = connect(&url).await;
    enalysis_ingest::migrate::run(&mut client)
        .await
        .expect("migrations apply");
    url
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// What most pipeline tests start from: a migrated database with the inventory of
/// [`insert_hierarchy`], a client on it, and a broker.
pub struct Setup {
    pub db: String,
    pub client: tokio_postgres::Client,
    pub ids: Ids,
    pub broker: common::Broker,
}

pub async fn setup() -> Setup {
    let db = migrated_db().await;
    let client = connect(&db).await;
    let ids = insert_hierarchy(&client).await;
    let broker = common::Broker::start();
    Setup {
        db,
        client,
        ids,
        broker,
    }
}

/// Ids of the inventory made by [`insert_hierarchy`].
#[derive(Debug, Clone)]
pub struct Ids {
    pub portfolio: Uuid,
    pub site: Uuid,
    pub meter: Uuid,
    pub stor_meter: Uuid,
    pub asset: Uuid,
    pub source: Uuid,
    pub battery: Uuid,
}

/// One portfolio, one site, a CONS meter (external id `cons-1`) with an asset (`asset-1`) and a
/// solar source (`pv-1`), a STOR meter (`stor-1`) with a battery (`bat-1`), plus a connection, a
/// grid link and a recommendation. Names are unique per call so tests can share a database.
pub async fn insert_hierarchy(client: &tokio_postgres::Client) -> Ids {
    let tag = Uuid::new_v4().simple().to_string();
    let row = client
        .query_one(
            "WITH p AS (INSERT INTO portfolios (name) VALUES ('P ' || $1) RETURNING id),
                  s AS (INSERT INTO sites (portfolio_id, name, industry_type)
                        SELECT id, 'Site ' || $1, 'datacenter' FROM p RETURNING id),
                  m AS (INSERT INTO meters (site_id, name, external_id, category)
                        SELECT id, 'Main', 'cons-' || $1, 'CONS' FROM s RETURNING id),
                  ms AS (INSERT INTO meters (site_id, name, external_id, category)
                        SELECT id, 'Battery meter', 'stor-' || $1, 'STOR' FROM s RETURNING id),
                  a AS (INSERT INTO assets (meter_id, name, external_id)
                        SELECT id, 'Chiller', 'asset-' || $1 FROM m RETURNING id),
                  a2 AS (INSERT INTO assets (meter_id, name)
                        SELECT id, 'Pump' FROM m RETURNING id),
                  e AS (INSERT INTO energy_sources (meter_id, name, external_id, kind)
                        SELECT id, 'PV', 'pv-' || $1, 'solar' FROM m RETURNING id),
                  b AS (INSERT INTO energy_sources (meter_id, name, external_id, kind)
                        SELECT id, 'Battery', 'bat-' || $1, 'battery' FROM ms RETURNING id),
                  c AS (INSERT INTO asset_connections (source_asset_id, target_asset_id, relationship)
                        SELECT a.id, a2.id, 'energy_flow' FROM a, a2 RETURNING id),
                  g AS (INSERT INTO grid_links (site_id, name, direction)
                        SELECT id, 'Grid', 'bi' FROM s RETURNING id),
                  r AS (INSERT INTO recommendations (site_id, title, category)
                        SELECT id, 'Shift load', 'efficiency' FROM s RETURNING id)
             SELECT p.id, s.id, m.id, ms.id, a.id, e.id, b.id
             FROM p, s, m, ms, a, e, b, c, g, r",
            &[&tag],
        )
        .await
        .expect("insert hierarchy");
    Ids {
        portfolio: row.get(0),
        site: row.get(1),
        meter: row.get(2),
        stor_meter: row.get(3),
        asset: row.get(4),
        source: row.get(5),
        battery: row.get(6),
    }
}

/// The binary under test, run as a subprocess with a clean environment (no ENALYSIS_* or
/// DATABASE_URL from the developer's shell) and in a temp dir (no config/default.toml).
pub struct Cmd {
    cmd: Command,
}

#[derive(Debug)]
pub struct Output {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn assert_ok(&self) {
        assert_eq!(self.status, Some(0), "expected success: {self:?}");
    }

    /// Exit 1 and exactly one line on stderr, containing `needle`.
    pub fn assert_failed_with(&self, needle: &str) {
        assert_eq!(self.status, Some(1), "expected exit 1: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {self:?}");
        assert!(lines[0].starts_with("error: "), "{self:?}");
        assert!(lines[0].contains(needle), "expected {needle:?}: {self:?}");
    }
}

pub struct Running {
    child: std::process::Child,
}

impl Running {
    pub fn wait(self) -> Output {
        let out = self.child.wait_with_output().expect("wait for the binary");
        Output {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Cmd {
    pub fn new(args: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_enalysis-ingest"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null());
        Self { cmd }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.cmd.env(key, value);
        self
    }

    pub fn spawn(mut self) -> Running {
        let child = self
            .cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the binary");
        Running { child }
    }

    pub fn run(self) -> Output {
        self.spawn().wait()
    }
}

/// The daemon as a subprocess (so tests can SIGKILL and SIGTERM it), logging JSON to a file.
pub struct Daemon {
    child: Option<std::process::Child>,
    pub log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Settings every daemon under test gets: fast batches, quick retries, a unique client id.
pub fn daemon_env(db: &str, mqtt: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db.to_string()),
        ("MQTT_URL", mqtt.to_string()),
        ("ENALYSIS_HTTP_ADDR", "127.0.0.1:0".to_string()),
        (
            "ENALYSIS_MQTT__CLIENT_ID",
            format!("ingest-{}", Uuid::new_v4().simple()),
        ),
        ("ENALYSIS_INGEST__BATCH_MAX_AGE_MS", "20".to_string()),
        ("ENALYSIS_INGEST__RETRY_MAX_MS", "500".to_string()),
        ("ENALYSIS_MQTT__RECONNECT_MAX_MS", "500".to_string()),
        ("ENALYSIS_MQTT__KEEP_ALIVE_SECS", "5".to_string()),
        ("ENALYSIS_INGEST__SHUTDOWN_TIMEOUT_SECS", "20".to_string()),
        ("RUST_LOG", "info,enalysis_ingest=debug".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Sets `key` in a daemon environment, replacing what [`daemon_env`] (or an earlier call) put
/// there.
pub fn set_env(env: &mut Vec<(String, String)>, key: &str, value: impl Into<String>) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.into()));
}

/// Gives the daemon a known HTTP port on loopback (for `/metrics`, `/readyz`, the API).
pub fn with_http_port(env: &mut Vec<(String, String)>) -> u16 {
    let port = common::free_port();
    set_env(env, "ENALYSIS_HTTP_ADDR", format!("127.0.0.1:{port}"));
    port
}

impl Daemon {
    /// Starts `enalysis-ingest run` and waits until it has subscribed.
    pub async fn start(env: &[(String, String)]) -> Daemon {
        let d = Self::spawn(env);
        d.wait_for_log("subscribed", 1).await;
        d
    }

    pub fn spawn(env: &[(String, String)]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("daemon.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_enalysis-ingest"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log file"))
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the daemon");
        Daemon {
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `needle` appears in at least `count` log lines.
    pub async fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let text = self.log_text();
            if text.lines().filter(|l| l.contains(needle)).count() >= count {
                return;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {needle:?} {count} time(s) in the daemon log:\n{text}"
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit (up to `secs`), returning its exit code.
    pub async fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "daemon did not exit within {secs}s; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A test publisher: MQTT 5, QoS 1, counting the broker's PUBACKs.
pub struct Publisher {
    pub client: rumqttc::v5::AsyncClient,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(mqtt_url: &str) -> Publisher {
        let url = url::Url::parse(mqtt_url).expect("mqtt url");
        let mut opts = rumqttc::v5::MqttOptions::new(
            format!("pub-{}", Uuid::new_v4().simple()),
            url.host_str().expect("host"),
            url.port().expect("port"),
        );
        opts.set_keep_alive(std::time::Duration::from_secs(5));
        opts.set_max_packet_size(Some(16 * 1024 * 1024));
        if !url.username().is_empty() {
            opts.set_credentials(url.username(), url.password().unwrap_or(""));
        }
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10_000);
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = acked.clone();
        let task = tokio::spawn(async move {
            use rumqttc::v5::Event;
            use rumqttc::v5::mqttbytes::v5::Packet;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
            }
        });
        Publisher {
            client,
            acked,
            task,
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(
                topic,
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                payload.into(),
            )
            .await
            .expect("queue publish");
    }

    /// Waits until the broker has acknowledged `n` publishes in all.
    pub async fn wait_acked(&self, n: usize) {
        let acked = self.acked.clone();
        common::wait_until(
            std::time::Duration::from_secs(30),
            &format!("broker to ack {n} publishes"),
            || {
                let acked = acked.clone();
                async move { acked.load(std::sync::atomic::Ordering::SeqCst) >= n }
            },
        )
        .await;
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `sql` (a single bigint) until it equals `expected`.
pub async fn wait_count(client: &tokio_postgres::Client, sql: &str, expected: i64) {
    let what = format!("{sql} = {expected}");
    let mut last = -1;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(row) = client.query_one(sql, &[]).await {
            last = row.get::<_, i64>(0);
            if last == expected {
                return;
            }
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}; last value {last}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.0 GET against the daemon's listener; the whole response, headers included.
/// Waits until exactly `total` readings are stored and checks they are the published ones:
/// reading `i` carries value `i`, so `total` distinct values from 0 to `total - 1` mean nothing
/// lost and nothing else stored (the primary key already rules out a reading stored twice).
pub async fn assert_exactly_once(client: &tokio_postgres::Client, total: i64) {
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
pub async fn dedicated_with_inventory() -> (common::PgServer, common::TestDb, Ids) {
    let pg = common::PgServer::dedicated();
    let db = common::fresh_db(&pg).await;
    let mut client = connect(&db.url).await;
    enalysis_ingest::migrate::run(&mut client)
        .await
        .expect("migrate");
    let ids = insert_hierarchy(&client).await;
    (pg, db, ids)
}

/// Waits (at most 20 s) until `/readyz` answers `status` with `text` in the response.
pub async fn wait_readyz(port: u16, status: u16, text: &str) {
    let head = format!("HTTP/1.0 {status}");
    common::wait_until(
        std::time::Duration::from_secs(20),
        &format!("/readyz to answer {status} with {text:?}"),
        || {
            let head = &head;
            async move {
                let r = http_get(port, "/readyz").await;
                r.starts_with(head.as_str()) && r.contains(text)
            }
        },
    )
    .await;
}

pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the HTTP listener");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("response");
    body
}

/// One HTTP/1.0 request with an optional bearer token and JSON body; (status, body).
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the HTTP listener");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: x\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    stream.write_all(req.as_bytes()).await.expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A daemon on a known HTTP port that has judged a little traffic of every kind the dashboard
/// and `top` show: [`Traffic::ACCEPTED`] readings stored (two per message) and one message
/// rejected for each of [`Traffic::REJECTED`].
pub struct Traffic {
    // Held for their Drop: the daemon is killed and the broker stopped with the `Traffic`.
    _daemon: Daemon,
    _broker: common::Broker,
}

impl Traffic {
    pub const ACCEPTED: i64 = 6;
    pub const REJECTED: [&'static str; 2] = ["malformed_payload", "unknown_metric"];

    /// Starts a broker and a daemon listening on `http_port` (see [`common::free_port`]),
    /// publishes, and returns once every reading is stored.
    pub async fn start(http_port: u16) -> Traffic {
        let db = migrated_db().await;
        let client = connect(&db).await;
        let ids = insert_hierarchy(&client).await;
        let broker = common::Broker::start();
        let mut env = daemon_env(&db, &broker.url());
        set_env(
            &mut env,
            "ENALYSIS_HTTP_ADDR",
            format!("127.0.0.1:{http_port}"),
        );
        let daemon = Daemon::start(&env).await;
        let p = Publisher::connect(&broker.url()).await;
        let topic = format!("enalysis/v1/meters/{}/readings", ids.meter);
        let base = chrono::Utc::now() - chrono::Duration::minutes(1);
        let reading = |i: i64| {
            let ts = (base + chrono::Duration::milliseconds(i)).to_rfc3339();
            serde_json::json!({"ts": ts, "metric": "power", "value": i as f64})
        };
        for i in (0..Self::ACCEPTED).step_by(2) {
            let two = serde_json::json!([reading(i), reading(i + 1)]);
            p.publish(&topic, two.to_string()).await;
        }
        p.publish(&topic, b"{not json".to_vec()).await;
        let unknown = serde_json::json!({"ts": base.to_rfc3339(), "metric": "vibes", "value": 1.0});
        p.publish(&topic, unknown.to_string()).await;
        wait_count(&client, "SELECT count(*) FROM measurements", Self::ACCEPTED).await;
        wait_count(
            &client,
            "SELECT count(*) FROM rejected_readings",
            Self::REJECTED.len() as i64,
        )
        .await;
        Traffic {
            _daemon: daemon,
            _broker: broker,
        }
    }
}
