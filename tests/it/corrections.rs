//! Corrections end to end (CONTRACT.md §4): for each policy, every row of the outcome table,
//! across batches and within one; and a property: for any sequence of readings for one key, the
//! key holds what the policy picks, and every reading sent is accounted for.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::json;

use crate::support::{self, Daemon, Publisher, daemon_env, set_env, setup, with_http_port};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Replaces,
    Duplicate,
    Superseded,
}
use Out::{Duplicate as D, Replaces as R, Superseded as S};

/// (stored value, quality), (new value, quality), outcome under quality / first / latest.
type Case = ((f64, &'static str), (f64, &'static str), [Out; 3]);

/// CONTRACT.md §4, row by row.
const TABLE: &[Case] = &[
    // Strictly better quality, the same value or a different one.
    ((100.0, "estimated"), (100.0, "good"), [R, S, R]),
    ((100.0, "estimated"), (104.2, "good"), [R, S, R]),
    ((100.0, "bad"), (101.0, "estimated"), [R, S, R]),
    // The same value and quality.
    ((100.0, "good"), (100.0, "good"), [D, D, D]),
    ((100.0, "estimated"), (100.0, "estimated"), [D, D, D]),
    // Equal quality, a different value.
    ((100.0, "good"), (104.2, "good"), [S, S, R]),
    ((100.0, "bad"), (99.0, "bad"), [S, S, R]),
    // Worse quality.
    ((104.2, "good"), (104.2, "estimated"), [D, S, D]),
    ((104.2, "good"), (100.0, "estimated"), [S, S, S]),
    ((100.0, "estimated"), (90.0, "bad"), [S, S, S]),
];

const POLICIES: [&str; 3] = ["quality", "first", "latest"];

fn reading(ts: DateTime<Utc>, (value, quality): (f64, &str)) -> serde_json::Value {
    // In watts: the comparison is in the canonical unit, after conversion.
    json!({"ts": ts.to_rfc3339(), "metric": "energy", "value": value * 1000.0, "unit": "Wh",
           "quality": quality})
}

struct Key<'a> {
    client: &'a tokio_postgres::Client,
    meter: uuid::Uuid,
    ts: DateTime<Utc>,
}

impl Key<'_> {
    async fn stored(&self) -> (f64, String) {
        let r = self
            .client
            .query_one(
                "SELECT value, quality::text FROM measurements
                 WHERE entity_type = 'meter' AND entity_id = $1 AND metric = 'energy' AND ts = $2",
                &[&self.meter, &self.ts],
            )
            .await
            .expect("the key holds a reading");
        (r.get(0), r.get(1))
    }

    async fn revisions(&self) -> Vec<(f64, String)> {
        let rows = self
            .client
            .query(
                "SELECT value, quality::text FROM measurement_revisions
                 WHERE entity_type = 'meter' AND entity_id = $1 AND metric = 'energy' AND ts = $2
                 ORDER BY replaced_at, received_at",
                &[&self.meter, &self.ts],
            )
            .await
            .expect("revisions");
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }

    async fn superseded(&self) -> Vec<String> {
        let rows = self
            .client
            .query(
                "SELECT detail FROM rejected_readings
                 WHERE reason = 'superseded' AND entity_id = $1 AND metric = 'energy' AND ts = $2",
                &[&self.meter, &self.ts],
            )
            .await
            .expect("rejections");
        rows.iter().map(|r| r.get(0)).collect()
    }
}

fn metric(body: &str, line: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line} in {body}"))
}

/// Every row of the table under `policy`: across batches (the stored readings committed first,
/// then the new ones) and within one message (each pair one after the other).
async fn outcome_table_under(policy: &str, p: usize) {
    let s = setup().await;
    let mut env = daemon_env(&s.db, &s.broker.url());
    set_env(&mut env, "ENALYSIS_INGEST__CORRECTIONS", policy);
    let port = with_http_port(&mut env);
    let _daemon = Daemon::start(&env).await;
    let publisher = Publisher::connect(&s.broker.url()).await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    // Nanoseconds on purpose: a key is the instant as stored (microseconds).
    let base = Utc::now() - Duration::hours(1);
    let across = |i: usize| base + Duration::seconds(i as i64);
    let within = |i: usize| base + Duration::seconds(100 + i as i64);
    let n = TABLE.len() as i64;

    let stored: Vec<_> = TABLE
        .iter()
        .enumerate()
        .map(|(i, c)| reading(across(i), c.0))
        .collect();
    publisher.publish(&topic, json!(stored).to_string()).await;
    support::wait_count(&s.client, "SELECT count(*) FROM measurements", n).await;
    let new: Vec<_> = TABLE
        .iter()
        .enumerate()
        .map(|(i, c)| reading(across(i), c.1))
        .collect();
    publisher.publish(&topic, json!(new).to_string()).await;
    let pairs: Vec<_> = TABLE
        .iter()
        .enumerate()
        .flat_map(|(i, c)| [reading(within(i), c.0), reading(within(i), c.1)])
        .collect();
    publisher.publish(&topic, json!(pairs).to_string()).await;

    let count = |o: Out| TABLE.iter().filter(|c| c.2[p] == o).count() as i64;
    support::wait_count(&s.client, "SELECT count(*) FROM measurements", 2 * n).await;
    support::wait_count(
        &s.client,
        "SELECT count(*) FROM measurement_revisions",
        2 * count(R),
    )
    .await;
    support::wait_count(
        &s.client,
        "SELECT count(*) FROM rejected_readings WHERE reason = 'superseded'",
        2 * count(S),
    )
    .await;
    for (i, (old, new, outcomes)) in TABLE.iter().enumerate() {
        for ts in [across(i), within(i)] {
            let key = Key {
                client: &s.client,
                meter: s.ids.meter,
                ts,
            };
            let what = format!("{policy}: {old:?} then {new:?}");
            let (revisions, superseded) = (key.revisions().await, key.superseded().await);
            let held = |(v, q): (f64, &str)| (v, q.to_string());
            match outcomes[p] {
                R => {
                    assert_eq!(key.stored().await, held(*new), "{what}");
                    assert_eq!(revisions, vec![held(*old)], "{what}");
                    assert!(superseded.is_empty(), "{what}");
                }
                D | S => {
                    assert_eq!(key.stored().await, held(*old), "{what}");
                    assert!(revisions.is_empty(), "{what}: {revisions:?}");
                }
            }
            match outcomes[p] {
                S => {
                    assert_eq!(superseded.len(), 1, "{what}");
                    // The detail names what the key holds.
                    let holds = format!("holds {} kWh ({})", old.0, old.1);
                    assert!(superseded[0].contains(&holds), "{what}: {superseded:?}");
                }
                _ => assert!(superseded.is_empty(), "{what}: {superseded:?}"),
            }
        }
    }
    // The same revisions through the read API (CONTRACT.md §7), oldest replacement first.
    let api = |q: String| async move {
        let path = format!("/api/v1/meters/{}/revisions{q}", s.ids.meter);
        let (status, body) = support::http(port, "GET", &path, None, None).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        (status, v)
    };
    let (status, all) = api(String::new()).await;
    assert_eq!(status, 200, "{all}");
    let all = all["revisions"].as_array().expect("revisions").clone();
    assert_eq!(all.len() as i64, 2 * count(R));
    for w in all.windows(2) {
        assert!(w[0]["replaced_at"].as_str() <= w[1]["replaced_at"].as_str());
    }
    for r in &all {
        for field in [
            "metric",
            "ts",
            "value",
            "unit",
            "quality",
            "received_at",
            "replaced_at",
        ] {
            assert!(!r[field].is_null(), "{field} in {r}");
        }
    }
    let enc = |t: DateTime<Utc>| t.to_rfc3339().replace('+', "%2B");
    let window = format!(
        "?metric=energy&from={}&to={}",
        enc(within(0)),
        enc(within(TABLE.len()))
    );
    let (status, some) = api(window).await;
    assert_eq!(status, 200);
    assert_eq!(
        some["revisions"].as_array().map(Vec::len),
        Some(count(R) as usize)
    );
    let (status, none) = api("?metric=power".into()).await;
    assert_eq!(
        (status, none["revisions"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, _) = api(format!("?from={}&to={}", enc(within(1)), enc(within(0)))).await;
    assert_eq!(status, 400);
    let (status, _) = api("?metric=vibes".into()).await;
    assert_eq!(status, 400);
    let path = format!("/api/v1/meters/{}/revisions", uuid::Uuid::new_v4());
    assert_eq!(support::http(port, "GET", &path, None, None).await.0, 404);

    let body = support::http_get(port, "/metrics").await;
    assert_eq!(
        metric(&body, "ingest_readings_corrected_total"),
        (2 * count(R)) as f64
    );
    assert_eq!(
        metric(&body, "ingest_readings_duplicate_total"),
        (2 * count(D)) as f64
    );
    assert_eq!(
        metric(
            &body,
            "ingest_readings_rejected_total{reason=\"superseded\"}"
        ),
        (2 * count(S)) as f64
    );
}

#[tokio::test]
async fn the_outcome_table_holds_under_the_quality_policy() {
    outcome_table_under(POLICIES[0], 0).await;
}

#[tokio::test]
async fn the_outcome_table_holds_under_the_first_policy() {
    outcome_table_under(POLICIES[1], 1).await;
}

#[tokio::test]
async fn the_outcome_table_holds_under_the_latest_policy() {
    outcome_table_under(POLICIES[2], 2).await;
}

/// An oracle written from the contract's words, independent of the daemon's code: the version
/// a key holds after `readings`, and how many were replaced, duplicates, superseded.
fn oracle(policy: &str, readings: &[(f64, &str)]) -> ((f64, String), usize, usize, usize) {
    let rank = |q: &str| match q {
        "good" => 2,
        "estimated" => 1,
        _ => 0,
    };
    let (mut held, mut replaced, mut duplicates, mut superseded) = (readings[0], 0, 0, 0);
    for &new in &readings[1..] {
        let same = new.0 == held.0 && new.1 == held.1;
        let replaces = !same
            && match policy {
                "quality" => rank(new.1) > rank(held.1),
                "latest" => rank(new.1) >= rank(held.1),
                _ => false,
            };
        if replaces {
            held = new;
            replaced += 1;
        } else if same || (policy != "first" && new.0 == held.0) {
            duplicates += 1;
        } else {
            superseded += 1;
        }
    }
    (
        (held.0, held.1.to_string()),
        replaced,
        duplicates,
        superseded,
    )
}

fn sequence() -> impl Strategy<Value = Vec<(f64, &'static str)>> {
    let value = prop_oneof![Just(1.0), Just(2.0), Just(3.0)];
    let quality = prop_oneof![Just("good"), Just("estimated"), Just("bad")];
    proptest::collection::vec((value, quality), 1..7)
}

/// For 40 random sequences per policy (each reading its own message, so some meet in a batch
/// and some do not): the key holds what the oracle says, its revisions and `superseded`
/// rejections are as many as the oracle's, and stored + revisions + superseded + duplicates
/// is every reading sent.
#[tokio::test]
async fn any_sequence_for_one_key_ends_as_the_policy_says_and_every_reading_is_accounted_for() {
    let s = setup().await;
    let topic = format!("enalysis/v1/meters/{}/readings", s.ids.meter);
    let mut runner = TestRunner::deterministic();
    let base = Utc::now() - Duration::hours(2);
    for (p, policy) in POLICIES.iter().enumerate() {
        let mut env = daemon_env(&s.db, &s.broker.url());
        set_env(&mut env, "ENALYSIS_INGEST__CORRECTIONS", *policy);
        let port = with_http_port(&mut env);
        let daemon = Daemon::start(&env).await;
        let publisher = Publisher::connect(&s.broker.url()).await;
        let cases: Vec<Vec<(f64, &str)>> = (0..40)
            .map(|_| sequence().new_tree(&mut runner).expect("tree").current())
            .collect();
        let ts = |c: usize| base + Duration::seconds((p * 1000 + c) as i64);
        // Round-robin over the cases: each key's readings in order, other keys between them.
        let longest = cases.iter().map(Vec::len).max().unwrap_or(0);
        let mut sent = 0;
        for step in 0..longest {
            for (c, readings) in cases.iter().enumerate() {
                if let Some(&r) = readings.get(step) {
                    // Trailing blanks make each sending its own message: the same bytes twice
                    // would be a redelivery, whose rejections are stored once.
                    let payload = reading(ts(c), r).to_string() + &" ".repeat(step);
                    publisher.publish(&topic, payload).await;
                    sent += 1;
                }
            }
        }
        publisher.wait_acked(sent).await;
        let (mut replaced, mut duplicates, mut superseded) = (0, 0, 0);
        let mut expected = Vec::new();
        for readings in &cases {
            let o = oracle(policy, readings);
            replaced += o.1;
            duplicates += o.2;
            superseded += o.3;
            expected.push(o);
        }
        // Everything decided: the daemon's counters account for every reading.
        common_wait_metrics(port, sent, replaced, duplicates, superseded).await;
        for (c, (held, r, _, sup)) in expected.iter().enumerate() {
            let key = Key {
                client: &s.client,
                meter: s.ids.meter,
                ts: ts(c),
            };
            let what = format!("{policy}: {:?}", cases[c]);
            assert_eq!(&key.stored().await, held, "{what}");
            assert_eq!(key.revisions().await.len(), *r, "{what}");
            assert_eq!(key.superseded().await.len(), *sup, "{what}");
        }
        drop(daemon);
    }
}

/// Waits until the daemon's counters say every one of `sent` readings was decided, then checks
/// they split as expected.
async fn common_wait_metrics(
    port: u16,
    sent: usize,
    replaced: usize,
    duplicates: usize,
    superseded: usize,
) {
    let read = || async move {
        let body = support::http_get(port, "/metrics").await;
        let accepted = metric(&body, "ingest_readings_accepted_total");
        let dup = metric(&body, "ingest_readings_duplicate_total");
        let sup = metric(
            &body,
            "ingest_readings_rejected_total{reason=\"superseded\"}",
        );
        let corrected = metric(&body, "ingest_readings_corrected_total");
        (accepted, dup, sup, corrected)
    };
    crate::common::wait_until(
        std::time::Duration::from_secs(60),
        &format!("{sent} readings decided"),
        || async move {
            let (accepted, dup, sup, _) = read().await;
            (accepted + dup + sup) as usize == sent
        },
    )
    .await;
    let (accepted, dup, sup, corrected) = read().await;
    // Accepted = one stored version per key + each replacement.
    assert_eq!(
        (
            accepted as usize,
            dup as usize,
            sup as usize,
            corrected as usize
        ),
        (
            sent - duplicates - superseded,
            duplicates,
            superseded,
            replaced
        )
    );
}
