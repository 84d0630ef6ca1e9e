//! Completeness and silence (CONTRACT.md §7, issue #14), end to end: readings published to a real
//! mosquitto, ingested by the daemon into a real PostgreSQL, read back through
//! `GET /api/v1/meters/{id}/completeness`, `GET /api/v1/sites/{id}/completeness`,
//! `GET /api/v1/silent` and `ingest_entities_silent`. The daylight-saving days are inserted with
//! SQL (fixed dates in 2026 would turn `stale_timestamp` as the calendar moves on); everything
//! else goes through the broker, at times relative to now.

use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common;
use crate::support::{
    self, Daemon, Publisher, Setup, daemon_env, set_env, wait_count, with_http_port,
};

const TOKEN: &str = "completeness-token";

/// A daemon with the API on a known port over the inventory of `support::setup`.
struct Env {
    s: Setup,
    daemon: Daemon,
    port: u16,
    env: Vec<(String, String)>,
}

async fn start(extra: &[(&str, &str)]) -> Env {
    let s = support::setup().await;
    let mut env = daemon_env(&s.db, &s.broker.url());
    let port = with_http_port(&mut env);
    set_env(&mut env, "ENALYSIS_ADMIN_TOKEN", TOKEN);
    for (k, v) in extra {
        set_env(&mut env, k, *v);
    }
    let daemon = Daemon::start(&env).await;
    Env {
        s,
        daemon,
        port,
        env,
    }
}

async fn get(port: u16, path: &str) -> (u16, Value) {
    let (status, body) = support::http(port, "GET", path, Some(TOKEN), None).await;
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, v)
}

async fn get_ok(port: u16, path: &str) -> Value {
    let (status, v) = get(port, path).await;
    assert_eq!(status, 200, "{path}: {v}");
    v
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test time")
        .with_timezone(&Utc)
}

fn enc(t: DateTime<Utc>) -> String {
    url::form_urlencoded::byte_serialize(rfc(t).as_bytes()).collect()
}

fn completeness_path(kind: &str, id: Uuid, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    format!(
        "/api/v1/{kind}/{id}/completeness?from={}&to={}",
        enc(from),
        enc(to)
    )
}

/// Publishes one `energy` reading per time (milliseconds since the epoch, so `.999` is exact)
/// and waits until all of them are stored.
async fn publish(e: &Env, kind: &str, id: Uuid, times: &[DateTime<Utc>]) {
    let p = Publisher::connect(&e.s.broker.url()).await;
    let topic = format!("enalysis/v1/{kind}/{id}/readings");
    let before: i64 =
        e.s.client
            .query_one("SELECT count(*) FROM measurements", &[])
            .await
            .expect("count")
            .get(0);
    for (i, t) in times.iter().enumerate() {
        let reading =
            json!({"ts": t.timestamp_millis(), "metric": "energy", "value": 100.0 + i as f64});
        p.publish(&topic, reading.to_string()).await;
    }
    wait_count(
        &e.s.client,
        "SELECT count(*) FROM measurements",
        before + times.len() as i64,
    )
    .await;
}

/// `(from, to, missing)` of each gap.
fn gaps(v: &Value) -> Vec<(String, String, i64)> {
    v["gaps"]
        .as_array()
        .unwrap_or_else(|| panic!("gaps: {v}"))
        .iter()
        .map(|g| {
            (
                g["from"].as_str().unwrap_or_default().to_string(),
                g["to"].as_str().unwrap_or_default().to_string(),
                g["missing"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

fn gap(from: &str, to: &str, missing: i64) -> (String, String, i64) {
    (from.to_string(), to.to_string(), missing)
}

#[tokio::test]
async fn a_15_minute_meter_missing_three_consecutive_slots_has_one_gap_of_three() {
    let e = start(&[]).await;
    let meter = e.s.ids.meter;
    // Eight slots ending an hour ago; readings anywhere inside slots 0-2 and 6-7.
    let base = (Utc::now() - TimeDelta::hours(3))
        .duration_trunc(TimeDelta::minutes(15))
        .expect("trunc");
    let slot = |i: i64, secs: i64| base + TimeDelta::minutes(15 * i) + TimeDelta::seconds(secs);
    let times = [
        slot(0, 0),
        slot(1, 420),
        slot(2, 899),
        slot(6, 1),
        slot(7, 0),
    ];
    publish(&e, "meters", meter, &times).await;
    // A second reading in a slot counts once.
    publish(&e, "meters", meter, &[slot(7, 60)]).await;

    let from = base;
    let to = base + TimeDelta::hours(2);
    let v = get_ok(e.port, &completeness_path("meters", meter, from, to)).await;
    assert_eq!(v["meter_id"], meter.to_string(), "{v}");
    assert_eq!(v["metric"], "energy", "{v}");
    assert_eq!(v["reading_frequency"], "15min", "{v}");
    assert_eq!(v["from"], rfc(from), "{v}");
    assert_eq!(v["to"], rfc(to), "{v}");
    assert_eq!(v["expected"], 8, "{v}");
    assert_eq!(v["present"], 5, "{v}");
    assert_eq!(v["completeness"], 5.0 / 8.0, "{v}");
    assert_eq!(
        gaps(&v),
        vec![gap(&rfc(slot(3, 0)), &rfc(slot(6, 0)), 3)],
        "{v}"
    );
    // A window starting inside a slot leaves that slot out; one ending inside a slot keeps it.
    let v = get_ok(
        e.port,
        &completeness_path("meters", meter, slot(0, 1), slot(7, 1)),
    )
    .await;
    assert_eq!(
        (v["expected"].as_i64(), v["present"].as_i64()),
        (Some(7), Some(4)),
        "{v}"
    );
    // Another metric has nothing: one gap over the whole window.
    let path = format!(
        "{}&metric=power",
        completeness_path("meters", meter, from, to)
    );
    let v = get_ok(e.port, &path).await;
    assert_eq!(v["present"], 0, "{v}");
    assert_eq!(gaps(&v), vec![gap(&rfc(from), &rfc(to), 8)], "{v}");

    // The site: one entry per active meter (the STOR meter reported nothing; an inactive meter
    // is left out), and the totals.
    e.s.client
        .execute(
            "INSERT INTO meters (site_id, name, category, active) VALUES ($1, 'Old', 'CONS', false)",
            &[&e.s.ids.site],
        )
        .await
        .expect("inactive meter");
    let v = get_ok(e.port, &completeness_path("sites", e.s.ids.site, from, to)).await;
    let meters = v["meters"].as_array().expect("meters");
    assert_eq!(meters.len(), 2, "{v}");
    let main = meters
        .iter()
        .find(|m| m["meter_id"] == meter.to_string())
        .expect("the main meter");
    assert_eq!(main["name"], "Main", "{v}");
    assert!(
        main["external_id"]
            .as_str()
            .is_some_and(|x| x.starts_with("cons-")),
        "{v}"
    );
    assert_eq!(main["reading_frequency"], "15min", "{v}");
    assert_eq!(
        (main["expected"].as_i64(), main["present"].as_i64()),
        (Some(8), Some(5))
    );
    assert_eq!(main["completeness"], 5.0 / 8.0, "{v}");
    assert_eq!(
        (v["expected"].as_i64(), v["present"].as_i64()),
        (Some(16), Some(5)),
        "{v}"
    );
    assert_eq!(v["completeness"], 5.0 / 16.0, "{v}");

    // Bad parameters name themselves; unknown ids are 404.
    let t = enc(to);
    for (path, field) in [
        (
            format!("/api/v1/meters/{meter}/completeness?metric=vibes"),
            "metric",
        ),
        (
            format!("/api/v1/meters/{meter}/completeness?from={t}&to={t}"),
            "from",
        ),
        (format!("/api/v1/meters/{meter}/completeness?to=soon"), "to"),
        ("/api/v1/meters/nope/completeness".to_string(), "id"),
        (
            format!("/api/v1/sites/{}/completeness?from=x", e.s.ids.site),
            "from",
        ),
    ] {
        let (status, v) = get(e.port, &path).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["error"]["field"], field, "{path}: {v}");
    }
    for kind in ["meters", "sites"] {
        let (status, v) = get(
            e.port,
            &format!("/api/v1/{kind}/{}/completeness", Uuid::new_v4()),
        )
        .await;
        assert_eq!(status, 404, "{kind}: {v}");
    }
    // In the OpenAPI document, with their parameters.
    let doc = get_ok(e.port, "/api/v1/openapi.json").await;
    for p in [
        "/api/v1/meters/{id}/completeness",
        "/api/v1/sites/{id}/completeness",
        "/api/v1/silent",
    ] {
        assert!(
            doc["paths"][p]["get"].is_object(),
            "{p} not in the OpenAPI document"
        );
    }
    drop(e.daemon);
}

/// Inserts `energy` readings straight into `measurements` (fixed past dates; see the module).
async fn insert_readings(client: &tokio_postgres::Client, meter: Uuid, times: &[&str]) {
    for t in times {
        client
            .execute(
                "INSERT INTO measurements (entity_type, entity_id, metric, ts, value, unit)
                 VALUES ('meter', $1, 'energy', $2, 1, 'kWh')",
                &[&meter, &at(t)],
            )
            .await
            .expect("insert reading");
    }
}

#[tokio::test]
async fn a_daily_meter_in_brussels_has_a_25_hour_day_in_october_and_a_23_hour_day_in_march() {
    let e = start(&[]).await;
    let c = &e.s.client;
    c.execute(
        "UPDATE sites SET timezone = 'Europe/Brussels' WHERE id = $1",
        &[&e.s.ids.site],
    )
    .await
    .expect("timezone");
    c.execute(
        "UPDATE meters SET reading_frequency = 'daily' WHERE id = $1",
        &[&e.s.ids.meter],
    )
    .await
    .expect("daily");
    let meter = e.s.ids.meter;
    insert_readings(
        c,
        meter,
        &[
            // 24 Oct, at its local midnight (CEST).
            "2026-10-23T22:00:00Z",
            // 25 Oct (25 hours, clocks back at 03:00 CEST): in its last hour, 23:30 CET, which
            // a 24-hour day from 22:00Z would put in the 26th.
            "2026-10-25T22:30:00Z",
            // 26 Oct: nothing. 27 Oct: noon.
            "2026-10-27T12:00:00Z",
            // 29 Mar (23 hours, clocks forward at 02:00 CET): its last second, 23:59:59 CEST.
            "2026-03-29T21:59:59Z",
            // 30 Mar: its first instant, 00:00 CEST, which a 24-hour day from 23:00Z would
            // put in the 29th.
            "2026-03-29T22:00:00Z",
        ],
    )
    .await;
    // 24 to 27 October, local midnights.
    let v = get_ok(
        e.port,
        &completeness_path(
            "meters",
            meter,
            at("2026-10-24T00:00:00+02:00"),
            at("2026-10-28T00:00:00+01:00"),
        ),
    )
    .await;
    assert_eq!(v["reading_frequency"], "daily", "{v}");
    assert_eq!(
        (v["expected"].as_i64(), v["present"].as_i64()),
        (Some(4), Some(3)),
        "{v}"
    );
    assert_eq!(
        gaps(&v),
        vec![gap("2026-10-25T23:00:00Z", "2026-10-26T23:00:00Z", 1)],
        "{v}"
    );
    // 28 to 30 March.
    let v = get_ok(
        e.port,
        &completeness_path(
            "meters",
            meter,
            at("2026-03-28T00:00:00+01:00"),
            at("2026-03-31T00:00:00+02:00"),
        ),
    )
    .await;
    assert_eq!(
        (v["expected"].as_i64(), v["present"].as_i64()),
        (Some(3), Some(2)),
        "{v}"
    );
    assert_eq!(
        gaps(&v),
        vec![gap("2026-03-27T23:00:00Z", "2026-03-28T23:00:00Z", 1)],
        "{v}"
    );
    // A window from noon: the day it starts in is not one of its slots.
    let v = get_ok(
        e.port,
        &completeness_path(
            "meters",
            meter,
            at("2026-10-24T12:00:00Z"),
            at("2026-10-28T00:00:00+01:00"),
        ),
    )
    .await;
    assert_eq!(
        (v["expected"].as_i64(), v["present"].as_i64()),
        (Some(3), Some(2)),
        "{v}"
    );
    // A time zone PostgreSQL does not know, stored before migration 0008 refused such values
    // (its trigger off for the update): a 400 that says so.
    c.batch_execute(&format!(
        "ALTER TABLE sites DISABLE TRIGGER sites_timezone_known;
         UPDATE sites SET timezone = 'Mars/Olympus_Mons' WHERE id = '{}';
         ALTER TABLE sites ENABLE TRIGGER sites_timezone_known;",
        e.s.ids.site
    ))
    .await
    .expect("timezone");
    let (status, v) = get(
        e.port,
        &completeness_path(
            "meters",
            meter,
            at("2026-10-24T00:00:00Z"),
            at("2026-10-28T00:00:00Z"),
        ),
    )
    .await;
    assert_eq!(
        (status, v["error"]["field"].as_str()),
        (400, Some("timezone")),
        "{v}"
    );
    drop(e.daemon);
}

#[tokio::test]
async fn an_hourly_meter_counts_10_59_59_999_in_the_10_oclock_slot_and_11_00_in_the_next() {
    let e = start(&[]).await;
    e.s.client
        .execute(
            "UPDATE meters SET reading_frequency = 'hourly' WHERE id = $1",
            &[&e.s.ids.meter],
        )
        .await
        .expect("hourly");
    let h = (Utc::now() - TimeDelta::hours(3))
        .duration_trunc(TimeDelta::hours(1))
        .expect("trunc");
    // "10:00" is h + 1 h, "11:00" h + 2 h.
    let ten = h + TimeDelta::hours(1);
    let eleven = h + TimeDelta::hours(2);
    publish(
        &e,
        "meters",
        e.s.ids.meter,
        &[eleven - TimeDelta::milliseconds(1), eleven],
    )
    .await;
    let v = get_ok(
        e.port,
        &completeness_path("meters", e.s.ids.meter, h, h + TimeDelta::hours(3)),
    )
    .await;
    assert_eq!(
        (v["expected"].as_i64(), v["present"].as_i64()),
        (Some(3), Some(2)),
        "{v}"
    );
    assert_eq!(gaps(&v), vec![gap(&rfc(h), &rfc(ten), 1)], "{v}");
    // The 10 o'clock slot alone holds one of them, the 11 o'clock slot alone the other.
    for start in [ten, eleven] {
        let v = get_ok(
            e.port,
            &completeness_path("meters", e.s.ids.meter, start, start + TimeDelta::hours(1)),
        )
        .await;
        assert_eq!(
            (v["expected"].as_i64(), v["present"].as_i64()),
            (Some(1), Some(1)),
            "{v}"
        );
    }
    drop(e.daemon);
}

/// An intermittent meter: 10,001 gaps in the window. The answer lists the earliest 10,000 and
/// counts them all; `expected` and `present` stay exact.
#[tokio::test]
async fn a_meter_with_more_gaps_than_the_answer_lists_counts_them_all() {
    let e = start(&[]).await;
    e.s.client
        .execute(
            "UPDATE meters SET reading_frequency = '1min' WHERE id = $1",
            &[&e.s.ids.meter],
        )
        .await
        .expect("1min");
    let base = (Utc::now() - TimeDelta::days(15))
        .duration_trunc(TimeDelta::minutes(1))
        .expect("trunc");
    // A reading every other minute: minutes 0, 2, …, 20,000 present, 1, 3, …, 20,001 missing.
    e.s.client
        .execute(
            "INSERT INTO measurements (entity_type, entity_id, metric, ts, value, unit)
             SELECT 'meter', $1, 'energy', $2::timestamptz + (2 * g) * interval '1 minute', g, 'kWh'
             FROM generate_series(0, 10000) g",
            &[&e.s.ids.meter, &base],
        )
        .await
        .expect("readings");
    let v = get_ok(
        e.port,
        &completeness_path(
            "meters",
            e.s.ids.meter,
            base,
            base + TimeDelta::minutes(20_002),
        ),
    )
    .await;
    assert_eq!(
        (
            v["expected"].as_i64(),
            v["present"].as_i64(),
            v["gaps_total"].as_i64()
        ),
        (Some(20_002), Some(10_001), Some(10_001)),
        "{}",
        v["gaps_total"]
    );
    let listed = gaps(&v);
    assert_eq!(listed.len(), 10_000);
    let minute = |m: i64| rfc(base + TimeDelta::minutes(m));
    assert_eq!(listed[0], gap(&minute(1), &minute(2), 1));
    assert_eq!(listed[9_999], gap(&minute(19_999), &minute(20_000), 1));
    drop(e.daemon);
}

/// The silent entities of `/api/v1/silent` (optionally `?kind=`), by id.
async fn silent(port: u16, query: &str) -> Vec<Value> {
    let v = get_ok(port, &format!("/api/v1/silent{query}")).await;
    v["silent"].as_array().cloned().unwrap_or_default()
}

fn find(list: &[Value], id: Uuid) -> Option<&Value> {
    list.iter().find(|x| x["id"] == id.to_string())
}

/// The value of `ingest_entities_silent{kind="…"}` on the daemon's /metrics.
async fn gauge(port: u16, kind: &str) -> Option<f64> {
    let text = support::http_get(port, "/metrics").await;
    let prefix = format!("ingest_entities_silent{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn backdate(client: &tokio_postgres::Client, table: &str, id: Uuid, ago: &str) {
    client
        .execute(
            &format!("UPDATE {table} SET created_at = now() - $2::text::interval WHERE id = $1"),
            &[&id, &ago],
        )
        .await
        .expect("backdate");
}

#[tokio::test]
async fn a_meter_that_never_reported_is_silent_once_its_creation_is_old_enough() {
    let e = start(&[]).await;
    let c = &e.s.client;
    // 15 minutes × 3: silent 45 minutes after its creation.
    backdate(c, "meters", e.s.ids.meter, "2 hours").await;
    backdate(c, "meters", e.s.ids.stor_meter, "30 minutes").await;
    let list = silent(e.port, "?kind=meter").await;
    let m = find(&list, e.s.ids.meter).unwrap_or_else(|| panic!("not silent: {list:?}"));
    assert_eq!(m["kind"], "meter");
    assert_eq!(m["name"], "Main");
    assert_eq!(m["reading_frequency"], "15min");
    assert!(m["external_id"].is_string(), "{m}");
    assert!(
        m["last_ts"].is_null() && m["last_received_at"].is_null(),
        "{m}"
    );
    let secs = m["silent_for_secs"].as_i64().expect("silent_for_secs");
    assert!((7190..7300).contains(&secs), "counted from created_at: {m}");
    assert!(
        find(&list, e.s.ids.stor_meter).is_none(),
        "created 30 min ago: {list:?}"
    );
    assert!(list.iter().all(|x| x["kind"] == "meter"), "{list:?}");
    // Its completeness: nothing present, one gap over the window.
    let now = Utc::now()
        .duration_trunc(TimeDelta::minutes(15))
        .expect("trunc");
    let v = get_ok(
        e.port,
        &completeness_path("meters", e.s.ids.meter, now - TimeDelta::hours(1), now),
    )
    .await;
    assert_eq!(
        (v["expected"].as_i64(), v["present"].as_i64()),
        (Some(4), Some(0)),
        "{v}"
    );
    assert_eq!(v["completeness"], 0.0, "{v}");
    assert_eq!(gaps(&v).len(), 1, "{v}");
    // The gauge counts the same set.
    common::wait_until(
        Duration::from_secs(10),
        "the gauge to count the meter",
        || async { gauge(e.port, "meter").await == Some(1.0) },
    )
    .await;
    let (status, v) = get(e.port, "/api/v1/silent?kind=meters").await;
    assert_eq!(
        (status, v["error"]["field"].as_str()),
        (400, Some("kind")),
        "{v}"
    );
    drop(e.daemon);
}

#[tokio::test]
async fn a_meter_becomes_silent_within_10_s_of_its_deadline_and_leaves_the_list_within_10_s_of_a_reading()
 {
    // 1 minute × 0.2: the deadline is 12 s after the last receipt.
    let e = start(&[("ENALYSIS_COMPLETENESS__SILENCE_FACTOR", "0.2")]).await;
    let c = &e.s.client;
    c.execute(
        "UPDATE meters SET reading_frequency = '1min' WHERE id = $1",
        &[&e.s.ids.meter],
    )
    .await
    .expect("1min");
    let meter = e.s.ids.meter;
    publish(&e, "meters", meter, &[Utc::now() - TimeDelta::seconds(1)]).await;
    let received: DateTime<Utc> = c
        .query_one(
            "SELECT max(received_at) FROM measurements WHERE entity_id = $1",
            &[&meter],
        )
        .await
        .expect("received_at")
        .get(0);
    let deadline = received + TimeDelta::seconds(12);
    // Not silent before its deadline (the list is read from the database: exact)...
    let mut silent_at = None;
    let mut gauge_at = None;
    let give_up = Instant::now() + Duration::from_secs(40);
    while Instant::now() < give_up && (silent_at.is_none() || gauge_at.is_none()) {
        let now = Utc::now();
        let listed = find(&silent(e.port, "?kind=meter").await, meter).is_some();
        if listed && silent_at.is_none() {
            silent_at = Some(now);
        }
        if !listed {
            assert!(
                now < deadline + TimeDelta::seconds(10),
                "not silent 10 s after its deadline"
            );
        }
        if gauge(e.port, "meter").await == Some(1.0) && gauge_at.is_none() {
            gauge_at = Some(Utc::now());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let silent_at = silent_at.expect("the meter became silent");
    let gauge_at = gauge_at.expect("the gauge counted it");
    // A little slack for the two clocks (the daemon's receipt, the database's now()).
    assert!(
        silent_at > deadline - TimeDelta::milliseconds(500),
        "silent before its deadline"
    );
    assert!(
        gauge_at > deadline - TimeDelta::milliseconds(500),
        "counted before its deadline"
    );
    assert!(silent_at < deadline + TimeDelta::seconds(10));
    assert!(
        gauge_at < deadline + TimeDelta::seconds(10),
        "gauge late: {gauge_at} vs {deadline}"
    );
    let listed = find(&silent(e.port, "?kind=meter").await, meter)
        .cloned()
        .expect("listed");
    assert_eq!(
        listed["last_received_at"].as_str().map(at),
        Some(received),
        "{listed}"
    );

    // A reading: out of the list (and the gauge) within 10 s.
    let sent = Instant::now();
    publish(&e, "meters", meter, &[Utc::now()]).await;
    common::wait_until(
        Duration::from_secs(10),
        "the meter to leave the list",
        || async { find(&silent(e.port, "?kind=meter").await, meter).is_none() },
    )
    .await;
    let remaining = Duration::from_secs(10).saturating_sub(sent.elapsed());
    common::wait_until(remaining, "the gauge to drop to 0", || async {
        gauge(e.port, "meter").await == Some(0.0)
    })
    .await;
    drop(e.daemon);
}

#[tokio::test]
async fn an_asset_and_an_energy_source_follow_their_meters_frequency() {
    let e = start(&[]).await;
    let c = &e.s.client;
    // 50 minutes old: silent at 15 minutes × 3, not at an hour × 3.
    backdate(c, "assets", e.s.ids.asset, "50 minutes").await;
    backdate(c, "energy_sources", e.s.ids.source, "50 minutes").await;
    let list = silent(e.port, "").await;
    for id in [e.s.ids.asset, e.s.ids.source] {
        let x = find(&list, id).unwrap_or_else(|| panic!("{id} not silent: {list:?}"));
        assert_eq!(x["reading_frequency"], "15min", "{x}");
    }
    assert_eq!(
        find(&list, e.s.ids.asset).map(|x| x["kind"].clone()),
        Some(json!("asset"))
    );
    assert_eq!(
        silent(e.port, "?kind=energy_source")
            .await
            .iter()
            .filter(|x| x["id"] == e.s.ids.source.to_string())
            .count(),
        1
    );
    c.execute(
        "UPDATE meters SET reading_frequency = 'hourly' WHERE id = $1",
        &[&e.s.ids.meter],
    )
    .await
    .expect("hourly");
    let list = silent(e.port, "").await;
    assert!(find(&list, e.s.ids.asset).is_none(), "{list:?}");
    assert!(find(&list, e.s.ids.source).is_none(), "{list:?}");
    // Back at 15 minutes, the asset reports: it is no longer silent, the source still is.
    c.execute(
        "UPDATE meters SET reading_frequency = '15min' WHERE id = $1",
        &[&e.s.ids.meter],
    )
    .await
    .expect("15min");
    publish(&e, "assets", e.s.ids.asset, &[Utc::now()]).await;
    common::wait_until(
        Duration::from_secs(10),
        "the asset to leave the list",
        || async { find(&silent(e.port, "").await, e.s.ids.asset).is_none() },
    )
    .await;
    let list = silent(e.port, "").await;
    let x = find(&list, e.s.ids.source).expect("the source is still silent");
    assert!(x["last_ts"].is_null(), "{x}");
    drop(e.daemon);
}

#[tokio::test]
async fn inactive_entities_and_those_under_inactive_parents_are_never_silent_nor_accepted() {
    let e = start(&[]).await;
    let c = &e.s.client;
    for table in ["meters", "assets", "energy_sources"] {
        c.execute(
            &format!("UPDATE {table} SET created_at = now() - interval '1 day'"),
            &[],
        )
        .await
        .expect("backdate");
    }
    let everything = [
        e.s.ids.meter,
        e.s.ids.stor_meter,
        e.s.ids.asset,
        e.s.ids.source,
        e.s.ids.battery,
    ];
    let all_silent = |list: &[Value]| everything.iter().all(|id| find(list, *id).is_some());
    assert!(all_silent(&silent(e.port, "").await));

    // The asset alone, then its meter (everything under it), then the site, then the portfolio.
    let p = Publisher::connect(&e.s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", e.s.ids.meter);
    for (table, id, gone) in [
        ("assets", e.s.ids.asset, vec![e.s.ids.asset]),
        (
            "meters",
            e.s.ids.meter,
            vec![e.s.ids.meter, e.s.ids.asset, e.s.ids.source],
        ),
        ("sites", e.s.ids.site, everything.to_vec()),
        ("portfolios", e.s.ids.portfolio, everything.to_vec()),
    ] {
        let set = |active: bool| format!("UPDATE {table} SET active = {active} WHERE id = $1");
        c.execute(&set(false), &[&id]).await.expect("deactivate");
        let list = silent(e.port, "").await;
        for g in &gone {
            assert!(
                find(&list, *g).is_none(),
                "{table} off: {g} listed: {list:?}"
            );
        }
        assert_eq!(
            everything
                .iter()
                .filter(|x| find(&list, **x).is_some())
                .count(),
            everything.len() - gone.len(),
            "{table}: {list:?}"
        );
        if table != "assets" {
            // The registry hears of it (NOTIFY): the meter's readings are unknown_entity.
            publish_until(
                c,
                &p,
                &topic,
                UNKNOWN,
                &format!("{table} off: still accepted"),
            )
            .await;
        }
        c.execute(&set(true), &[&id]).await.expect("reactivate");
        // Active again: accepted again, within the registry's refresh.
        publish_until(c, &p, &topic, STORED, &format!("{table} on: still refused")).await;
    }
    drop(e.daemon);
}

const UNKNOWN: &str = "SELECT count(*) FROM rejected_readings WHERE reason = 'unknown_entity'";
const STORED: &str = "SELECT count(*) FROM measurements";

/// Publishes a reading every 300 ms until `count` (a bigint query) grows; at most 10 s.
async fn publish_until(
    c: &tokio_postgres::Client,
    p: &Publisher,
    topic: &str,
    count: &str,
    what: &str,
) {
    let before: i64 = c.query_one(count, &[]).await.expect("count").get(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reading = json!({"ts": Utc::now().timestamp_millis(), "metric": "power", "value": 1.0});
        p.publish(topic, reading.to_string()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now: i64 = c.query_one(count, &[]).await.expect("count").get(0);
        if now > before {
            return;
        }
        assert!(Instant::now() < deadline, "{what}");
    }
}

#[tokio::test]
async fn a_restart_keeps_the_last_readings_and_seeds_what_is_missing_from_measurements() {
    // 15 minutes × 0.01: silent 9 s after the last receipt, so the list is not empty.
    let mut e = start(&[("ENALYSIS_COMPLETENESS__SILENCE_FACTOR", "0.01")]).await;
    for table in ["meters", "assets", "energy_sources"] {
        e.s.client
            .execute(
                &format!("UPDATE {table} SET created_at = now() - interval '1 day'"),
                &[],
            )
            .await
            .expect("backdate");
    }
    let meter = e.s.ids.meter;
    let ts = (Utc::now() - TimeDelta::minutes(1))
        .duration_trunc(TimeDelta::seconds(1))
        .expect("trunc");
    publish(&e, "meters", meter, &[ts]).await;
    publish(&e, "assets", e.s.ids.asset, &[ts - TimeDelta::minutes(1)]).await;
    wait_count(&e.s.client, "SELECT count(*) FROM entity_last_readings", 2).await;
    // The assets's reading was received about now: wait until it is silent too.
    common::wait_until(
        Duration::from_secs(20),
        "the asset to be silent",
        || async { find(&silent(e.port, "").await, e.s.ids.asset).is_some() },
    )
    .await;
    let before = get_ok(e.port, "/api/v1/silent").await;
    assert!(find(before["silent"].as_array().expect("list"), meter).is_some());
    e.daemon.signal("TERM");
    assert_eq!(e.daemon.wait_exit(30).await, Some(0));
    // As if the asset's readings predated the table (or its flush was lost to a kill -9).
    e.s.client
        .execute(
            "DELETE FROM entity_last_readings WHERE entity_type = 'asset'",
            &[],
        )
        .await
        .expect("delete");
    let row =
        e.s.client
            .query_one(
                "SELECT last_ts FROM entity_last_readings WHERE entity_id = $1",
                &[&meter],
            )
            .await
            .expect("kept");
    assert_eq!(row.get::<_, DateTime<Utc>>(0), ts);
    let d = Daemon::start(&e.env).await;
    d.wait_for_log("last readings seeded", 1).await;
    let row =
        e.s.client
            .query_one(
                "SELECT last_ts FROM entity_last_readings WHERE entity_id = $1",
                &[&e.s.ids.asset],
            )
            .await
            .expect("seeded");
    assert_eq!(row.get::<_, DateTime<Utc>>(0), ts - TimeDelta::minutes(1));
    // The same entities are silent as before (those that never reported), with the same times.
    let after = get_ok(e.port, "/api/v1/silent").await;
    let ids = |v: &Value| {
        let mut ids: Vec<String> = v["silent"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| format!("{} {} {}", x["id"], x["last_ts"], x["last_received_at"]))
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&before), ids(&after));
    drop(d);
}

#[tokio::test]
async fn two_daemons_in_a_shared_group_agree_on_silence() {
    let s = support::setup().await;
    s.client
        .execute(
            "UPDATE meters SET reading_frequency = '1min' WHERE id = $1",
            &[&s.ids.meter],
        )
        .await
        .expect("1min");
    let mut env_a = daemon_env(&s.db, &s.broker.url());
    set_env(&mut env_a, "ENALYSIS_MQTT__SHARED_GROUP", "ingest");
    set_env(&mut env_a, "ENALYSIS_ADMIN_TOKEN", TOKEN);
    // 1 minute × 0.2: silent 12 s after the last receipt.
    set_env(&mut env_a, "ENALYSIS_COMPLETENESS__SILENCE_FACTOR", "0.2");
    let mut env_b = env_a.clone();
    set_env(
        &mut env_b,
        "ENALYSIS_MQTT__CLIENT_ID",
        format!("ingest-b-{}", Uuid::new_v4().simple()),
    );
    let port_a = with_http_port(&mut env_a);
    let port_b = with_http_port(&mut env_b);
    let a = Daemon::start(&env_a).await;
    let b = Daemon::start(&env_b).await;
    // Round robin: each daemon sees every other reading of the meter, and the newest goes to
    // one of them only.
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    let base = (Utc::now() - TimeDelta::seconds(30))
        .duration_trunc(TimeDelta::milliseconds(1))
        .expect("trunc");
    let n = 21;
    for i in 0..n {
        let t = base + TimeDelta::seconds(i);
        let reading = json!({"ts": t.timestamp_millis(), "metric": "energy", "value": i as f64});
        p.publish(&topic, reading.to_string()).await;
    }
    wait_count(&s.client, "SELECT count(*) FROM measurements", n).await;
    let newest = base + TimeDelta::seconds(n - 1);
    let committed: Vec<String> = [&a, &b]
        .iter()
        .map(|d| d.log_text())
        .filter(|t| t.contains("batch committed"))
        .collect();
    assert_eq!(committed.len(), 2, "both daemons took part of the stream");
    // Both become silent, with the same last reading: the newest of the whole stream.
    let view = |port: u16| async move {
        silent(port, "?kind=meter")
            .await
            .into_iter()
            .find(|x| x["id"] == s.ids.meter.to_string())
            .map(|x| (x["last_ts"].clone(), x["last_received_at"].clone()))
    };
    let mut agreed = None;
    let deadline = Instant::now() + Duration::from_secs(40);
    while agreed.is_none() {
        let (va, vb) = (view(port_a).await, view(port_b).await);
        if va.is_some() && va == vb {
            agreed = va;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemons never agreed: {va:?} vs {vb:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (last_ts, _) = agreed.expect("agreed");
    assert_eq!(last_ts.as_str().map(at), Some(newest), "{last_ts}");
    // And their gauges say the same.
    common::wait_until(Duration::from_secs(10), "both gauges at 1", || async {
        gauge(port_a, "meter").await == Some(1.0) && gauge(port_b, "meter").await == Some(1.0)
    })
    .await;
    // A reading through either: both lists drop it.
    p.publish(
        &topic,
        json!({"ts": Utc::now().timestamp_millis(), "metric": "energy", "value": 99.0}).to_string(),
    )
    .await;
    common::wait_until(
        Duration::from_secs(10),
        "both lists to drop the meter",
        || async { view(port_a).await.is_none() && view(port_b).await.is_none() },
    )
    .await;
    drop((a, b));
}
