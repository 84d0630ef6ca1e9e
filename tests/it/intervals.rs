//! Interval energy end to end (CONTRACT.md §7, issue #15): readings inserted with SQL into a
//! real PostgreSQL, `GET /api/v1/{meters|sites}/{id}/intervals` served by the admin router on a
//! free loopback port.

use chrono::{DateTime, Duration, Utc};
use enalysis_ingest::admin::{self, AdminState};
use enalysis_ingest::config::Config;
use enalysis_ingest::db::Db;
use serde_json::Value;
use uuid::Uuid;

use crate::support;

const TOKEN: &str = "intervals-token-0123456789";

struct Api {
    port: u16,
    client: tokio_postgres::Client,
    ids: support::Ids,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

impl Api {
    async fn start() -> Api {
        let db = support::migrated_db().await;
        let client = support::connect(&db).await;
        let ids = support::insert_hierarchy(&client).await;
        let cfg = Config::load_from(None, [("DATABASE_URL".to_string(), db)]).expect("config");
        let state = AdminState {
            db: Db::new(&cfg.database).expect("pool"),
            silence_factor: cfg.completeness.silence_factor,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let app = admin::router(state, TOKEN.to_string());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Api {
            port,
            client,
            ids,
            server,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = support::http(self.port, "GET", path, Some(TOKEN), None).await;
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        (status, v)
    }

    /// `GET …/intervals` that must answer 200; its `intervals`.
    async fn intervals(&self, kind: &str, id: Uuid, query: &str) -> Vec<Value> {
        let path = format!("/api/v1/{kind}/{id}/intervals?{query}");
        let (status, v) = self.get(&path).await;
        assert_eq!(status, 200, "{path}: {v}");
        v["intervals"].as_array().expect("intervals").clone()
    }

    /// Energy readings of `meter`: (RFC 3339, kWh, quality).
    async fn insert(&self, meter: Uuid, readings: &[(&str, f64, &str)]) {
        let ts: Vec<DateTime<Utc>> = readings.iter().map(|r| at(r.0)).collect();
        let values: Vec<f64> = readings.iter().map(|r| r.1).collect();
        let qualities: Vec<&str> = readings.iter().map(|r| r.2).collect();
        self.client
            .execute(
                "INSERT INTO measurements (entity_type, entity_id, metric, ts, value, unit, quality)
                 SELECT 'meter', $1, 'energy', t, v, 'kWh', q::quality_enum
                 FROM unnest($2::timestamptz[], $3::float8[], $4::text[]) AS r(t, v, q)",
                &[&meter, &ts, &values, &qualities],
            )
            .await
            .expect("insert readings");
    }

    /// A meter of the test site.
    async fn meter(&self, category: &str, frequency: &str, active: bool) -> Uuid {
        self.client
            .query_one(
                "INSERT INTO meters (site_id, name, category, reading_frequency, active)
                 VALUES ($1, 'M ' || gen_random_uuid(), $2::text::meter_category_enum,
                         $3::text::reading_frequency_enum, $4)
                 RETURNING id",
                &[&self.ids.site, &category, &frequency, &active],
            )
            .await
            .expect("insert meter")
            .get(0)
    }
}

/// (start, energy rounded to 1e-6, quality, readings) of each interval.
fn summary(intervals: &[Value]) -> Vec<(String, f64, String, u64)> {
    intervals
        .iter()
        .map(|i| {
            (
                i["start"].as_str().expect("start").to_string(),
                (i["energy"].as_f64().expect("energy") * 1e6).round() / 1e6,
                i["quality"].as_str().expect("quality").to_string(),
                i["readings"].as_u64().expect("readings"),
            )
        })
        .collect()
}

fn want(rows: &[(&str, f64, &str, u64)]) -> Vec<(String, f64, String, u64)> {
    rows.iter()
        .map(|&(s, e, q, n)| (s.to_string(), (e * 1e6).round() / 1e6, q.to_string(), n))
        .collect()
}

#[tokio::test]
async fn meter_intervals_go_through_a_rollover_a_glitch_and_a_reset() {
    let api = Api::start().await;
    let m = api.ids.meter;
    api.client
        .execute(
            "UPDATE meters SET metadata = '{\"register_max\": 100000}' WHERE id = $1",
            &[&m],
        )
        .await
        .expect("register_max");
    api.insert(
        m,
        &[
            ("2026-06-01T00:00:00Z", 99_990.0, "good"),
            ("2026-06-01T00:15:00Z", 99_998.0, "good"),
            ("2026-06-01T00:30:00Z", 4.0, "good"), // rollover: 2 + 4
            ("2026-06-01T00:45:00Z", 9.0, "good"),
            ("2026-06-01T01:00:00Z", 8.99, "good"), // glitch: read as 9
            ("2026-06-01T01:15:00Z", 10.0, "good"),
            ("2026-06-01T01:20:00Z", 3.0, "good"), // meter exchange: 3 over 01:15–01:20
            ("2026-06-01T01:35:00Z", 5.0, "good"),
            ("2026-06-01T01:45:00Z", 6.0, "good"),
        ],
    )
    .await;
    let got = api
        .intervals(
            "meters",
            m,
            "from=2026-06-01T00:00:00Z&to=2026-06-01T02:00:00Z&period=15m",
        )
        .await;
    assert_eq!(
        summary(&got),
        want(&[
            ("2026-06-01T00:00:00Z", 8.0, "good", 1),
            ("2026-06-01T00:15:00Z", 6.0, "estimated", 1),
            ("2026-06-01T00:30:00Z", 5.0, "good", 1),
            ("2026-06-01T00:45:00Z", 0.0, "estimated", 1),
            ("2026-06-01T01:00:00Z", 1.0, "good", 1),
            // 3 of the reset, then 10 of the 15 minutes of +2.
            (
                "2026-06-01T01:15:00Z",
                3.0 + 2.0 * 10.0 / 15.0,
                "estimated",
                2
            ),
            ("2026-06-01T01:30:00Z", 2.0 * 5.0 / 15.0 + 1.0, "good", 1),
            // [01:45, 02:00): no reading at or after 02:00, absent.
        ])
    );
    assert_eq!(got[0]["end"], "2026-06-01T00:15:00Z");
    let (_, v) = api
        .get(&format!(
            "/api/v1/meters/{m}/intervals?from=2026-06-01T00:00:00Z&to=2026-06-01T01:00:00Z&period=1h"
        ))
        .await;
    assert_eq!(v["meter_id"], m.to_string());
    assert_eq!(v["period"], "1h");
    assert_eq!(v["unit"], "kWh");
    // One hour: the rollover and the glitch inside it, 8 + 6 + 5 + 0.
    assert_eq!(
        summary(v["intervals"].as_array().expect("intervals")),
        want(&[("2026-06-01T00:00:00Z", 19.0, "estimated", 4)])
    );

    // Without register_max the same fall is a meter exchange: the new register's value, 4.
    api.client
        .execute("UPDATE meters SET metadata = '{}' WHERE id = $1", &[&m])
        .await
        .expect("no register_max");
    let got = api
        .intervals(
            "meters",
            m,
            "from=2026-06-01T00:15:00Z&to=2026-06-01T00:30:00Z",
        )
        .await;
    assert_eq!(
        summary(&got),
        want(&[("2026-06-01T00:15:00Z", 4.0, "estimated", 1)])
    );
}

#[tokio::test]
async fn gaps_and_bad_readings_make_intervals_estimated_and_missing_ends_leave_them_absent() {
    let api = Api::start().await;
    let m = api.ids.meter;
    api.insert(
        m,
        &[
            ("2026-06-02T00:00:00Z", 100.0, "good"),
            ("2026-06-02T00:05:00Z", 101.0, "good"),
            ("2026-06-02T00:50:00Z", 110.0, "good"), // 45 min after the last: > 2 × 15min
            ("2026-06-02T01:00:00Z", 111.0, "bad"),
            ("2026-06-02T01:15:00Z", 112.0, "good"),
            ("2026-06-02T03:00:00Z", 130.0, "good"),
        ],
    )
    .await;
    let got = api
        .intervals(
            "meters",
            m,
            "from=2026-06-01T23:30:00Z&to=2026-06-02T03:15:00Z",
        )
        .await;
    let per = 18.0 * 15.0 / 105.0;
    let mut expected = vec![
        // 23:30 and 23:45: no reading at or before their start, absent.
        ("2026-06-02T00:00:00Z", 3.0, "estimated", 2),
        ("2026-06-02T00:15:00Z", 3.0, "estimated", 0),
        ("2026-06-02T00:30:00Z", 3.0, "estimated", 0),
        ("2026-06-02T00:45:00Z", 2.0, "estimated", 1), // ends on the bad reading
        ("2026-06-02T01:00:00Z", 1.0, "estimated", 1), // starts on it
        ("2026-06-02T01:15:00Z", per, "estimated", 1),
    ];
    let starts: Vec<String> = (1..7)
        .map(|k| {
            (at("2026-06-02T01:15:00Z") + Duration::minutes(15 * k))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .collect();
    for s in &starts {
        expected.push((s, per, "estimated", 0));
    }
    // [03:00, 03:15): no reading at or after its end, absent.
    assert_eq!(summary(&got), want(&expected));
    let total: f64 = got
        .iter()
        .map(|i| i["energy"].as_f64().expect("energy"))
        .sum();
    assert!((total - 30.0).abs() < 1e-9, "{total}");
}

#[tokio::test]
async fn one_day_intervals_run_midnight_to_midnight_in_the_sites_timezone() {
    let api = Api::start().await;
    let m = api.ids.meter;
    api.client
        .execute(
            "UPDATE sites SET timezone = 'Europe/Brussels' WHERE id = $1",
            &[&api.ids.site],
        )
        .await
        .expect("timezone");
    api.client
        .execute(
            "UPDATE meters SET reading_frequency = 'hourly' WHERE id = $1",
            &[&m],
        )
        .await
        .expect("hourly");
    // Hourly readings rising 1 kWh an hour around both daylight-saving changes of 2026.
    let hourly = |from: &str, hours: i64| -> Vec<(String, f64)> {
        (0..hours)
            .map(|h| {
                let ts = at(from) + Duration::hours(h);
                (ts.to_rfc3339(), h as f64)
            })
            .collect()
    };
    for (from, hours) in [("2026-03-28T20:00:00Z", 60), ("2026-10-24T20:00:00Z", 30)] {
        let rows = hourly(from, hours);
        let rows: Vec<(&str, f64, &str)> =
            rows.iter().map(|(t, v)| (t.as_str(), *v, "good")).collect();
        api.insert(m, &rows).await;
    }
    // 29 March is 23 h long, 30 March 24 h.
    let got = api
        .intervals(
            "meters",
            m,
            "from=2026-03-29T00:00:00%2B01:00&to=2026-03-31T00:00:00%2B02:00&period=1d",
        )
        .await;
    assert_eq!(
        summary(&got),
        want(&[
            ("2026-03-28T23:00:00Z", 23.0, "good", 23),
            ("2026-03-29T22:00:00Z", 24.0, "good", 24),
        ])
    );
    assert_eq!(got[1]["end"], "2026-03-30T22:00:00Z");
    // 25 October is 25 h long; a window starting mid-day holds only the next day's start.
    let got = api
        .intervals(
            "meters",
            m,
            "from=2026-10-24T12:00:00Z&to=2026-10-25T12:00:00Z&period=1d",
        )
        .await;
    assert_eq!(
        summary(&got),
        want(&[("2026-10-24T22:00:00Z", 25.0, "good", 25)])
    );
    assert_eq!(got[0]["end"], "2026-10-25T23:00:00Z");
}

#[tokio::test]
async fn site_intervals_sum_the_active_meters_per_category() {
    let api = Api::start().await;
    let cons2 = api.meter("CONS", "15min", true).await;
    let prod = api.meter("PROD", "15min", true).await;
    let inj = api.meter("INJ", "15min", true).await;
    let inactive = api.meter("CONS", "15min", false).await;
    let quarter = |k: i64| at("2026-06-03T00:00:00Z") + Duration::minutes(15 * k);
    // Rises per quarter hour: main CONS 10, second CONS 1 (its last reading missing), PROD 2,
    // INJ 0.5; the STOR and the inactive meter are not part of the profile.
    for (meter, rise, n) in [
        (api.ids.meter, 10.0, 5),
        (cons2, 1.0, 4),
        (prod, 2.0, 5),
        (inj, 0.5, 5),
        (api.ids.stor_meter, 100.0, 5),
        (inactive, 1000.0, 5),
    ] {
        let rows: Vec<(String, f64)> = (0..n)
            .map(|k| (quarter(k).to_rfc3339(), 1000.0 + rise * k as f64))
            .collect();
        let rows: Vec<(&str, f64, &str)> =
            rows.iter().map(|(t, v)| (t.as_str(), *v, "good")).collect();
        api.insert(meter, &rows).await;
    }
    let site = api.ids.site;
    let path =
        format!("/api/v1/sites/{site}/intervals?from=2026-06-03T00:00:00Z&to=2026-06-03T01:00:00Z");
    let (status, v) = api.get(&path).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["site_id"], site.to_string());
    assert_eq!(v["period"], "15m");
    assert_eq!(v["unit"], "kWh");
    assert_eq!(v["meters"], 4, "{v}");
    let got: Vec<(String, f64, f64, f64, String, u64)> = v["intervals"]
        .as_array()
        .expect("intervals")
        .iter()
        .map(|i| {
            let e = |c: &str| i["energy"][c].as_f64().expect("energy");
            (
                i["start"].as_str().expect("start").to_string(),
                e("CONS"),
                e("PROD"),
                e("INJ"),
                i["quality"].as_str().expect("quality").to_string(),
                i["meters"].as_u64().expect("meters"),
            )
        })
        .collect();
    let row = |k: i64, cons: f64, quality: &str, meters: u64| {
        let start = quarter(k).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        (start, cons, 2.0, 0.5, quality.to_string(), meters)
    };
    assert_eq!(
        got,
        vec![
            row(0, 11.0, "good", 4),
            row(1, 11.0, "good", 4),
            row(2, 11.0, "good", 4),
            // The second CONS meter has no reading at 01:00: its interval is absent, so the
            // site's is estimated, from 3 of 4 meters.
            row(3, 10.0, "estimated", 3),
        ]
    );

    // A site without readings in the window: no intervals; a category without meters: null.
    let (_, v) = api
        .get(&format!(
            "/api/v1/sites/{site}/intervals?from=2026-06-04T00:00:00Z&to=2026-06-04T01:00:00Z"
        ))
        .await;
    assert_eq!(v["intervals"], Value::Array(vec![]), "{v}");
    api.client
        .execute("UPDATE meters SET active = false WHERE id = $1", &[&prod])
        .await
        .expect("deactivate");
    let got = api
        .intervals(
            "sites",
            site,
            "from=2026-06-03T00:00:00Z&to=2026-06-03T00:15:00Z",
        )
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["energy"]["PROD"], Value::Null, "{got:?}");
    assert_eq!(got[0]["meters"], 3);

    // Under an inactive site no meter is active (active all the way up).
    api.client
        .execute("UPDATE sites SET active = false WHERE id = $1", &[&site])
        .await
        .expect("deactivate the site");
    let (status, v) = api.get(&path).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["meters"], 0);
    assert_eq!(v["intervals"], Value::Array(vec![]));
}

#[tokio::test]
async fn bad_parameters_get_a_400_naming_them_and_unknown_ids_a_404() {
    let api = Api::start().await;
    let m = api.ids.meter;
    let site = api.ids.site;
    for (path, status, field) in [
        (
            format!("/api/v1/meters/{m}/intervals?period=2h"),
            400,
            Some("period"),
        ),
        (
            format!("/api/v1/sites/{site}/intervals?period=15min"),
            400,
            Some("period"),
        ),
        (
            format!("/api/v1/meters/{m}/intervals?from=yesterday"),
            400,
            Some("from"),
        ),
        (
            format!("/api/v1/meters/{m}/intervals?to=2026-13-01T00:00:00Z"),
            400,
            Some("to"),
        ),
        (
            format!(
                "/api/v1/meters/{m}/intervals?from=2026-06-02T00:00:00Z&to=2026-06-01T00:00:00Z"
            ),
            400,
            Some("from"),
        ),
        (
            format!(
                "/api/v1/meters/{m}/intervals?from=2026-06-01T00:00:00Z&to=2026-06-01T00:00:00Z"
            ),
            400,
            Some("from"),
        ),
        // Centuries of 15-minute intervals: refused before anything is read.
        (
            format!(
                "/api/v1/meters/{m}/intervals?from=1900-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"
            ),
            400,
            Some("to"),
        ),
        (
            format!(
                "/api/v1/sites/{site}/intervals?from=0001-01-01T00:00:00Z&to=9999-01-01T00:00:00Z&period=1d"
            ),
            400,
            Some("to"),
        ),
        (
            format!("/api/v1/meters/{m}/intervals?colour=red"),
            400,
            Some("query"),
        ),
        (
            "/api/v1/meters/not-a-uuid/intervals".to_string(),
            400,
            Some("id"),
        ),
        (
            format!("/api/v1/meters/{}/intervals", Uuid::new_v4()),
            404,
            None,
        ),
        (
            format!("/api/v1/sites/{}/intervals", Uuid::new_v4()),
            404,
            None,
        ),
        // A meter id is not a site id.
        (format!("/api/v1/sites/{m}/intervals"), 404, None),
    ] {
        let (got, v) = api.get(&path).await;
        assert_eq!(got, status, "{path}: {v}");
        assert_eq!(v["error"]["field"].as_str(), field, "{path}: {v}");
    }
    // `1d` needs a time zone PostgreSQL knows; the other periods do not. An unknown one stored
    // before migration 0008 refused such values (its trigger off for the update):
    api.client
        .batch_execute(&format!(
            "ALTER TABLE sites DISABLE TRIGGER sites_timezone_known;
             UPDATE sites SET timezone = 'Mars/Olympus_Mons' WHERE id = '{site}';
             ALTER TABLE sites ENABLE TRIGGER sites_timezone_known;"
        ))
        .await
        .expect("timezone");
    let (got, v) = api
        .get(&format!("/api/v1/meters/{m}/intervals?period=1d"))
        .await;
    assert_eq!(got, 400, "{v}");
    assert_eq!(v["error"]["field"], "period");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|s| s.contains("Mars/Olympus_Mons")),
        "{v}"
    );
    let (got, v) = api
        .get(&format!("/api/v1/meters/{m}/intervals?period=1h"))
        .await;
    assert_eq!(got, 200, "{v}");
    // Without the token: 401, like every admin route.
    let (status, _) = support::http(
        api.port,
        "GET",
        &format!("/api/v1/meters/{m}/intervals"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
}
