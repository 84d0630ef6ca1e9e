//! The completeness benchmark (`cargo bench --bench completeness`, issue #14): what start-up
//! seeding of `entity_last_readings` and the completeness routes cost on a database of a real
//! size. A driver that prints figures, not a statistics harness; nothing here asserts a time.
//!
//! One PostgreSQL (this harness's: `fsync=off` while loading, which does not change what a read
//! costs) with the real schema, monthly partitions from 400 days back to 3 months ahead (as the
//! daemon makes them), then:
//!
//! - seeding: 10,000 meters (15-min), 10 million `energy` readings (1,000 per meter, hourly:
//!   two partitions), `VACUUM ANALYZE`. Timed: `silence::seed` with no row in
//!   `entity_last_readings` (the first start after the migration), then again with every row
//!   there (every later start); beside them the full scan seeding avoids (`max(ts)` per entity
//!   over `measurements`), and the silence list and count over 10,000 meters.
//! - completeness: one site of 100 meters (1-min) with November 2026 complete but for one hour
//!   a meter (43,200 readings each, 4.32 million rows), `VACUUM ANALYZE`. Timed over HTTP
//!   (the admin router in-process): the site's month, one meter's month; then `EXPLAIN
//!   (ANALYZE, BUFFERS)` of the site query, and the same index range scan with only `count(*)`
//!   and with `count(DISTINCT date_bin(…))`, which split the time between reading the index,
//!   cutting slots and counting distinct ones.
//!
//! Settings (environment): `BENCH_REPEATS` (5 timings each, median and min reported),
//! `BENCH_SEED_METERS` (10000), `BENCH_SEED_READINGS` (1000 per meter), `BENCH_SITE_METERS`
//! (100).

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use enalysis_ingest::admin::{self, AdminState};
use enalysis_ingest::config::Config;
use enalysis_ingest::db::Db;
use uuid::Uuid;

use common::PgServer;

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Figures go to stdout as they come, so a later failure does not lose them.
fn say(line: String) {
    println!("{line}");
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Median and minimum of `n` runs of `f`.
async fn timed<F, Fut, T>(n: u64, mut f: F) -> Result<(Duration, Duration, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..n.max(1) {
        let started = Instant::now();
        last = Some(f().await?);
        times.push(started.elapsed());
    }
    times.sort();
    let out = last.context("no run")?;
    Ok((times[times.len() / 2], times[0], out))
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn get(port: u16, path: &str) -> Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer bench\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = String::new();
    s.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").context("no body")?;
    anyhow::ensure!(head.contains(" 200 "), "{path}: {head}\n{body}");
    Ok(serde_json::from_str(body)?)
}

fn main() -> Result<()> {
    // `cargo test --all-targets` runs benches without `--bench`: say how to run it, nothing more.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("the completeness benchmark: run it with cargo bench --bench completeness");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<()> {
    let repeats = env_or("BENCH_REPEATS", 5);
    let seed_meters = env_or("BENCH_SEED_METERS", 10_000) as i64;
    let seed_readings = env_or("BENCH_SEED_READINGS", 1_000) as i64;
    let site_meters = env_or("BENCH_SITE_METERS", 100) as i64;
    let pg = PgServer::dedicated_with(&[
        ("shared_buffers", "1GB"),
        ("max_wal_size", "8GB"),
        ("work_mem", "16MB"),
    ]);
    let url = pg.url("postgres");
    let mut client = connect(&url).await?;
    enalysis_ingest::migrate::run(&mut client).await?;
    client
        .batch_execute(
            "SELECT ensure_measurement_partitions(now() - interval '400 days',
                                                 now() + interval '3 months')",
        )
        .await?;
    let cfg = Config::load_from(None, [("DATABASE_URL".to_string(), url.clone())])?;
    let db = Db::new(&cfg.database)?;
    say("enalysis-ingest completeness benchmark".to_string());
    say(format!(
        "PostgreSQL 15 (this harness's cluster), {} cores; medians (min) of {repeats} runs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));

    // ---- seeding ---------------------------------------------------------------------------
    eprintln!("loading {seed_meters} meters × {seed_readings} readings …");
    let loading = Instant::now();
    client
        .batch_execute(&format!(
            "INSERT INTO portfolios (name) VALUES ('Bench');
             INSERT INTO sites (portfolio_id, name)
                 SELECT p.id, 'Site ' || i FROM portfolios p, generate_series(1, 100) i;
             INSERT INTO meters (site_id, name, external_id, category)
                 SELECT s.id, 'M' || i, 'm-' || i, 'CONS'
                 FROM generate_series(1, {seed_meters}) i
                 JOIN (SELECT id, row_number() OVER (ORDER BY name) - 1 AS n FROM sites) s
                   ON s.n = i % 100;
             INSERT INTO measurements (entity_type, entity_id, metric, ts, value, unit, received_at)
                 SELECT 'meter', m.id, 'energy', t, 1, 'kWh', t + interval '2 seconds'
                 FROM meters m,
                      generate_series(date_trunc('hour', now()) - interval '1 hour' * ({seed_readings} - 1),
                                      date_trunc('hour', now()), interval '1 hour') t;"
        ))
        .await?;
    // Outside the load's implicit transaction (VACUUM refuses to run in one).
    client.batch_execute("VACUUM ANALYZE measurements").await?;
    client
        .batch_execute("ANALYZE meters; ANALYZE sites; ANALYZE portfolios")
        .await?;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM measurements", &[])
        .await?
        .get(0);
    eprintln!(
        "loaded {rows} rows in {:.0} s",
        loading.elapsed().as_secs_f64()
    );
    say(String::new());
    say(format!(
        "seeding entity_last_readings: {seed_meters} meters, {rows} readings"
    ));
    let (first_med, first_min, seeded) = timed(repeats, || async {
        client
            .batch_execute("TRUNCATE entity_last_readings")
            .await?;
        Ok(enalysis_ingest::silence::seed(&db).await?)
    })
    .await?;
    say(format!(
        "  first start (no row yet, {} entities seeded, {} partitions with rows) {} ({})",
        seeded.entities,
        seeded.partitions,
        ms(first_med),
        ms(first_min)
    ));
    let (again_med, again_min, again) = timed(repeats, || async {
        Ok(enalysis_ingest::silence::seed(&db).await?)
    })
    .await?;
    say(format!(
        "  every later start (all rows there, {} seeded)       {} ({})",
        again.entities,
        ms(again_med),
        ms(again_min)
    ));
    let (scan_med, scan_min, _) = timed(repeats.min(3), || async {
        Ok(client
            .query(
                "SELECT entity_type, entity_id, max(ts), max(received_at)
                 FROM measurements GROUP BY 1, 2",
                &[],
            )
            .await?
            .len())
    })
    .await?;
    say(format!(
        "  for comparison, a full scan (max(ts) GROUP BY entity) {} ({})",
        ms(scan_med),
        ms(scan_min)
    ));
    let (list_med, list_min, listed) = timed(repeats, || async {
        let c = db.get().await?;
        Ok(enalysis_ingest::silence::list(&c, 3.0, None).await?.len())
    })
    .await?;
    say(format!(
        "  GET /api/v1/silent's query ({listed} silent)             {} ({})",
        ms(list_med),
        ms(list_min)
    ));
    let (count_med, count_min, _) = timed(repeats, || async {
        let c = db.get().await?;
        Ok(enalysis_ingest::silence::count(&c, 3.0).await?)
    })
    .await?;
    say(format!(
        "  the gauge's count                                 {} ({})",
        ms(count_med),
        ms(count_min)
    ));
    // Leave the benchmark's own data behind for the next part.
    client
        .batch_execute("TRUNCATE measurements; TRUNCATE entity_last_readings")
        .await?;

    // ---- completeness ----------------------------------------------------------------------
    eprintln!("loading {site_meters} 1-min meters × November 2026 …");
    let loading = Instant::now();
    let site: Uuid = client
        .query_one(
            "INSERT INTO sites (portfolio_id, name, timezone)
             SELECT id, 'Completeness', 'Europe/Brussels' FROM portfolios RETURNING id",
            &[],
        )
        .await?
        .get(0);
    client
        .execute(
            &format!(
                "INSERT INTO meters (site_id, name, category, reading_frequency)
                 SELECT $1, 'C' || lpad(i::text, 3, '0'), 'CONS', '1min'
                 FROM generate_series(1, {site_meters}) i"
            ),
            &[&site],
        )
        .await?;
    client
        .batch_execute(
            "INSERT INTO measurements (entity_type, entity_id, metric, ts, value, unit)
             SELECT 'meter', m.id, 'energy', t, 1, 'kWh'
             FROM (SELECT id, row_number() OVER (ORDER BY name) AS n FROM meters
                   WHERE reading_frequency = '1min') m,
                  generate_series(timestamptz '2026-11-01 00:00:00+00',
                                  timestamptz '2026-11-30 23:59:00+00', interval '1 minute') t
             -- Every meter misses one hour, a different one.
             WHERE NOT (t >= timestamptz '2026-11-02 00:00:00+00' + interval '1 hour' * m.n
                        AND t < timestamptz '2026-11-02 01:00:00+00' + interval '1 hour' * m.n);",
        )
        .await?;
    client.batch_execute("VACUUM ANALYZE measurements").await?;
    client.batch_execute("ANALYZE meters").await?;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM measurements", &[])
        .await?
        .get(0);
    eprintln!(
        "loaded {rows} rows in {:.0} s",
        loading.elapsed().as_secs_f64()
    );
    let one: Uuid = client
        .query_one(
            "SELECT id FROM meters WHERE site_id = $1 ORDER BY name LIMIT 1",
            &[&site],
        )
        .await?
        .get(0);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = admin::router(
        AdminState {
            db: db.clone(),
            silence_factor: 3.0,
        },
        "bench".into(),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let window = "from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z";
    say(String::new());
    say(format!(
        "completeness, November 2026: {site_meters} meters of 1-min data, {rows} readings"
    ));
    let site_path = format!("/api/v1/sites/{site}/completeness?{window}");
    let (site_med, site_min, v) = timed(repeats, || get(port, &site_path)).await?;
    say(format!(
        "  GET /api/v1/sites/{{id}}/completeness (month)        {} ({})  expected {} present {}",
        ms(site_med),
        ms(site_min),
        v["expected"],
        v["present"]
    ));
    let meter_path = format!("/api/v1/meters/{one}/completeness?{window}");
    let (meter_med, meter_min, v) = timed(repeats, || get(port, &meter_path)).await?;
    say(format!(
        "  GET /api/v1/meters/{{id}}/completeness (month)       {} ({})  gaps {}",
        ms(meter_med),
        ms(meter_min),
        v["gaps"]
    ));
    let scan = |select: &'static str| {
        let client = &client;
        async move {
            let sql = format!(
                "SELECT sum(n)::bigint FROM meters m CROSS JOIN LATERAL (
                     SELECT {select} AS n FROM measurements r
                     WHERE r.entity_type = 'meter' AND r.entity_id = m.id AND r.metric = 'energy'
                       AND r.ts >= '2026-11-01T00:00:00Z' AND r.ts < '2026-12-01T00:00:00Z') x
                 WHERE m.site_id = $1"
            );
            timed(repeats, || async {
                Ok(client.query_one(&sql, &[&site]).await?.get::<_, i64>(0))
            })
            .await
        }
    };
    let (c_med, c_min, _) = scan("count(*)").await?;
    say(format!(
        "  the same index range scans, count(*) only          {} ({})",
        ms(c_med),
        ms(c_min)
    ));
    let (d_med, d_min, _) = scan(
        "count(DISTINCT date_bin(interval '1 minute', r.ts, timestamptz '1970-01-01 00:00:00+00'))",
    )
    .await?;
    say(format!(
        "  … with count(DISTINCT date_bin(1 min, ts))         {} ({})",
        ms(d_med),
        ms(d_min)
    ));
    let site_plan = client
        .query(
            &format!(
                "EXPLAIN (ANALYZE, BUFFERS) {}",
                enalysis_ingest::admin::read::SITE_COMPLETENESS_SQL
            ),
            &[
                &site,
                &"energy",
                &chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")?
                    .with_timezone(&chrono::Utc),
                &chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")?
                    .with_timezone(&chrono::Utc),
            ],
        )
        .await?;
    server.abort();

    println!("\nsite completeness plan:");
    // Without the partitions never executed and the long conditions: the shape and the times.
    for r in site_plan {
        let line: String = r.get(0);
        let t = line.trim_start();
        if line.contains("never executed")
            || t.starts_with("Filter:")
            || t.starts_with("Index Cond:")
        {
            continue;
        }
        println!("  {}", line.chars().take(160).collect::<String>());
    }
    Ok(())
}
