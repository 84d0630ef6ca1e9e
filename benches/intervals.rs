//! The interval-energy benchmark (`scripts/bench-intervals`, or `cargo bench --bench intervals`):
//! where should `GET …/intervals` (CONTRACT §7) do its arithmetic — in Rust over one ordered
//! index scan (what the daemon does), or in SQL window functions?
//!
//! One PostgreSQL starts on loopback (the test harness's cluster: `fsync=off`; these are reads)
//! with the real schema and monthly partitions, and two data sets are loaded with binary COPY:
//!
//! - one 15min meter, a year of readings (35,040), asked for `15m` intervals over the year;
//! - a site of 50 1min meters, a month of readings each (2,160,000), asked for its `15m` load
//!   profile over the month (and `1d`).
//!
//! Each case runs `BENCH_REPEATS` times (default 5; the first run of each also warms the cache)
//! and reports the median and the range:
//!
//! - `rust (HTTP)`: the daemon's handler, served in-process, timed from request to the last
//!   byte of the JSON answer;
//! - `fetch only`: the same rows streamed to the client in the same ordered scans, nothing
//!   computed — what any client-side approach pays;
//! - `sql (window functions)`: one statement computing the interval energies in PostgreSQL
//!   (lag for the steps, a running sum for the accumulated register, carry-forward and
//!   carry-backward windows for the boundaries), rows fetched. It computes *less* than the
//!   handler: energy only, no quality, no readings count, and the glitch rule against the
//!   previous raw value instead of the value it was read as (that carry needs a recursive
//!   query). So it is a lower bound of what SQL costs. Its energies are checked against the
//!   handler's.

// The harness's PostgreSQL only: its broker and Prometheus go unused here.
#[allow(unused_imports)]
#[path = "../tests/it/common/mod.rs"]
mod common;

use std::pin::pin;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, TimeDelta, Utc};
use enalysis_ingest::admin::{self, AdminState};
use enalysis_ingest::config::Config;
use enalysis_ingest::db::Db;
use enalysis_ingest::model::{EntityKind, Quality};
use futures_util::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use common::PgServer;

const TOKEN: &str = "bench-token-0123456789";
const SITE_METERS: usize = 50;

fn main() -> Result<()> {
    // `cargo test --all-targets` runs this without `--bench`: say how to run it, do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("the interval-energy benchmark: cargo bench --bench intervals");
        return Ok(());
    }
    let repeats = match std::env::var("BENCH_REPEATS") {
        Ok(v) => v.parse().context("BENCH_REPEATS")?,
        Err(_) => 5,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(repeats))
}

fn at(s: &str) -> Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(s)?.with_timezone(&Utc))
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Readings every `step` from `from` (to `to`, exclusive) for each meter, rising by a daily
/// curve, by binary COPY.
async fn load(
    client: &mut tokio_postgres::Client,
    meters: &[Uuid],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step: TimeDelta,
) -> Result<u64> {
    let tx = client.transaction().await?;
    let types = tx
        .prepare("SELECT entity_type, entity_id, metric, ts, value, unit, quality FROM measurements LIMIT 0")
        .await?
        .columns()
        .iter()
        .map(|c| c.type_().clone())
        .collect::<Vec<Type>>();
    let sink = tx
        .copy_in("COPY measurements (entity_type, entity_id, metric, ts, value, unit, quality) FROM STDIN BINARY")
        .await?;
    let mut w = pin!(BinaryCopyInWriter::new(sink, &types));
    let mut n = 0u64;
    let hours = step.num_seconds() as f64 / 3600.0;
    for (i, id) in meters.iter().enumerate() {
        let mut ts = from;
        let mut value = 1000.0 * (i + 1) as f64;
        while ts < to {
            let hour = (ts.timestamp() % 86_400) as f64 / 3600.0;
            value += (40.0 + 30.0 * (std::f64::consts::TAU * hour / 24.0).sin()) * hours;
            let row: [&(dyn ToSql + Sync); 7] = [
                &EntityKind::Meter,
                id,
                &"energy",
                &ts,
                &value,
                &"kWh",
                &Quality::Good,
            ];
            w.as_mut().write(&row).await?;
            n += 1;
            ts += step;
        }
    }
    w.finish().await?;
    tx.commit().await?;
    Ok(n)
}

/// GET over HTTP/1.0 with the token; the body, which must come with a 200.
async fn get(port: u16, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let (head, body) = out.split_once("\r\n\r\n").context("no response")?;
    ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}: {body}"
    );
    Ok(body.to_string())
}

/// The interval energies of `meters` in one SQL statement (see the module's comment): per
/// interval start, the energy summed over the meters and how many contributed.
const SQL: &str = "
WITH mt AS (
  SELECT u.id,
    coalesce((SELECT max(ts) FROM measurements WHERE entity_type = 'meter' AND entity_id = u.id
              AND metric = 'energy' AND ts <= $2), $2) AS lo,
    coalesce((SELECT min(ts) FROM measurements WHERE entity_type = 'meter' AND entity_id = u.id
              AND metric = 'energy' AND ts >= $3), $3) AS hi
  FROM unnest($1::uuid[]) AS u(id)
),
r AS (
  SELECT mt.id, x.ts, x.value, lag(x.value) OVER (PARTITION BY mt.id ORDER BY x.ts) AS a
  FROM mt CROSS JOIN LATERAL (
    SELECT ts, value FROM measurements
    WHERE entity_type = 'meter' AND entity_id = mt.id AND metric = 'energy'
      AND ts >= mt.lo AND ts <= mt.hi) x
),
c AS (
  SELECT id, ts, sum(CASE WHEN a IS NULL THEN 0 WHEN value >= a THEN value - a
                          WHEN a - value < 0.01 * a THEN 0 ELSE value END)
                 OVER (PARTITION BY id ORDER BY ts) AS c
  FROM r
),
m AS (
  SELECT id, ts AS t, 0 AS kind, c FROM c
  UNION ALL
  SELECT mt.id, g, 1, NULL FROM mt CROSS JOIN generate_series($2::timestamptz, $3::timestamptz, $4::text::interval) g
),
w AS (
  SELECT id, t, kind,
    max(t) FILTER (WHERE kind = 0) OVER (PARTITION BY id ORDER BY t, kind ROWS UNBOUNDED PRECEDING) AS pt,
    max(c) OVER (PARTITION BY id ORDER BY t, kind ROWS UNBOUNDED PRECEDING) AS pc,
    min(t) FILTER (WHERE kind = 0) OVER (PARTITION BY id ORDER BY t DESC, kind DESC ROWS UNBOUNDED PRECEDING) AS nt,
    min(c) OVER (PARTITION BY id ORDER BY t DESC, kind DESC ROWS UNBOUNDED PRECEDING) AS nc
  FROM m
),
bc AS (
  SELECT id, t, CASE WHEN t = pt THEN pc WHEN pt IS NULL OR nt IS NULL THEN NULL
    ELSE pc + (nc - pc) * extract(epoch FROM t - pt)::float8 / extract(epoch FROM nt - pt)::float8 END AS cv
  FROM w WHERE kind = 1
),
e AS (
  SELECT t, lead(t) OVER q AS t_end, lead(cv) OVER q - cv AS energy
  FROM bc WINDOW q AS (PARTITION BY id ORDER BY t)
)
SELECT t, sum(energy), count(*) FROM e
WHERE t_end IS NOT NULL AND energy IS NOT NULL GROUP BY t ORDER BY t";

struct Case {
    name: String,
    readings: u64,
    times: Vec<Duration>,
}

impl Case {
    fn row(&self) -> String {
        let mut t = self.times.clone();
        t.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let median = t[t.len() / 2];
        format!(
            "| {} | {} | {:.0} [{:.0} – {:.0}] | {:.0} |",
            self.name,
            self.readings,
            ms(median),
            ms(t[0]),
            ms(t[t.len() - 1]),
            self.readings as f64 / median.as_secs_f64()
        )
    }
}

async fn time<F, Fut, T>(repeats: usize, mut f: F) -> Result<(Vec<Duration>, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeats {
        let started = Instant::now();
        let v = f().await?;
        times.push(started.elapsed());
        last = Some(v);
    }
    Ok((times, last.context("no repeat")?))
}

/// Streams what the handler reads (probe, ordered scan, probe) for each meter; the row count.
async fn fetch_only(
    client: &tokio_postgres::Client,
    meters: &[Uuid],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<u64> {
    let mut n = 0;
    for id in meters {
        let cols = "SELECT ts, value, quality FROM measurements
                    WHERE entity_type = 'meter' AND entity_id = $1 AND metric = 'energy'";
        n += client
            .query(
                &format!("{cols} AND ts <= $2 ORDER BY ts DESC LIMIT 1"),
                &[id, &from],
            )
            .await?
            .len() as u64;
        let params: [&(dyn ToSql + Sync); 3] = [id, &from, &to];
        let rows = client
            .query_raw(
                &format!("{cols} AND ts > $2 AND ts < $3 ORDER BY ts"),
                params.iter().map(|p| *p as &dyn ToSql),
            )
            .await?;
        let mut rows = pin!(rows);
        while let Some(row) = rows.try_next().await? {
            let _: (DateTime<Utc>, f64, Quality) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            n += 1;
        }
        n += client
            .query(
                &format!("{cols} AND ts >= $2 ORDER BY ts LIMIT 1"),
                &[id, &to],
            )
            .await?
            .len() as u64;
    }
    Ok(n)
}

/// (start, energy summed over meters, meters) from the SQL statement.
async fn sql(
    client: &tokio_postgres::Client,
    meters: &[Uuid],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, f64, i64)>> {
    let step = "15 minutes";
    let rows = client.query(SQL, &[&meters, &from, &to, &step]).await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// (start, energy) of an answer of the API: a meter's `energy`, or a site's categories summed.
fn energies(body: &str) -> Result<Vec<(String, f64)>> {
    let v: serde_json::Value = serde_json::from_str(body)?;
    let items = v["intervals"].as_array().context("intervals")?;
    items
        .iter()
        .map(|i| {
            let e = &i["energy"];
            let energy = match e.as_f64() {
                Some(x) => x,
                None => ["CONS", "PROD", "INJ"]
                    .iter()
                    .filter_map(|c| e[c].as_f64())
                    .sum(),
            };
            Ok((i["start"].as_str().context("start")?.to_string(), energy))
        })
        .collect()
}

/// The largest difference between the handler's energies and SQL's, interval by interval.
fn max_difference(api: &[(String, f64)], sql: &[(DateTime<Utc>, f64, i64)]) -> Result<f64> {
    if api.len() != sql.len() {
        bail!(
            "{} intervals from the API, {} from SQL",
            api.len(),
            sql.len()
        );
    }
    let mut worst: f64 = 0.0;
    for ((start, e), (t, s, _)) in api.iter().zip(sql) {
        ensure!(
            at(start)? == *t,
            "interval {start} from the API, {t} from SQL"
        );
        worst = worst.max((e - s).abs());
    }
    Ok(worst)
}

async fn run(repeats: usize) -> Result<()> {
    eprintln!("starting PostgreSQL …");
    let pg = PgServer::dedicated();
    let url = pg.url("postgres");
    let mut client = connect(&url).await?;
    enalysis_ingest::migrate::run(&mut client).await?;
    client
        .execute(
            "SELECT ensure_measurement_partitions('2025-01-01', '2026-07-31')",
            &[],
        )
        .await?;
    let site: Uuid = client
        .query_one(
            "WITH p AS (INSERT INTO portfolios (name) VALUES ('bench') RETURNING id)
             INSERT INTO sites (portfolio_id, name, timezone) SELECT id, 'bench', 'Europe/Brussels' FROM p
             RETURNING id",
            &[],
        )
        .await?
        .get(0);
    let year_meter: Uuid = client
        .query_one(
            "INSERT INTO meters (site_id, name, category, reading_frequency)
             VALUES ($1, 'year', 'CONS', '15min') RETURNING id",
            &[&site],
        )
        .await?
        .get(0);
    // The site's load profile covers its CONS, PROD and INJ meters: the year meter is moved to a
    // site of its own.
    let other: Uuid = client
        .query_one(
            "INSERT INTO sites (portfolio_id, name) SELECT portfolio_id, 'year' FROM sites WHERE id = $1 RETURNING id",
            &[&site],
        )
        .await?
        .get(0);
    client
        .execute(
            "UPDATE meters SET site_id = $1 WHERE id = $2",
            &[&other, &year_meter],
        )
        .await?;
    let mut site_meters = Vec::new();
    for i in 0..SITE_METERS {
        let category = ["CONS", "PROD", "INJ"][i % 3];
        let id: Uuid = client
            .query_one(
                "INSERT INTO meters (site_id, name, category, reading_frequency)
                 VALUES ($1, $2, $3::text::meter_category_enum, '1min') RETURNING id",
                &[&site, &format!("m{i}"), &category],
            )
            .await?
            .get(0);
        site_meters.push(id);
    }
    site_meters.sort();
    let (y0, y1) = (at("2025-01-01T00:00:00Z")?, at("2026-01-01T00:00:00Z")?);
    let (m0, m1) = (at("2026-06-01T00:00:00Z")?, at("2026-07-01T00:00:00Z")?);
    let started = Instant::now();
    // Readings 53 s before the quarter hours, so every boundary is interpolated; one past
    // each window, so that its last interval is present.
    let off = TimeDelta::seconds(53);
    let (q, m) = (TimeDelta::minutes(15), TimeDelta::minutes(1));
    let year = load(&mut client, &[year_meter], y0 - off, y1 + q + q - off, q).await?;
    let month = load(&mut client, &site_meters, m0 - off, m1 + m + m - off, m).await?;
    client.batch_execute("VACUUM ANALYZE measurements").await?;
    eprintln!(
        "loaded {year} + {month} readings in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let cfg = Config::load_from(None, [("DATABASE_URL".to_string(), url.clone())])?;
    let state = AdminState {
        db: Db::new(&cfg.database)?,
        silence_factor: cfg.completeness.silence_factor,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = admin::router(state, TOKEN.to_string());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let meter_path = format!(
        "/api/v1/meters/{year_meter}/intervals?from={}&to={}&period=15m",
        fmt(y0),
        fmt(y1)
    );
    let site_path = |period: &str| {
        format!(
            "/api/v1/sites/{site}/intervals?from={}&to={}&period={period}",
            fmt(m0),
            fmt(m1)
        )
    };
    let mut cases = Vec::new();
    let mut notes = Vec::new();
    for (what, meters, from, to, path) in [
        (
            "one meter, a year of 15min readings, 15m",
            vec![year_meter],
            y0,
            y1,
            meter_path.clone(),
        ),
        (
            "50-meter site, a month of 1min readings, 15m",
            site_meters.clone(),
            m0,
            m1,
            site_path("15m"),
        ),
    ] {
        // Warm the cache once, outside the timings.
        get(port, &path).await?;
        let (times, body) = time(repeats, || get(port, &path)).await?;
        let api = energies(&body)?;
        let (fetch_times, rows) = time(repeats, || fetch_only(&client, &meters, from, to)).await?;
        let (sql_times, by_sql) = time(repeats, || sql(&client, &meters, from, to)).await?;
        let diff = max_difference(&api, &by_sql)?;
        notes.push(format!(
            "{what}: {} intervals; rust and SQL energies agree within {diff:.2e} kWh; answer {} KiB",
            api.len(),
            body.len() / 1024
        ));
        for (how, times) in [
            ("rust (HTTP, the handler)", times),
            ("fetch only (the same scans, nothing computed)", fetch_times),
            ("sql (window functions)", sql_times),
        ] {
            cases.push(Case {
                name: format!("{what}: {how}"),
                readings: rows,
                times,
            });
        }
    }
    let path = site_path("1d");
    let (times, body) = time(repeats, || get(port, &path)).await?;
    cases.push(Case {
        name: "50-meter site, a month of 1min readings, 1d: rust (HTTP, the handler)".into(),
        readings: month,
        times,
    });
    notes.push(format!("1d: {} intervals", energies(&body)?.len()));

    let mut out = format!(
        "interval energy benchmark ({repeats} runs each; median [min – max])\n\n\
         | case | readings read | ms | readings/s |\n| --- | ---: | ---: | ---: |\n"
    );
    for c in &cases {
        out += &c.row();
        out.push('\n');
    }
    out.push('\n');
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    notes.push(format!(
        "load average at the end (1, 5, 15 min): {}",
        load.join(" ")
    ));
    for n in &notes {
        out += &format!("- {n}\n");
    }
    println!("{out}");
    std::fs::create_dir_all("target/bench")?;
    std::fs::write("target/bench/intervals.md", &out)?;
    drop(pg);
    Ok(())
}
