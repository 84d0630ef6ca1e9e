//! The end-to-end benchmark (`scripts/bench`, or `cargo bench --bench e2e`): the daemon against
//! this machine's ceilings and against two peers, all measured in one run on the same stream.
//!
//! One durable PostgreSQL (`fsync=on`, `synchronous_commit=on`) and one mosquitto configured like
//! `deploy/mosquitto/` start on loopback; an inventory of [`METERS`] meters is provisioned. Each
//! repetition then runs every case once, side by side, on an empty `measurements` table after a
//! `CHECKPOINT`:
//!
//! - `db ceiling`: binary `COPY` of the rows the simulator produces (round-robin over the meters,
//!   power readings, successive timestamps), in transactions of the daemon's batch size, one
//!   connection; no MQTT;
//! - `broker ceiling`: the simulator → mosquitto → a QoS 1 subscriber that only counts;
//! - `enalysis-ingest`: the simulator → mosquitto → the daemon (release build, default settings)
//!   → PostgreSQL, until every reading is committed; then the table is checked to hold exactly the
//!   published readings and no rejection;
//! - the peers (`bench/peers/`, installed by `bench/peers/setup`): the same stream into the same
//!   table, for at most `BENCH_PEER_WINDOW_SECS`;
//! - latency: the daemon at half its sustained rate, p50/p99 of receipt → commit from its
//!   histogram;
//! - corrections (issue #13): the 10/msg daemon case with 10% of the messages sent first as an
//!   estimate and again, up to 10,000 messages later, with the real values (`simulate
//!   --corrections 0.1`): every batch meets stored keys, so the conflict path runs throughout.
//!   Checked: stored + revisions = readings sent, revisions = `ingest_readings_corrected_total`.
//! - hostile flood (issue #11): for `BENCH_FLOOD_SECS`, the message that once wedged ingestion
//!   (a ~250 KiB JSON array of 3,240 readings of −3.5 kW for a CONS meter, every one a
//!   `category_violation`), `BENCH_FLOOD_RATE` of them a second, each one different, beside the
//!   simulator's valid readings at half the sustained rate; the daemon runs with
//!   `ingest.max_buffered_bytes` = `BENCH_FLOOD_BUDGET_MIB`. Reported: the valid readings
//!   committed per second during the flood, and the daemon's peak RSS beside its budget and its
//!   bound (2 × budget + its RSS before the flood); then every valid reading and every
//!   rejection is checked in the tables.
//! - catch-up (issue #18): the daemon subscribed and idle (on a mosquitto of its own, so that
//!   the broker's peak RSS is this case's), PostgreSQL stopped (fast shutdown), a backlog of
//!   `BENCH_CATCHUP_READINGS` published flat out at 10/msg, QoS 1, until the broker acknowledged
//!   all of it (the daemon must stay connected meanwhile: its reads pause when its queue or
//!   budget is full); then PostgreSQL started and, as soon as it accepts connections, a live
//!   publisher at half the run's sustained 10/msg rate. The simulator reads the inventory from
//!   PostgreSQL before it publishes, so the backlog's one starts with PostgreSQL up and
//!   publishes through a relay that opens only once PostgreSQL is down (the daemon and the live
//!   publisher connect to the broker directly). *Caught up* is the first
//!   poll (every 20 ms) at which the readings committed since PostgreSQL's start cover the
//!   backlog and every live reading published up to 250 ms before the poll (the live
//!   publisher's count comes from its schedule: `simulate` sends what is due every 10 ms; the
//!   250 ms are what a daemon that keeps up still holds: a batch filling, up to
//!   `ingest.batch_max_age_ms`, and its commit). The live publisher runs for a fixed count, so
//!   the case ends exactly: every backlog and live reading stored once, none rejected.
//!   Reported: drain readings/s (committed between PostgreSQL's start and catch-up ÷ that time;
//!   also from the first commit, since the writer's retry backoff, up to `ingest.retry_max_ms`
//!   = 5 s, delays it), time to the first commit and to catch-up, the daemon's MQTT reconnects
//!   and database errors, peak RSS of daemon and broker, and the drain against the same run's
//!   COPY ceiling and sustained 10/msg rate.
//!
//! A throughput is readings stored ÷ time from the simulator's start to the last commit: the
//! publisher runs flat out and mosquitto queues what a consumer cannot take yet, so this is the
//! consumer's sustained rate (bounded by the publisher's and the broker's). CPU is read from
//! /proc for each process tree over the same interval, which says who was the bottleneck.
//!
//! Settings (environment): `BENCH_REPEATS` (3), `BENCH_READINGS` (2000000 per case: at 300,000
//! a 10/msg case lasted ~1 s, of which the first and last batch's age wait took ~0.2 s),
//! `BENCH_PG_SETTINGS` (`name=value,…` beyond the bench's PostgreSQL settings; e.g.
//! `commit_delay=5000,commit_siblings=0`, 5-ms commits), `BENCH_PEER_WINDOW_SECS` (12), `BENCH_DIR` (`.bench`, where the peers are installed),
//! `BENCH_CASES` (comma-separated case names to run; default all), `BENCH_FLOOD_SECS` (20),
//! `BENCH_FLOOD_RATE` (20 flood messages/s), `BENCH_FLOOD_BUDGET_MIB` (64, the shipped
//! default), `BENCH_FLOOD_VALID_RATE` (valid readings/s beside the flood; default half the
//! sustained 1/msg rate of the run, 20,000 when the daemon case is not run),
//! `BENCH_CATCHUP_READINGS` (2,000,000, a multiple of 10), `BENCH_CATCHUP_LIVE_RATE` (live
//! readings/s; default half the sustained 10/msg rate of the run, 100,000 when the daemon case
//! is not run), `BENCH_CATCHUP_LIVE_SECS` (how long the live publisher runs; default 10 s +
//! 3 × backlog ÷ live rate: long enough to catch up if the drain is ≥ 4/3 × the live rate),
//! `BENCH_CATCHUP_DOWN_SECS` (0: PostgreSQL stays down at least this long, e.g. 40 for an outage
//! past the 30-s MQTT keep-alive and the writer's longest backoff).

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use chrono::{DateTime, Utc};
use enalysis_ingest::model::{EntityKind, Quality};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use common::{Broker, PgServer};

/// Meters in the benchmark's inventory: the simulator spreads readings round-robin over them.
const METERS: usize = 1000;
/// The daemon's default `ingest.batch_max_rows`, used for the database ceiling's transactions.
const BATCH_ROWS: usize = 5000;
const TOPIC_FILTER: &str = "enalysis/v1/+/+/readings";
const BIN: &str = env!("CARGO_BIN_EXE_enalysis-ingest");

struct Settings {
    repeats: usize,
    readings: u64,
    peer_window: Duration,
    bench_dir: PathBuf,
    cases: Option<Vec<String>>,
    /// `BENCH_PG_SETTINGS`: PostgreSQL settings beyond the bench's own, `name=value` each.
    pg_settings: Vec<(String, String)>,
    flood: Flood,
    catchup: Catchup,
}

/// The catch-up case's settings.
#[derive(Debug, Clone, Copy)]
struct Catchup {
    /// Readings published while PostgreSQL is down, 10 to a message.
    readings: u64,
    /// Live readings/s once PostgreSQL is back; `None`: half the sustained 10/msg rate.
    live_rate: Option<u64>,
    /// How long the live publisher runs; `None`: 10 s + 3 × backlog ÷ live rate.
    live_secs: Option<u64>,
    /// PostgreSQL stays down at least this long (the backlog published, it waits).
    min_down: Duration,
}

/// The hostile flood's settings.
#[derive(Debug, Clone, Copy)]
struct Flood {
    secs: u64,
    /// Flood messages per second.
    rate: u64,
    budget_bytes: u64,
    /// Valid readings per second beside the flood; `None`: half the sustained 1/msg rate.
    valid_rate: Option<u64>,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        fn num(name: &str, default: u64) -> Result<u64> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a number")),
                Err(_) => Ok(default),
            }
        }
        let readings = num("BENCH_READINGS", 2_000_000)?;
        ensure!(
            readings >= 10_000 && readings % 10 == 0,
            "BENCH_READINGS must be a multiple of 10, at least 10000"
        );
        let catchup_readings = num("BENCH_CATCHUP_READINGS", 2_000_000)?;
        ensure!(
            catchup_readings >= 10_000 && catchup_readings % 10 == 0,
            "BENCH_CATCHUP_READINGS must be a multiple of 10, at least 10000"
        );
        Ok(Settings {
            repeats: num("BENCH_REPEATS", 3)?.max(1) as usize,
            readings,
            peer_window: Duration::from_secs(num("BENCH_PEER_WINDOW_SECS", 12)?),
            bench_dir: std::env::var_os("BENCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".bench")),
            cases: std::env::var("BENCH_CASES")
                .ok()
                .map(|s| s.split(',').map(|c| c.trim().to_string()).collect()),
            pg_settings: std::env::var("BENCH_PG_SETTINGS")
                .unwrap_or_default()
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| match s.split_once('=') {
                    Some((name, value)) => Ok((name.trim().to_string(), value.trim().to_string())),
                    None => Err(anyhow::anyhow!(
                        "BENCH_PG_SETTINGS: {s:?} is not name=value"
                    )),
                })
                .collect::<Result<_>>()?,
            flood: Flood {
                secs: num("BENCH_FLOOD_SECS", 20)?.max(1),
                rate: num("BENCH_FLOOD_RATE", 20)?.max(1),
                budget_bytes: num("BENCH_FLOOD_BUDGET_MIB", 64)?.max(1) << 20,
                valid_rate: std::env::var("BENCH_FLOOD_VALID_RATE")
                    .ok()
                    .map(|v| v.parse())
                    .transpose()
                    .context("BENCH_FLOOD_VALID_RATE is not a number")?,
            },
            catchup: Catchup {
                readings: catchup_readings,
                live_rate: std::env::var("BENCH_CATCHUP_LIVE_RATE")
                    .ok()
                    .map(|v| v.parse())
                    .transpose()
                    .context("BENCH_CATCHUP_LIVE_RATE is not a number")?,
                live_secs: std::env::var("BENCH_CATCHUP_LIVE_SECS")
                    .ok()
                    .map(|v| v.parse())
                    .transpose()
                    .context("BENCH_CATCHUP_LIVE_SECS is not a number")?,
                min_down: Duration::from_secs(num("BENCH_CATCHUP_DOWN_SECS", 0)?),
            },
        })
    }

    fn wants(&self, case: &str) -> bool {
        self.cases
            .as_ref()
            .is_none_or(|cs| cs.iter().any(|c| case.starts_with(c.as_str())))
    }
}

/// One measurement of one case.
#[derive(Debug, Clone, Default)]
struct Sample {
    readings_per_s: f64,
    /// CPU seconds of the consumer's process tree per reading, in µs.
    cpu_us_per_reading: Option<f64>,
    peak_rss_mib: Option<f64>,
    /// Cores busy per process group during the measurement.
    cores: BTreeMap<&'static str, f64>,
    /// Whether every published reading was stored (peers may run out of window).
    complete: bool,
    note: String,
    /// Shown after the cores whatever `complete` says (the hostile flood's figures).
    remark: String,
}

#[derive(Debug, Default)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    rate: f64,
    batches: u64,
}

fn main() -> Result<()> {
    // `cargo bench` runs this with `--bench`; `cargo test --all-targets` runs it without (and
    // with `--list` to probe): then it only says how to run it, it does not start a 5-minute run.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!(
            "the end-to-end benchmark: run it with scripts/bench (or cargo bench --bench e2e)"
        );
        return Ok(());
    }
    let settings = Settings::from_env()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(settings))
}

struct Env {
    pg: PgServer,
    broker: Broker,
    db_url: String,
    client: tokio_postgres::Client,
    meters: Vec<Uuid>,
}

async fn run(s: Settings) -> Result<()> {
    let started = Instant::now();
    eprintln!("starting PostgreSQL (fsync=on, synchronous_commit=on) and mosquitto …");
    let mut settings = vec![
        ("fsync", "on"),
        ("synchronous_commit", "on"),
        ("full_page_writes", "on"),
        // The daemon's partitions and the bench's checkpoints, not the server's timer, decide
        // when WAL is flushed to the heap: each case starts from a checkpoint.
        ("max_wal_size", "4GB"),
        ("checkpoint_timeout", "30min"),
    ];
    // E.g. `commit_delay=5000,commit_siblings=0`: each commit waits 5 ms before its WAL flush,
    // the latency of network-attached storage.
    settings.extend(s.pg_settings.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let pg = PgServer::dedicated_with(&settings);
    let broker = Broker::start();
    let db_url = pg.url("postgres");
    cli(&db_url, &broker.url(), &["migrate"])?;
    cli(&db_url, &broker.url(), &["seed"])?;
    let inventory = inventory_yaml();
    let inv_path = pg.dir().join("bench-inventory.yaml");
    std::fs::write(&inv_path, inventory)?;
    cli(
        &db_url,
        &broker.url(),
        &["provision", inv_path.to_str().context("utf-8 path")?],
    )?;
    let client = connect(&db_url).await?;
    let meters: Vec<Uuid> = client
        .query("SELECT id FROM meters WHERE active ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(meters.len() == METERS, "expected {METERS} meters");
    let mut env = Env {
        pg,
        broker,
        db_url,
        client,
        meters,
    };
    let peers = Peer::all(&s.bench_dir);
    for p in &peers {
        if let Err(e) = &p.available {
            eprintln!("peer {}: not run: {e}", p.name);
        }
    }

    let mut results: BTreeMap<&'static str, Vec<Sample>> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut catchups = Vec::new();
    let n = s.readings;
    for rep in 1..=s.repeats {
        eprintln!("— run {rep}/{} —", s.repeats);
        let mut record = |case: &'static str, r: Result<Sample>| match r {
            Ok(sample) => {
                eprintln!(
                    "  {case:<26} {:>10.0} readings/s  {}",
                    sample.readings_per_s,
                    fmt_cores(&sample.cores)
                );
                results.entry(case).or_default().push(sample);
            }
            Err(e) => eprintln!("  {case:<26} failed: {e:#}"),
        };
        let mut db = None;
        if s.wants("db") {
            let r = db_ceiling(&env, n).await;
            db = r.as_ref().ok().map(|s| s.readings_per_s);
            record("db ceiling (COPY)", r);
        }
        if s.wants("broker") {
            record("broker ceiling, 1/msg", broker_ceiling(&env, n, 1).await);
            record("broker ceiling, 10/msg", broker_ceiling(&env, n, 10).await);
        }
        let (mut sustained, mut sustained10) = (None, None);
        if s.wants("daemon") {
            let r = daemon_run(&env, n, 1, None).await.map(|(s, _)| s);
            sustained = r.as_ref().ok().map(|s| s.readings_per_s);
            record("enalysis-ingest, 1/msg", r);
            let r = daemon_run(&env, n, 10, None).await.map(|(s, _)| s);
            sustained10 = r.as_ref().ok().map(|s| s.readings_per_s);
            record("enalysis-ingest, 10/msg", r);
        }
        if s.wants("corrections") {
            record(
                CORRECTIONS_CASE,
                daemon_run_with(&env, n, 10, None, 0.1)
                    .await
                    .map(|(s, _)| s),
            );
        }
        for p in &peers {
            if p.available.is_ok() && s.wants(p.name) {
                for (case, per_message) in p.cases.into_iter().zip([1, 10]) {
                    record(case, peer_run(&env, p, n, per_message, s.peer_window).await);
                }
            }
        }
        if let (Some(rate), true) = (sustained, s.wants("latency")) {
            // Half the sustained rate, for about 8 seconds.
            let half = (rate / 2.0).max(100.0);
            let count = ((half * 8.0) as u64).max(1000);
            match daemon_run(&env, count, 1, Some(half)).await {
                Ok((_, Some(l))) => {
                    eprintln!(
                        "  latency at {:.0} readings/s: p50 {:.0} ms, p99 {:.0} ms ({} batches)",
                        l.rate, l.p50_ms, l.p99_ms, l.batches
                    );
                    latencies.push(l);
                }
                Ok(_) => eprintln!("  latency: no histogram"),
                Err(e) => eprintln!("  latency failed: {e:#}"),
            }
        }
        if s.wants("hostile") {
            let valid_rate = s
                .flood
                .valid_rate
                .or(sustained.map(|r| (r / 2.0) as u64))
                .unwrap_or(20_000)
                .max(100);
            let r = hostile_flood(&env, s.flood, valid_rate).await;
            if let Ok(sample) = &r {
                eprintln!("  {}", sample.remark);
            }
            record(HOSTILE_CASE, r);
        }
        if s.wants("catch-up") {
            let live_rate = s
                .catchup
                .live_rate
                .or(sustained10.map(|r| (r / 2.0) as u64))
                .unwrap_or(100_000)
                .max(1000);
            let r = catch_up(&mut env, s.catchup, live_rate, db, sustained10).await;
            let r = r.map(|(sample, line)| {
                eprintln!("  {line}");
                catchups.push((rep, line));
                sample
            });
            record(CATCHUP_CASE, r);
        }
    }
    report(&s, &env, &results, &latencies, &catchups, started.elapsed()).await;
    Ok(())
}

/// Runs one CLI command of the daemon's binary against the bench's servers.
fn cli(db: &str, mqtt: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db)
        .env("MQTT_URL", mqtt)
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("running {BIN} {args:?}"))?;
    ensure!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn inventory_yaml() -> String {
    let mut y = String::from("portfolios:\n  - name: Bench\n    sites:\n");
    let categories = ["CONS", "PROD", "INJ", "STOR"];
    for site in 0..10 {
        y.push_str(&format!(
            "      - name: Site {site}\n        industry_type: datacenter\n        meters:\n"
        ));
        for m in 0..METERS / 10 {
            let i = site * (METERS / 10) + m;
            y.push_str(&format!(
                "          - external_id: bench-meter-{i}\n            name: Meter {i}\n            category: {}\n",
                categories[i % categories.len()]
            ));
        }
    }
    y
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Empty table, clean WAL: every case starts from the same state.
async fn reset(env: &Env) -> Result<()> {
    env.client
        // rejected_readings is a view over these two since migration 0004.
        .batch_execute(
            "TRUNCATE measurements, measurement_revisions, rejected_reading_runs, rejected_messages;
             CHECKPOINT",
        )
        .await?;
    Ok(())
}

async fn stored(env: &Env) -> Result<(i64, i64)> {
    let row = env
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM measurements), (SELECT count(*) FROM rejected_readings)",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc

/// The process groups whose CPU is reported: each pid with every process below it.
struct Watch {
    groups: Vec<(&'static str, u32)>,
    ticks: Vec<u64>,
    at: Instant,
}

/// The bench's own CPU (its threads, not the servers and clients it started).
fn self_ticks() -> u64 {
    proc_ticks(std::process::id())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of one process (its exited children are not included).
fn proc_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the `(comm)`, which may contain spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and every process below it.
fn tree(pid: u32) -> Vec<u32> {
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(all.iter().copied().filter(|&c| parent_of(c) == Some(p)));
        i += 1;
    }
    out
}

fn tree_ticks(pid: u32) -> u64 {
    tree(pid).into_iter().map(proc_ticks).sum()
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn pid_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

impl Watch {
    fn start(env: &Env, extra: &[(&'static str, u32)]) -> Watch {
        let mut groups = Vec::new();
        if let Some(pid) = pid_file(&env.pg.data_dir().join("postmaster.pid")) {
            groups.push(("postgres", pid));
        }
        if let Some(pid) = pid_file(&env.broker.dir().join("server.pid")) {
            groups.push(("mosquitto", pid));
        }
        groups.extend_from_slice(extra);
        let ticks = groups.iter().map(|(_, p)| Watch::ticks(*p)).collect();
        Watch {
            groups,
            ticks,
            at: Instant::now(),
        }
    }

    fn ticks(pid: u32) -> u64 {
        if pid == std::process::id() {
            self_ticks()
        } else {
            tree_ticks(pid)
        }
    }

    /// Starts the clock again (the groups stay).
    fn restart(&mut self) {
        self.ticks = self.groups.iter().map(|(_, p)| Watch::ticks(*p)).collect();
        self.at = Instant::now();
    }

    /// Cores busy per group since start.
    fn stop(&self) -> BTreeMap<&'static str, f64> {
        let wall = self.at.elapsed().as_secs_f64();
        let hz = clock_ticks();
        let mut cores = BTreeMap::new();
        for ((name, pid), before) in self.groups.iter().zip(&self.ticks) {
            let cpu = Watch::ticks(*pid).saturating_sub(*before) as f64 / hz;
            *cores.entry(*name).or_insert(0.0) += cpu / wall;
        }
        cores
    }
}

fn fmt_cores(cores: &BTreeMap<&'static str, f64>) -> String {
    cores
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// The simulator

struct Simulator {
    child: Child,
    out: PathBuf,
    /// Readings it will publish.
    readings: u64,
    /// Messages a second it is paced at (100,000,000: flat out).
    msg_rate: u64,
}

impl Simulator {
    /// Publishes `readings` readings, `per_message` to a message, at `rate` readings/s (or as
    /// fast as the broker takes them).
    fn start(env: &Env, readings: u64, per_message: u64, rate: Option<f64>) -> Result<Simulator> {
        Self::start_with(env, readings, per_message, rate, 0.0)
    }

    /// As [`Simulator::start`], a share of the messages sent as an estimate first and then
    /// corrected (`--corrections`).
    fn start_with(
        env: &Env,
        readings: u64,
        per_message: u64,
        rate: Option<f64>,
        corrections: f64,
    ) -> Result<Simulator> {
        Self::start_via(
            env,
            &env.broker.url(),
            readings,
            per_message,
            rate,
            corrections,
        )
    }

    /// As [`Simulator::start_with`], publishing to `mqtt_url` (the catch-up case's [`Gate`]).
    fn start_via(
        env: &Env,
        mqtt_url: &str,
        readings: u64,
        per_message: u64,
        rate: Option<f64>,
        corrections: f64,
    ) -> Result<Simulator> {
        let messages = readings / per_message;
        // Flat out: a rate far above what the broker takes, so every message is due at once
        // and the publisher runs as fast as the broker acknowledges. At a pace: that rate.
        let (msg_rate, count) = match rate {
            None => (100_000_000, messages),
            Some(r) => {
                let msg_rate = ((r / per_message as f64) as u64).max(1);
                (msg_rate, messages.div_ceil(msg_rate) * msg_rate)
            }
        };
        let out = env
            .pg
            .dir()
            .join(format!("simulate-{}.out", Uuid::new_v4().simple()));
        let file = std::fs::File::create(&out)?;
        let mut cmd = Command::new(BIN);
        cmd.args([
            "simulate",
            "--single",
            "--qos",
            "1",
            "--connections",
            "2",
            "--per-message",
            &per_message.to_string(),
            "--rate",
            &msg_rate.to_string(),
            "--count",
            &count.to_string(),
            "--corrections",
            &corrections.to_string(),
        ])
        .env("DATABASE_URL", &env.db_url)
        .env("MQTT_URL", mqtt_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
        let child = cmd.spawn().context("starting the simulator")?;
        Ok(Simulator {
            child,
            out,
            readings: count * per_message,
            msg_rate,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for its "publishing …" line: connected, inventory read, first message next. The
    /// clock of every throughput starts here.
    async fn started(&mut self) -> Result<Instant> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            if text.lines().any(|l| l.starts_with("publishing ")) {
                return Ok(Instant::now());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the simulator exited ({status}) before publishing: {text}");
            }
            ensure!(
                Instant::now() < deadline,
                "the simulator did not start: {text}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits for it to finish; the readings it says it published.
    async fn finish(self, timeout: Duration) -> Result<u64> {
        Ok(self.finish_summary(timeout).await?.readings)
    }

    /// Waits for it to finish; its summary line.
    async fn finish_summary(mut self, timeout: Duration) -> Result<Published> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let text = std::fs::read_to_string(&self.out).unwrap_or_default();
                ensure!(status.success(), "the simulator failed: {text}");
                // "published N messages (M readings, … in S s: R messages/s, broker acked A"
                let line = text
                    .lines()
                    .find(|l| l.starts_with("published "))
                    .ok_or_else(|| anyhow!("no summary from the simulator: {text}"))?;
                let after = |word: &str| -> Option<f64> {
                    line.split_once(word)?
                        .1
                        .split_whitespace()
                        .next()?
                        .trim_end_matches(':')
                        .parse()
                        .ok()
                };
                let summary = (|| {
                    Some(Published {
                        messages: after("published ")? as u64,
                        readings: after("(")? as u64,
                        secs: after(" in ")?,
                        acked: after("broker acked ")? as u64,
                    })
                })()
                .ok_or_else(|| anyhow!("cannot read the simulator's summary: {line}"))?;
                return Ok(summary);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the simulator did not finish within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A simulator's summary line.
#[derive(Debug, Clone, Copy)]
struct Published {
    messages: u64,
    readings: u64,
    secs: f64,
    /// PUBACKs it had from the broker when it stopped waiting for them.
    acked: u64,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn db_ceiling(env: &Env, n: u64) -> Result<Sample> {
    reset(env).await?;
    let mut client = connect(&env.db_url).await?;
    let stmt = client
        .prepare("SELECT entity_type, entity_id, metric, ts, value, unit, quality, received_at FROM measurements LIMIT 0")
        .await?;
    let types: Vec<_> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
    // The simulator's rows: round-robin over the meters, successive timestamps per meter.
    let start: DateTime<Utc> = Utc::now() - chrono::Duration::hours(2);
    let per_meter = n.div_ceil(env.meters.len() as u64) as i64;
    let step_ms = (3_600_000 / per_meter).max(1);
    let watch = Watch::start(env, &[("bench (COPY client)", std::process::id())]);
    let t0 = Instant::now();
    let mut i: u64 = 0;
    while i < n {
        let tx = client.transaction().await?;
        let sink = tx
            .copy_in("COPY measurements (entity_type, entity_id, metric, ts, value, unit, quality, received_at) FROM STDIN (FORMAT binary)")
            .await?;
        let mut w = pin!(BinaryCopyInWriter::new(sink, &types));
        let end = (i + BATCH_ROWS as u64).min(n);
        let now = Utc::now();
        while i < end {
            let m = (i % env.meters.len() as u64) as usize;
            let k = (i / env.meters.len() as u64) as i64;
            let ts = start + chrono::Duration::milliseconds(k * step_ms);
            let value = 50.0 + (i % 97) as f64 * 0.731;
            let row: [&(dyn ToSql + Sync); 8] = [
                &EntityKind::Meter,
                &env.meters[m],
                &"power",
                &ts,
                &value,
                &"kW",
                &Quality::Good,
                &now,
            ];
            w.as_mut().write(&row).await?;
            i += 1;
        }
        w.finish().await?;
        tx.commit().await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cores = watch.stop();
    let (count, _) = stored(env).await?;
    ensure!(count as u64 == n, "COPY stored {count} of {n} rows");
    Ok(Sample {
        readings_per_s: n as f64 / secs,
        cores,
        complete: true,
        ..Default::default()
    })
}

/// The simulator → mosquitto → `mosquitto_sub` (the broker's own C client, QoS 1), which only
/// prints each payload on a line; the bench counts the lines.
async fn broker_ceiling(env: &Env, n: u64, per_message: u64) -> Result<Sample> {
    use tokio::io::AsyncReadExt;
    let messages = n / per_message;
    let mut sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &env.broker.port().to_string()])
        .args(["-t", TOPIC_FILTER, "-q", "1", "-V", "mqttv5"])
        .args(["-i", &format!("bench-count-{}", Uuid::new_v4().simple())])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting mosquitto_sub (apt-get install mosquitto-clients)")?;
    let sub_pid = sub.id().context("mosquitto_sub exited")?;
    let mut out = sub.stdout.take().context("mosquitto_sub's stdout")?;
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0u64;
    // Warm-up messages until one comes through: then the subscription is in place.
    let warmup = format!("enalysis/v1/bench/{}/readings", Uuid::new_v4().simple());
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines == 0 {
        ensure!(
            Instant::now() < deadline,
            "mosquitto_sub never received a message"
        );
        let _ = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &env.broker.port().to_string()])
            .args(["-t", &warmup, "-q", "1", "-m", "{}"])
            .status();
        if let Ok(Ok(k)) =
            tokio::time::timeout(Duration::from_millis(200), out.read(&mut buf)).await
        {
            ensure!(k > 0, "mosquitto_sub exited");
            lines += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
        }
    }
    let mut sim = Simulator::start(env, n, per_message, None)?;
    let mut watch = Watch::start(env, &[("simulator", sim.pid()), ("subscriber", sub_pid)]);
    let t0 = sim.started().await?;
    watch.restart();
    let target = lines + messages;
    let count = async {
        while lines < target {
            let k = out.read(&mut buf).await?;
            ensure!(k > 0, "mosquitto_sub exited");
            lines += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(120), count)
        .await
        .context("mosquitto_sub did not receive every message within 120 s")??;
    let end = Instant::now();
    let cores = watch.stop();
    let published = sim.finish(Duration::from_secs(30)).await?;
    ensure!(published == n, "the simulator published {published} of {n}");
    let _ = sub.kill().await;
    Ok(Sample {
        readings_per_s: n as f64 / (end - t0).as_secs_f64(),
        cores,
        complete: true,
        ..Default::default()
    })
}

static DAEMON_RUNS: AtomicUsize = AtomicUsize::new(0);

struct Daemon {
    child: Child,
    http: u16,
    log: PathBuf,
}

impl Daemon {
    async fn start(env: &Env) -> Result<Daemon> {
        Daemon::start_with(env, &[]).await
    }

    /// [`Daemon::start`] with extra environment variables (settings).
    async fn start_with(env: &Env, extra: &[(&str, String)]) -> Result<Daemon> {
        let http = common::free_port();
        // Kept after the run for a look: target/bench/daemon-N.log.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!(
            "daemon-{}.log",
            DAEMON_RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(BIN)
            .arg("run")
            .env("DATABASE_URL", &env.db_url)
            .env("MQTT_URL", env.broker.url())
            .env("ENALYSIS_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .env(
                "ENALYSIS_MQTT__CLIENT_ID",
                format!("bench-ingest-{}", Uuid::new_v4().simple()),
            )
            // The session ends with the run: later cases must not queue messages for it.
            .env("ENALYSIS_MQTT__SESSION_EXPIRY_SECS", "1")
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting the daemon")?;
        let d = Daemon { child, http, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&d.log)
            .unwrap_or_default()
            .contains("\"subscribed\"")
        {
            ensure!(
                Instant::now() < deadline,
                "the daemon did not subscribe within 30 s: {}",
                std::fs::read_to_string(&d.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(d)
    }

    async fn metrics(&self) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.http)).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok(body)
    }

    async fn accepted(&self) -> Result<u64> {
        let m = self.metrics().await?;
        Ok(metric_value(&m, "ingest_readings_accepted_total").unwrap_or(0.0) as u64)
    }

    /// Waits until the daemon has committed `n` readings, polling every 20 ms (the cases time
    /// their end by it).
    async fn wait_accepted(&self, n: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let accepted = self.accepted().await?;
            if accepted >= n {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "only {accepted} of {n} readings committed within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "the daemon exited with {status}");
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "the daemon did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Quantile from Prometheus `_bucket` lines (cumulative), interpolated within the bucket.
fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<(f64, u64)> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let v: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some((prev.0, total as u64));
            }
            let within = if count > prev.1 {
                (rank - prev.1) / (count - prev.1)
            } else {
                0.0
            };
            return Some((prev.0 + (le - prev.0) * within, total as u64));
        }
        prev = (le, count);
    }
    None
}

/// The daemon end to end: every reading committed, checked in the table. With `rate`, the
/// simulator publishes at that rate and the latency histogram is read.
async fn daemon_run(
    env: &Env,
    n: u64,
    per_message: u64,
    pace: Option<f64>,
) -> Result<(Sample, Option<Latency>)> {
    daemon_run_with(env, n, per_message, pace, 0.0).await
}

/// [`daemon_run`] with a share of the messages corrected: each sent first as an estimate,
/// replaced later by the real values. Every reading is accepted (a correction too), so the
/// table ends with `n` readings less the corrections, and a revision for each of those.
async fn daemon_run_with(
    env: &Env,
    n: u64,
    per_message: u64,
    pace: Option<f64>,
    corrections: f64,
) -> Result<(Sample, Option<Latency>)> {
    reset(env).await?;
    let daemon = Daemon::start(env).await?;
    let mut sim = Simulator::start_with(env, n, per_message, pace, corrections)?;
    // At a pace, the simulator rounds up to whole seconds.
    let n = sim.readings;
    let daemon_pid = daemon.child.id();
    let ticks0 = proc_ticks(daemon_pid);
    let mut watch = Watch::start(env, &[("simulator", sim.pid()), ("daemon", daemon_pid)]);
    let t0 = sim.started().await?;
    watch.restart();
    daemon
        .wait_accepted(n, Duration::from_secs(180))
        .await
        .context("after the simulator started")?;
    let end = Instant::now();
    let cores = watch.stop();
    let cpu = proc_ticks(daemon_pid).saturating_sub(ticks0) as f64 / clock_ticks();
    let rss = peak_rss_mib(daemon_pid);
    let metrics = daemon.metrics().await?;
    let published = sim.finish(Duration::from_secs(60)).await?;
    daemon.stop().await?;
    let (count, rejected) = stored(env).await?;
    let revisions: i64 = env
        .client
        .query_one("SELECT count(*) FROM measurement_revisions", &[])
        .await?
        .get(0);
    let corrected = metric_value(&metrics, "ingest_readings_corrected_total").unwrap_or(0.0);
    ensure!(
        published == n
            && (count + revisions) as u64 == n
            && revisions as f64 == corrected
            && (corrections > 0.0 || revisions == 0)
            && rejected == 0,
        "published {published}, stored {count}, revisions {revisions} ({corrected} corrected), rejected {rejected}: expected {n} stored exactly once"
    );
    let latency = pace.and_then(|r| {
        let (p50, batches) =
            histogram_quantile(&metrics, "ingest_end_to_end_latency_seconds", 0.5)?;
        let (p99, _) = histogram_quantile(&metrics, "ingest_end_to_end_latency_seconds", 0.99)?;
        Some(Latency {
            p50_ms: p50 * 1000.0,
            p99_ms: p99 * 1000.0,
            rate: r,
            batches,
        })
    });
    Ok((
        Sample {
            readings_per_s: n as f64 / (end - t0).as_secs_f64(),
            cpu_us_per_reading: Some(cpu * 1e6 / n as f64),
            peak_rss_mib: rss,
            cores,
            complete: true,
            note: String::new(),
            remark: String::new(),
        },
        latency,
    ))
}

// ---------------------------------------------------------------------------------------------
// Hostile flood (issue #11)

const HOSTILE_CASE: &str = "enalysis-ingest, hostile flood";
/// 10 readings a message, 10% of the messages sent as estimates and corrected (CONTRACT.md §4).
const CORRECTIONS_CASE: &str = "enalysis-ingest, 10/msg, 10% corrected";
/// Readings in one flood message: the gateway with a CT clamp fitted backwards of issue #11.
const FLOOD_READINGS: u64 = 3240;
/// A CONS meter of the inventory (`inventory_yaml`: every fourth meter, from 0).
const FLOOD_TOPIC: &str = "enalysis/v1/meters/bench-meter-0/readings";

/// The message of issue #11: a JSON array of 3,240 readings of `power` −3.5 kW at distinct
/// millisecond timestamps 26 s apart from `first_ts_ms` (within the last day), one per line,
/// indented to 79 bytes a reading: ~250 KiB, just under the 256 KiB `ingest.max_payload_bytes`.
fn flood_message(first_ts_ms: i64) -> Vec<u8> {
    let n = FLOOD_READINGS as usize;
    let mut out = String::with_capacity(n * 79 + 4);
    out.push_str("[\n");
    for i in 0..n {
        let obj = format!(
            r#"{{"ts": {}, "metric": "power", "value": -3.5, "unit": "kW"}}"#,
            first_ts_ms + i as i64 * 26_000
        );
        out.extend(std::iter::repeat_n(' ', 77usize.saturating_sub(obj.len())));
        out.push_str(&obj);
        out.push_str(if i + 1 < n { ",\n" } else { "\n" });
    }
    out.push(']');
    out.into_bytes()
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Publishes flood messages to [`FLOOD_TOPIC`], `rate` a second for `secs`, each one different
/// (its timestamps shifted by 1 ms per message), at QoS 1; waits for the broker's PUBACKs,
/// with at most 64 outstanding. Returns the messages and bytes published.
async fn flood_publish(env: &Env, rate: u64, secs: u64) -> Result<(u64, u64)> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut opts = MqttOptions::new(
        format!("bench-flood-{}", Uuid::new_v4().simple()),
        "127.0.0.1",
        env.broker.port(),
    );
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = acked.clone();
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let result = async {
        let day_ago = Utc::now().timestamp_millis() - 86_400_000 + 120_000;
        let period = Duration::from_secs_f64(1.0 / rate as f64);
        let start = tokio::time::Instant::now();
        let end = start + Duration::from_secs(secs);
        let (mut next, mut sent, mut bytes) = (start, 0u64, 0u64);
        while next < end {
            tokio::time::sleep_until(next).await;
            let payload = flood_message(day_ago + sent as i64);
            bytes += payload.len() as u64;
            client
                .publish(FLOOD_TOPIC, QoS::AtLeastOnce, false, payload)
                .await?;
            sent += 1;
            next += period;
            let deadline = Instant::now() + Duration::from_secs(30);
            while sent.saturating_sub(acked.load(Ordering::Relaxed)) > 64 {
                ensure!(
                    Instant::now() < deadline,
                    "the broker stopped acknowledging"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.load(Ordering::Relaxed) < sent {
            ensure!(
                Instant::now() < deadline,
                "the broker acknowledged {} of {sent} flood messages",
                acked.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok((sent, bytes))
    }
    .await;
    poller.abort();
    result
}

/// The daemon with `ingest.max_buffered_bytes` = the flood's budget, the simulator's valid
/// readings at `valid_rate`, and for `flood.secs` the flood beside them. Then every valid
/// reading and every rejection is checked in the tables.
async fn hostile_flood(env: &Env, flood: Flood, valid_rate: u64) -> Result<Sample> {
    reset(env).await?;
    let daemon = Daemon::start_with(
        env,
        &[(
            "ENALYSIS_INGEST__MAX_BUFFERED_BYTES",
            flood.budget_bytes.to_string(),
        )],
    )
    .await?;
    let pid = daemon.child.id();
    // Up and idle: the base of the bound.
    let base = rss_mib(pid).context("the daemon's VmRSS")?;
    let mut sim = Simulator::start(env, valid_rate * flood.secs, 1, Some(valid_rate as f64))?;
    let n = sim.readings;
    let mut watch = Watch::start(
        env,
        &[
            ("simulator", sim.pid()),
            ("daemon", pid),
            ("bench (flood publisher)", std::process::id()),
        ],
    );
    sim.started().await?;
    watch.restart();
    let accepted0 = daemon.accepted().await?;
    let t0 = Instant::now();
    let (messages, bytes) = flood_publish(env, flood.rate, flood.secs).await?;
    let flood_secs = t0.elapsed().as_secs_f64();
    let accepted1 = daemon.accepted().await?;
    let cores = watch.stop();
    // What the broker holds then is the backlog: wait until every valid reading is committed
    // and every flood message is recorded.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let recorded: i64 = env
            .client
            .query_one("SELECT count(*) FROM rejected_messages", &[])
            .await?
            .get(0);
        let accepted = daemon.accepted().await?;
        if accepted >= n && recorded as u64 >= messages {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "after 300 s: {accepted} of {n} valid readings committed, {recorded} of {messages} \
             flood messages recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = t0.elapsed().as_secs_f64() - flood_secs;
    let rss = peak_rss_mib(pid);
    let published = sim.finish(Duration::from_secs(60)).await?;
    daemon.stop().await?;
    let (count, rejected) = stored(env).await?;
    ensure!(
        published == n && count as u64 == n && rejected as u64 == messages * FLOOD_READINGS,
        "published {published}, stored {count}, rejected {rejected}: expected {n} stored \
         exactly once and {} rejected",
        messages * FLOOD_READINGS
    );
    let budget = (flood.budget_bytes >> 20) as f64;
    let bound = 2.0 * budget + base;
    let peak = rss.unwrap_or(f64::NAN);
    let remark = format!(
        "budget {budget:.0} MiB, peak RSS {peak:.0} MiB {} the bound 2 × budget + base \
         {base:.0} MiB = {bound:.0} MiB; {messages} flood messages ({:.0} MiB, {} rejected \
         readings) in {flood_secs:.0} s beside {} valid readings/s offered; backlog drained \
         {drained:.1} s after the flood",
        if peak <= bound { "within" } else { "ABOVE" },
        bytes as f64 / 1048576.0,
        thousands((messages * FLOOD_READINGS) as f64),
        thousands(valid_rate as f64),
    );
    Ok(Sample {
        readings_per_s: accepted1.saturating_sub(accepted0) as f64 / flood_secs,
        peak_rss_mib: rss,
        cores,
        complete: true,
        remark,
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Catch-up (issue #18)

const CATCHUP_CASE: &str = "enalysis-ingest, catch-up, 10/msg";
/// Live readings published within this long before a poll may still be in flight (the batch
/// being filled, up to `ingest.batch_max_age_ms` = 100 ms, and its commit) when the daemon is
/// caught up: the catch-up criterion leaves them out (see [`catch_up`]).
const CATCHUP_SLACK: Duration = Duration::from_millis(250);

/// A relay to the broker that listens only once opened. The backlog's simulator reads the
/// inventory while PostgreSQL is up and publishes through it; until the gate opens its
/// connections are refused (it retries every 500 ms, its messages waiting in its client), so
/// nothing of the backlog reaches the broker before PostgreSQL is down.
struct Gate {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gate {
    fn closed() -> Gate {
        Gate {
            port: common::free_port(),
            task: None,
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    async fn open(&mut self, broker_port: u16) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .with_context(|| format!("the gate's port {}", self.port))?;
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut out) =
                        tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await
                    {
                        let _ = inbound.set_nodelay(true);
                        let _ = out.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        }));
        Ok(())
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The catch-up case on a mosquitto of its own (configured as the shared one, like
/// `deploy/mosquitto/`), so that its peak RSS is this case's. Whatever happens, PostgreSQL is
/// running again, the bench's client connected and the shared broker back when it returns.
async fn catch_up(
    env: &mut Env,
    c: Catchup,
    live_rate: u64,
    db: Option<f64>,
    sustained: Option<f64>,
) -> Result<(Sample, String)> {
    let shared = std::mem::replace(&mut env.broker, Broker::start());
    let r = catch_up_on(env, c, live_rate, db, sustained).await;
    if !env.pg.is_running() {
        tokio::task::block_in_place(|| env.pg.start());
    }
    if env.client.is_closed() {
        env.client = connect(&env.db_url).await?;
    }
    env.broker = shared;
    r
}

/// PostgreSQL's cumulative counters (15): WAL bytes, full-page images; buffers written by
/// backends (evicting dirty pages themselves: shared_buffers is full), by the background
/// writer, by checkpoints.
async fn pg_counters(client: &tokio_postgres::Client) -> Result<[f64; 5]> {
    let row = client
        .query_one(
            "SELECT w.wal_bytes::float8, w.wal_fpi::float8, b.buffers_backend::float8,
                    b.buffers_clean::float8, b.buffers_checkpoint::float8
             FROM pg_stat_wal w, pg_stat_bgwriter b",
            &[],
        )
        .await?;
    Ok(std::array::from_fn(|i| row.get(i)))
}

/// "Saving in-memory database" lines in the broker's log so far: mosquitto rewrites its whole
/// persistence file each time (`autosave_interval`, 60 s, as `deploy/mosquitto/`), in its one
/// thread, which costs more the larger the backlog.
fn mosquitto_saves(broker: &Broker) -> usize {
    std::fs::read_to_string(broker.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Saving in-memory database"))
        .count()
}

fn metric(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or(0.0)
}

async fn catch_up_on(
    env: &mut Env,
    c: Catchup,
    live_rate: u64,
    db: Option<f64>,
    sustained: Option<f64>,
) -> Result<(Sample, String)> {
    use enalysis_ingest::telemetry::names::{
        BUFFERED_BYTES, BUFFERED_READINGS, DB_ERRORS, MQTT_CONNECTED, MQTT_RECONNECTS,
        MQTT_UNACKED, READINGS_ACCEPTED, READINGS_DUPLICATE,
    };
    let backlog = c.readings;
    let live_secs = c
        .live_secs
        .unwrap_or(10 + 3 * backlog / live_rate.max(1))
        .clamp(1, 600);
    reset(env).await?;
    let daemon = Daemon::start(env).await?;
    let pid = daemon.child.id();
    // Subscribed; idle once the start-up work is done and nothing is buffered.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m0 = daemon.metrics().await?;
    ensure!(
        metric(&m0, READINGS_ACCEPTED) == 0.0 && metric(&m0, BUFFERED_READINGS) == 0.0,
        "the daemon is not idle before the case"
    );

    // The backlog's publisher: inventory read now, its messages held at the gate.
    let mut gate = Gate::closed();
    let mut backlog_sim = Simulator::start_via(env, &gate.url(), backlog, 10, None, 0.0)?;
    backlog_sim.started().await?;

    // PostgreSQL down. Fast shutdown (SIGINT): it disconnects the daemon's sessions, writes a
    // shutdown checkpoint and exits, so the next start needs no recovery; "smart" would wait
    // for the daemon's pooled connections forever, "immediate" is a crash (crash recovery at
    // start would add WAL replay to the time to the first commit).
    let stopping = Instant::now();
    tokio::task::block_in_place(|| env.pg.stop());
    let stop_secs = stopping.elapsed().as_secs_f64();
    let down = Instant::now();
    gate.open(env.broker.port()).await?;
    let sent = backlog_sim.finish_summary(Duration::from_secs(300)).await?;
    ensure!(
        sent.readings == backlog && sent.acked == sent.messages,
        "the backlog's simulator published {} readings, {} of {} messages acknowledged by the \
         broker: expected {backlog}, all acknowledged",
        sent.readings,
        sent.acked,
        sent.messages
    );
    drop(gate);
    // A longer outage, if asked: past the keep-alive (30 s), past the writer's longest backoff.
    let until = down + c.min_down;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m1 = daemon.metrics().await?;
    ensure!(
        metric(&m1, MQTT_CONNECTED) == 1.0
            && metric(&m1, MQTT_RECONNECTS) == metric(&m0, MQTT_RECONNECTS),
        "the daemon lost the broker while PostgreSQL was down ({} reconnects)",
        metric(&m1, MQTT_RECONNECTS) - metric(&m0, MQTT_RECONNECTS)
    );
    ensure!(
        metric(&m1, READINGS_ACCEPTED) == 0.0,
        "readings committed with PostgreSQL down"
    );
    let held_messages = metric(&m1, MQTT_UNACKED);
    let held_mib = metric(&m1, BUFFERED_BYTES) / 1048576.0;

    // PostgreSQL up, and at the same instant the live publisher (it reads the inventory first,
    // so it can only start once the server accepts connections).
    let starting = Instant::now();
    tokio::task::block_in_place(|| env.pg.start());
    let t_pg = Instant::now();
    let down_secs = (t_pg - down).as_secs_f64();
    let start_secs = (t_pg - starting).as_secs_f64();
    let mut live = Simulator::start(env, live_rate * live_secs, 10, Some(live_rate as f64))?;
    let live_total = live.readings;
    let live_msgs_per_s = live.msg_rate as f64;
    // From PostgreSQL's start: the live simulator's start-up is in.
    let watch = Watch::start(env, &[("daemon", pid), ("simulator", live.pid())]);
    let ticks0 = proc_ticks(pid);
    env.client = connect(&env.db_url).await?;
    let t_live = live.started().await?;
    // What the live publisher has published by `at`: its schedule (`simulate` sends what is
    // due every 10 ms from its "publishing" line on), 10 readings a message, capped at its count.
    let live_due = |at: Instant| -> u64 {
        let secs = at.saturating_duration_since(t_live).as_secs_f64();
        ((secs * live_msgs_per_s) as u64 * 10).min(live_total)
    };
    // Poll until caught up: every backlog reading and every live reading published up to
    // CATCHUP_SLACK before the poll committed.
    let deadline = t_pg + Duration::from_secs(live_secs + 120);
    let mut first: Option<(Instant, u64, String)> = None;
    let saves_before = mosquitto_saves(&env.broker);
    // (time, batches written, seconds spent writing them), about every second: how the time
    // per batch moves as the table grows.
    let mut flushes: Vec<(Instant, f64, f64)> = Vec::new();
    // Not fatal: other PostgreSQL versions name these differently (17: pg_stat_io).
    let pg0 = pg_counters(&env.client).await.ok();
    let (t_caught, caught_at, live_then) = loop {
        let m = daemon.metrics().await?;
        let accepted = metric(&m, READINGS_ACCEPTED) as u64;
        let now = Instant::now();
        if first.is_none() && accepted > 0 {
            // The metrics from here on are the drain's alone: the first batch's retries while
            // PostgreSQL was away are in its flush time, recorded before.
            first = Some((now, accepted, m.clone()));
        }
        if first.is_some()
            && flushes
                .last()
                .is_none_or(|f| now - f.0 >= Duration::from_secs(1))
        {
            flushes.push((
                now,
                metric(&m, "ingest_flush_duration_seconds_count"),
                metric(&m, "ingest_flush_duration_seconds_sum"),
            ));
        }
        let due = live_due(now.checked_sub(CATCHUP_SLACK).unwrap_or(now));
        if accepted >= backlog + due {
            break (now, accepted, live_due(now));
        }
        ensure!(
            now < deadline,
            "not caught up {:.0} s after PostgreSQL started: {accepted} of {} + {due} readings \
             committed",
            (now - t_pg).as_secs_f64(),
            backlog
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let cores = watch.stop();
    let cpu = proc_ticks(pid).saturating_sub(ticks0) as f64 / clock_ticks();
    let m2 = daemon.metrics().await?;
    let pg1 = pg_counters(&env.client).await.ok();
    let saves_during = mosquitto_saves(&env.broker) - saves_before;
    let (t_first, first_accepted, m_first) = first.context("no commit")?;
    let catch_secs = (t_caught - t_pg).as_secs_f64();
    let first_secs = (t_first - t_pg).as_secs_f64();
    let drain = caught_at as f64 / catch_secs;
    let drain_from_first = (caught_at - first_accepted) as f64 / (t_caught - t_first).as_secs_f64();
    let live_finished_first = live_then >= live_total;

    // The rest of the live stream, then the table.
    let live_sent = live
        .finish_summary(Duration::from_secs(live_secs + 120))
        .await?;
    let total = backlog + live_total;
    daemon
        .wait_accepted(total, Duration::from_secs(120))
        .await
        .context("after the live publisher finished")?;
    let m3 = daemon.metrics().await?;
    let rss = peak_rss_mib(pid);
    let broker_pid = pid_file(&env.broker.dir().join("server.pid"));
    let broker_rss = broker_pid.and_then(peak_rss_mib);
    let saves = mosquitto_saves(&env.broker);
    daemon.stop().await?;
    let (count, rejected) = stored(env).await?;
    ensure!(
        live_sent.readings == live_total
            && live_sent.acked == live_sent.messages
            && count as u64 == total
            && rejected == 0,
        "published {backlog} + {} (broker acked {} of {} live messages), stored {count}, \
         rejected {rejected}: expected {total} stored exactly once",
        live_sent.readings,
        live_sent.acked,
        live_sent.messages
    );

    // Batches written from the first commit to catch-up (the first one, with its retries,
    // before): their size, how long each took, and the share of that time the writer spent
    // writing (1: it never waited for a batch, so it was the limit).
    let d = |name: &str| metric(&m2, name) - metric(&m_first, name);
    let batches = d("ingest_batch_rows_count");
    let mean_batch = d("ingest_batch_rows_sum") / batches.max(1.0);
    let flush_secs = d("ingest_flush_duration_seconds_sum");
    let mean_flush_ms = 1000.0 * flush_secs / d("ingest_flush_duration_seconds_count").max(1.0);
    let writer_busy = flush_secs / (t_caught - t_first).as_secs_f64();
    // ms per batch in each fifth of the drain (from the first commit).
    flushes.push((
        t_caught,
        metric(&m2, "ingest_flush_duration_seconds_count"),
        metric(&m2, "ingest_flush_duration_seconds_sum"),
    ));
    let fifths: Vec<String> = (0..5)
        .filter_map(|k| {
            let at = |q: usize| flushes[(flushes.len() - 1) * q / 5];
            let (a, b) = (at(k), at(k + 1));
            (b.1 > a.1).then(|| format!("{:.0}", 1000.0 * (b.2 - a.2) / (b.1 - a.1)))
        })
        .collect();
    let pg_line = match (pg0, pg1) {
        (Some(a), Some(b)) => format!(
            "PostgreSQL meanwhile: {:.0} MiB of WAL ({:.0} full-page images), {:.0} buffers \
             written by backends, {:.0} by the background writer, {:.0} by checkpoints",
            (b[0] - a[0]) / 1048576.0,
            b[1] - a[1],
            b[2] - a[2],
            b[3] - a[3],
            b[4] - a[4]
        ),
        _ => "PostgreSQL's counters not read".to_string(),
    };
    let ratio = |rate: f64, of: Option<f64>, what: &str| match of {
        Some(x) if x > 0.0 => format!(" = {:.2} × {what}", rate / x),
        _ => String::new(),
    };
    let target = match db {
        Some(x) if drain >= 0.8 * x => "; target ≥ 0.80 × the COPY ceiling: met".to_string(),
        Some(_) => "; target ≥ 0.80 × the COPY ceiling: NOT met".to_string(),
        None => String::new(),
    };
    let line = format!(
        "backlog {} readings ({} messages at 10/msg) published in {:.1} s while PostgreSQL was \
         down ({:.1} s down; fast shutdown took {stop_secs:.1} s; the daemon held {held_messages:.0} \
         messages unacknowledged, {held_mib:.1} MiB of its budget, and stayed connected); \
         PostgreSQL ready {start_secs:.1} s after its start, live publisher at {} readings/s from \
         then on ({} in {live_secs} s; it published for {:.1} s): first commit {first_secs:.1} s \
         after PostgreSQL was ready, caught up after {catch_secs:.1} s ({} readings committed, \
         {} of them live{}); **drain {} readings/s**{}{}{target}, from the first commit {} \
         readings/s{}; after it {batches:.0} batches of {mean_batch:.0} rows on average, \
         {mean_flush_ms:.1} ms each to write and commit (by fifth of the drain: {} ms), the \
         writer busy {:.0}% of the time; {pg_line}; \
         overflow peak {:.0} messages; MQTT reconnects {:.0}, database errors {:.0}, duplicates \
         {:.0}; peak RSS daemon {:.0} MiB, mosquitto {:.0} MiB (a broker of its own for the \
         case; {saves} persistence saves in its log, {saves_during} of them during the drain); \
         then all {} readings stored exactly once, none rejected",
        thousands(backlog as f64),
        thousands(sent.messages as f64),
        sent.secs,
        down_secs,
        thousands(live_rate as f64),
        thousands(live_total as f64),
        live_sent.secs,
        thousands(caught_at as f64),
        thousands(caught_at.saturating_sub(backlog) as f64),
        if live_finished_first {
            ", only once the live publisher's schedule had ended: BENCH_CATCHUP_LIVE_SECS too \
             short, or the publisher behind its schedule"
        } else {
            ""
        },
        thousands(drain),
        ratio(drain, db, "the COPY ceiling"),
        ratio(drain, sustained, "the sustained 10/msg rate"),
        thousands(drain_from_first),
        ratio(drain_from_first, db, "the COPY ceiling"),
        fifths.join(", "),
        writer_busy * 100.0,
        metric(&m2, "ingest_mqtt_overflow_peak_messages"),
        metric(&m3, MQTT_RECONNECTS) - metric(&m0, MQTT_RECONNECTS),
        metric(&m3, DB_ERRORS) - metric(&m0, DB_ERRORS),
        metric(&m3, READINGS_DUPLICATE) - metric(&m0, READINGS_DUPLICATE),
        rss.unwrap_or(f64::NAN),
        broker_rss.unwrap_or(f64::NAN),
        thousands(total as f64),
    );
    Ok((
        Sample {
            readings_per_s: drain,
            cpu_us_per_reading: Some(cpu * 1e6 / caught_at as f64),
            peak_rss_mib: rss,
            cores,
            complete: true,
            ..Default::default()
        },
        line,
    ))
}

// ---------------------------------------------------------------------------------------------
// Peers

struct Peer {
    name: &'static str,
    /// The case names for 1 and 10 readings per message.
    cases: [&'static str; 2],
    program: PathBuf,
    args: Vec<String>,
    ready: &'static str,
    available: Result<()>,
}

impl Peer {
    /// The peers as `bench/peers/setup` installs them under `bench_dir`.
    fn all(bench_dir: &Path) -> Vec<Peer> {
        let py = bench_dir.join("python");
        let nr = bench_dir.join("node-red");
        let check = |paths: &[&Path]| -> Result<()> {
            for p in paths {
                ensure!(
                    p.exists(),
                    "{} is missing: run bench/peers/setup",
                    p.display()
                );
            }
            Ok(())
        };
        let python = py.join("venv/bin/python");
        let bridge = py.join("bridge.py");
        let red_js = nr.join("node_modules/node-red/red.js");
        let settings = nr.join("settings.js");
        vec![
            Peer {
                name: "python",
                cases: ["python bridge, 1/msg", "python bridge, 10/msg"],
                available: check(&[&python, &bridge]),
                program: python,
                args: vec!["-u".into(), bridge.display().to_string()],
                ready: "ready",
            },
            Peer {
                name: "node-red",
                cases: ["node-red, 1/msg", "node-red, 10/msg"],
                available: check(&[&red_js, &settings]),
                program: PathBuf::from("node"),
                args: vec![
                    red_js.display().to_string(),
                    "--settings".into(),
                    settings.display().to_string(),
                ],
                ready: "ready",
            },
        ]
    }
}

async fn peer_run(
    env: &Env,
    peer: &Peer,
    n: u64,
    per_message: u64,
    window: Duration,
) -> Result<Sample> {
    reset(env).await?;
    let log = env
        .pg
        .dir()
        .join(format!("{}-{}.log", peer.name, Uuid::new_v4().simple()));
    let file = std::fs::File::create(&log)?;
    let mut child = Command::new(&peer.program)
        .args(&peer.args)
        .env("MQTT_HOST", "127.0.0.1")
        .env("MQTT_PORT", env.broker.port().to_string())
        .env("MQTT_TOPIC", TOPIC_FILTER)
        .env(
            "MQTT_CLIENT_ID",
            format!("bench-{}-{}", peer.name, Uuid::new_v4().simple()),
        )
        .env("DATABASE_URL", &env.db_url)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {}", peer.program.display()))?;
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().any(|l| l.trim() == peer.ready) {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("{} exited with {status}: {text}", peer.name);
            }
            ensure!(
                Instant::now() < deadline,
                "{} not ready within 60 s: {text}",
                peer.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut sim = Simulator::start(env, n, per_message, None)?;
        let pid = child.id();
        let ticks0 = tree_ticks(pid);
        let mut watch = Watch::start(env, &[("simulator", sim.pid()), (peer.name, pid)]);
        let t0 = sim.started().await?;
        watch.restart();
        // Peers have no metrics: count in the table, a few times a second (a count of at most
        // a few hundred thousand rows: cheap next to the load).
        let (count, end) = loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let count = stored(env).await?.0 as u64;
            if count >= n || t0.elapsed() >= window {
                break (count, Instant::now());
            }
        };
        let cores = watch.stop();
        let cpu = tree_ticks(pid).saturating_sub(ticks0) as f64 / clock_ticks();
        let rss = tree(pid).into_iter().filter_map(peak_rss_mib).sum::<f64>();
        let readings_per_s = count as f64 / (end - t0).as_secs_f64();
        drop(sim);
        Ok(Sample {
            readings_per_s,
            cpu_us_per_reading: (count > 0).then(|| cpu * 1e6 / count as f64),
            peak_rss_mib: Some(rss),
            cores,
            complete: count >= n,
            note: if count >= n {
                String::new()
            } else {
                format!("{count} of {n} stored in the {}-s window", window.as_secs())
            },
            remark: String::new(),
        })
    }
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    result
}

// ---------------------------------------------------------------------------------------------
// Report

fn median_spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (mid, s[0], s[s.len() - 1])
}

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

async fn report(
    s: &Settings,
    env: &Env,
    results: &BTreeMap<&'static str, Vec<Sample>>,
    latencies: &[Latency],
    catchups: &[(usize, String)],
    elapsed: Duration,
) {
    let median = |case: &str| {
        results
            .get(case)
            .map(|v| median_spread(&v.iter().map(|s| s.readings_per_s).collect::<Vec<_>>()).0)
    };
    let db = median("db ceiling (COPY)");
    let ceiling = |per_message: u64| {
        let broker = median(if per_message == 1 {
            "broker ceiling, 1/msg"
        } else {
            "broker ceiling, 10/msg"
        });
        match (db, broker) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    };
    let pg_version = env
        .client
        .query_one("SHOW server_version", &[])
        .await
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_default();
    let mosquitto = Command::new(
        std::env::var("MOSQUITTO_BIN").unwrap_or_else(|_| "/usr/sbin/mosquitto".into()),
    )
    .arg("-h")
    .output()
    .ok()
    .and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .map(str::to_string)
    })
    .unwrap_or_default();
    println!();
    println!(
        "enalysis-ingest end-to-end benchmark: {} readings per case, {METERS} meters, QoS 1, {} run(s), {:.0} s in all",
        thousands(s.readings as f64),
        s.repeats,
        elapsed.as_secs_f64()
    );
    println!(
        "PostgreSQL {pg_version} (fsync=on, synchronous_commit=on{}), {mosquitto}, {} CPUs; median [min – max]",
        s.pg_settings
            .iter()
            .map(|(n, v)| format!(", {n}={v}"))
            .collect::<String>(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!(
        "| case | readings/s | × ceiling | CPU µs/reading | peak RSS MiB | cores busy (median run) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    let order = [
        "db ceiling (COPY)",
        "broker ceiling, 1/msg",
        "broker ceiling, 10/msg",
        "enalysis-ingest, 1/msg",
        "enalysis-ingest, 10/msg",
        CORRECTIONS_CASE,
        HOSTILE_CASE,
        CATCHUP_CASE,
        "python bridge, 1/msg",
        "python bridge, 10/msg",
        "node-red, 1/msg",
        "node-red, 10/msg",
    ];
    for case in order {
        let Some(samples) = results.get(case) else {
            continue;
        };
        let rates: Vec<f64> = samples.iter().map(|s| s.readings_per_s).collect();
        let (mid, lo, hi) = median_spread(&rates);
        let per_message = if case.contains("10/msg") { 10 } else { 1 };
        let ratio = match (
            case.contains("ceiling") || case == HOSTILE_CASE,
            ceiling(per_message),
        ) {
            (false, Some(c)) => format!("{:.2}", mid / c),
            _ => "".into(),
        };
        let cpu: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.cpu_us_per_reading)
            .collect();
        let cpu = if cpu.is_empty() {
            String::new()
        } else {
            format!("{:.1}", median_spread(&cpu).0)
        };
        let rss = samples
            .iter()
            .filter_map(|s| s.peak_rss_mib)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
            .map(|v| format!("{v:.0}"))
            .unwrap_or_default();
        // Cores of the run closest to the median.
        let typical = samples
            .iter()
            .min_by(|a, b| {
                (a.readings_per_s - mid)
                    .abs()
                    .total_cmp(&(b.readings_per_s - mid).abs())
            })
            .map(|s| {
                let mut t = fmt_cores(&s.cores);
                if !s.complete {
                    t.push_str(&format!(" ({})", s.note));
                }
                if !s.remark.is_empty() {
                    t.push_str(&format!("; {}", s.remark));
                }
                t
            })
            .unwrap_or_default();
        println!(
            "| {case} | {} [{} – {}] | {ratio} | {cpu} | {rss} | {typical} |",
            thousands(mid),
            thousands(lo),
            thousands(hi)
        );
    }
    if !latencies.is_empty() {
        let p50 = median_spread(&latencies.iter().map(|l| l.p50_ms).collect::<Vec<_>>());
        let p99 = median_spread(&latencies.iter().map(|l| l.p99_ms).collect::<Vec<_>>());
        let rate = median_spread(&latencies.iter().map(|l| l.rate).collect::<Vec<_>>()).0;
        println!();
        println!(
            "Latency, receipt of a batch's first message → its commit, at half the sustained rate (~{} readings/s): p50 {:.0} ms [{:.0} – {:.0}], p99 {:.0} ms [{:.0} – {:.0}]",
            thousands(rate),
            p50.0,
            p50.1,
            p50.2,
            p99.0,
            p99.1,
            p99.2
        );
    }
    if !catchups.is_empty() {
        println!();
        for (rep, line) in catchups {
            println!("Catch-up, run {rep}: {line}");
        }
    }
    println!();
    for per_message in ["1/msg", "10/msg"] {
        let Some(d) = median(&format!("enalysis-ingest, {per_message}")) else {
            continue;
        };
        for peer in ["python bridge", "node-red"] {
            if let Some(m) = median(&format!("{peer}, {per_message}")) {
                println!(
                    "enalysis-ingest, {per_message}: {:.1}× {peer}",
                    d / m.max(f64::MIN_POSITIVE)
                );
            }
        }
    }
}
