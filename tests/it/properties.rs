//! Property tests of the pure core: `validate::judge` (whatever the bytes, no panic, and every
//! reading ends up accepted — finite, canonical, within bounds — or rejected with one reason) and
//! `intervals` (interval energies add up to the register's rise, and are never negative).

use chrono::{DateTime, Duration, Utc};
use enalysis_ingest::model::{Outcome, Quality};
use enalysis_ingest::registry::Registry;
use enalysis_ingest::validate::{Context, Limits, judge};
use enalysis_ingest::{catalogue, intervals};
use proptest::prelude::*;

/// The registry shared with validate's unit tests and the fuzz target.
fn registry() -> Registry {
    enalysis_core::fixture::registry()
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
        .expect("fixed instant")
        .with_timezone(&Utc)
}

fn run(topic: &str, payload: &[u8]) -> Outcome {
    let registry = registry();
    let limits = Limits {
        max_payload_bytes: 64 * 1024,
        max_clock_skew: Duration::minutes(5),
        max_age: Duration::days(400),
    };
    let ctx = Context {
        prefix: "enalysis/v1",
        registry: &registry,
        limits: &limits,
        now: now(),
    };
    judge(topic, payload, &ctx)
}

/// What must hold for every outcome.
fn check_invariants(out: &Outcome) {
    assert!(
        !out.accepted.is_empty() || !out.rejected.is_empty(),
        "a message must leave a trace"
    );
    for r in &out.accepted {
        let m = catalogue::lookup(r.metric).expect("accepted metrics are in the catalogue");
        assert_eq!(r.unit, m.unit, "canonical unit");
        assert!(r.value.is_finite(), "{r:?}");
        assert!(r.value >= m.min && r.value <= m.max, "{r:?} outside bounds");
        assert!(r.ts <= now() + Duration::minutes(5) && r.ts >= now() - Duration::days(400));
    }
    for j in &out.rejected {
        assert!(!j.detail.is_empty(), "{j:?}");
    }
}

const TOPICS: &[&str] = &[
    "enalysis/v1/meters/EAN-CONS/readings",
    "enalysis/v1/meters/EAN-STOR/readings",
    "enalysis/v1/assets/pump-1/readings",
    "enalysis/v1/energy-sources/battery-1/readings",
    "enalysis/v1/gateways/gw/readings",
    "enalysis/v1/meters/2d8b8c50-7c69-4eaf-9f20-4b5d3e6f7081/readings",
    "enalysis/v1/meters/nobody/readings",
    "enalysis/v1/meters//readings",
];

fn ts_value() -> impl Strategy<Value = serde_json::Value> {
    let base = now().timestamp_millis();
    prop_oneof![
        (-1_000_000_000i64..1_000_000i64).prop_map(move |d| serde_json::json!(base + d)),
        (-10_000i64..10_000)
            .prop_map(move |h| { serde_json::json!((now() + Duration::hours(h)).to_rfc3339()) }),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,30}".prop_map(|s| serde_json::json!(s)),
        Just(serde_json::Value::Null),
    ]
}

fn metric_name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(catalogue::ALL.iter().map(|m| m.name).collect::<Vec<_>>())
            .prop_map(String::from),
        "[a-z_]{0,12}",
    ]
}

fn unit() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(vec![
            "W", "kW", "MW", "Wh", "kWh", "MWh", "V", "kV", "A", "Hz", "%", "°C", "K", "°F", "",
            "var"
        ])
        .prop_map(|u| Some(u.to_string())),
        ".{0,5}".prop_map(Some),
    ]
}

fn value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        (-1e4f64..1e4).prop_map(|f| serde_json::json!(f)),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        ".{0,8}".prop_map(|s| serde_json::json!(s)),
        Just(serde_json::Value::Null),
        Just(serde_json::json!([1, 2])),
    ]
}

fn quality() -> impl Strategy<Value = Option<serde_json::Value>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(vec!["good", "bad", "estimated", "Good", "meh"])
            .prop_map(|q| Some(serde_json::json!(q))),
        any::<i32>().prop_map(|n| Some(serde_json::json!(n))),
    ]
}

fn reading() -> impl Strategy<Value = serde_json::Value> {
    (
        ts_value(),
        metric_name(),
        value(),
        unit(),
        quality(),
        proptest::option::of(proptest::sample::select(vec![
            "meter",
            "asset",
            "energy_source",
        ])),
        proptest::sample::select(vec!["EAN-CONS", "EAN-STOR", "pump-1", "battery-1", "zzz"]),
    )
        .prop_map(|(ts, metric, value, unit, quality, key, entity)| {
            let mut o = serde_json::Map::new();
            o.insert("ts".into(), ts);
            o.insert("metric".into(), metric.into());
            o.insert("value".into(), value);
            if let Some(u) = unit {
                o.insert("unit".into(), u.into());
            }
            if let Some(q) = quality {
                o.insert("quality".into(), q);
            }
            if let Some(k) = key {
                o.insert(k.into(), entity.into());
            }
            serde_json::Value::Object(o)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_always_leave_a_trace(
        topic in proptest::sample::select(TOPICS),
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        check_invariants(&run(topic, &payload));
    }

    #[test]
    fn one_reading_object_is_exactly_one_outcome(
        topic in proptest::sample::select(TOPICS),
        r in reading(),
    ) {
        let out = run(topic, r.to_string().as_bytes());
        check_invariants(&out);
        prop_assert_eq!(out.accepted.len() + out.rejected_readings(), 1, "{}", r);
    }

    #[test]
    fn arrays_of_readings_account_for_every_element(
        topic in proptest::sample::select(TOPICS),
        rs in proptest::collection::vec(reading(), 1..20),
    ) {
        let payload = serde_json::Value::Array(rs.clone()).to_string();
        let out = run(topic, payload.as_bytes());
        check_invariants(&out);
        // Each element is one outcome, unless the message as a whole was rejected once
        // (unknown topic or entity in the topic).
        let whole = out.accepted.is_empty()
            && out.rejected.len() == 1
            && out.rejected[0].element.is_none();
        prop_assert!(whole || out.accepted.len() + out.rejected_readings() == rs.len());
    }
}

#[test]
fn hostile_payloads_are_rejected_not_stored() {
    let topic = "enalysis/v1/meters/EAN-CONS/readings";
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge_array = format!("[{}]", vec!["{}"; 200_000].join(","));
    let ten_mb = vec![b'x'; 10 * 1024 * 1024];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("deep nesting", deep.into_bytes()),
        ("huge array", huge_array.into_bytes()),
        ("10 MB", ten_mb),
        ("invalid UTF-8", vec![0xff, 0xfe, b'{', b'}']),
        ("NUL bytes", b"{\"ts\":\0}".to_vec()),
        (
            "1e400",
            br#"{"ts":1764082800000,"metric":"power","value":1e400}"#.to_vec(),
        ),
        (
            "year 99999",
            br#"{"ts":"99999-01-01T00:00:00Z","metric":"power","value":1}"#.to_vec(),
        ),
        (
            "duplicate keys",
            br#"{"ts":1764082800000,"ts":1,"metric":"power","value":1}"#.to_vec(),
        ),
    ];
    for (what, payload) in cases {
        let out = run(topic, &payload);
        check_invariants(&out);
        assert!(out.accepted.is_empty(), "{what}: {:?}", out.accepted);
        assert!(!out.rejected.is_empty(), "{what}");
    }
}

/// Readings of a register: successive gaps (1 s to 1 h) and values, from 2026-03-01T00:07Z.
fn register_readings(steps: &[(i64, f64, u8)]) -> Vec<intervals::Sample> {
    let mut ts = DateTime::parse_from_rfc3339("2026-03-01T00:07:00Z")
        .expect("instant")
        .with_timezone(&Utc);
    let qualities = [Quality::Good, Quality::Estimated, Quality::Bad];
    steps
        .iter()
        .map(|&(gap, value, q)| {
            ts += Duration::seconds(gap);
            intervals::Sample {
                ts,
                value,
                quality: qualities[usize::from(q) % 3],
            }
        })
        .collect()
}

/// The raw register interpolated linearly in time at `t` (within the readings).
fn interpolated(readings: &[intervals::Sample], t: DateTime<Utc>) -> f64 {
    let k = readings.partition_point(|r| r.ts <= t);
    let a = readings[k - 1];
    let Some(b) = readings.get(k) else {
        return a.value;
    };
    let span = (b.ts - a.ts).num_milliseconds() as f64;
    a.value + (b.value - a.value) * (t - a.ts).num_milliseconds() as f64 / span
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Without falls (so without glitches, resets or rollovers), the energies of a window's
    /// intervals add up to the register's interpolated rise over the window.
    #[test]
    fn without_resets_interval_energies_add_up_to_the_registers_rise(
        steps in proptest::collection::vec((1i64..3_600, 0.0f64..50.0, 0u8..3), 2..300),
        hourly in any::<bool>(),
    ) {
        let mut value = 1_000.0;
        let rising: Vec<(i64, f64, u8)> = steps
            .iter()
            .map(|&(gap, rise, q)| {
                value += rise;
                (gap, value, q)
            })
            .collect();
        let readings = register_readings(&rising);
        let (first, last) = (readings[0].ts, readings[readings.len() - 1].ts);
        let step = if hourly { Duration::hours(1) } else { Duration::minutes(15) };
        let mut bounds = intervals::aligned(first, last, step, 100_000).expect("few");
        // Only whole intervals within the readings, so every one is present.
        bounds.retain(|b| *b <= last);
        prop_assume!(bounds.len() >= 2);
        let (b0, bn) = (bounds[0], bounds[bounds.len() - 1]);
        let got = intervals::intervals(readings.iter().copied(), bounds, Duration::minutes(30), None);
        prop_assert!(got.iter().all(Option::is_some), "{got:?}");
        let sum: f64 = got.iter().flatten().map(|i| i.energy).sum();
        let rise = interpolated(&readings, bn) - interpolated(&readings, b0);
        prop_assert!((sum - rise).abs() <= 1e-9 * rise.abs().max(1.0), "{sum} vs {rise}");
        let counted: u64 = got.iter().flatten().map(|i| i.readings).sum();
        let within = readings.iter().filter(|r| r.ts >= b0 && r.ts < bn).count() as u64;
        prop_assert_eq!(counted, within);
    }

    /// Whatever the register does (falls, resets, values past register_max, negative values),
    /// no interval's energy is negative or not finite.
    #[test]
    fn interval_energy_is_never_negative(
        steps in proptest::collection::vec((1i64..3_600, -1_000.0f64..1e6, 0u8..3), 1..300),
        register_max in proptest::option::of(1.0f64..1e6),
    ) {
        let readings = register_readings(&steps);
        let (first, last) = (readings[0].ts, readings[readings.len() - 1].ts);
        let bounds = intervals::aligned(first - Duration::hours(1), last + Duration::hours(1),
            Duration::minutes(15), 100_000).expect("few");
        let got = intervals::intervals(readings, bounds, Duration::minutes(30), register_max);
        for i in got.iter().flatten() {
            prop_assert!(i.energy >= 0.0 && i.energy.is_finite(), "{i:?}");
        }
    }
}
