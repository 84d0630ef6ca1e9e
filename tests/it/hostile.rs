//! Hostile input (issue #11, "Robustness"): the one message that wedged ingestion for good, and a
//! corpus of messages built to hurt the daemon, interleaved with valid readings.
//!
//! Black-box against CONTRACT.md (§2 `rejected_readings`, §3 topics and payloads, §4 reasons):
//! the tests publish over MQTT and read back what PostgreSQL holds, the daemon's `/healthz`, and
//! its memory from `/proc/<pid>/status`. A hostile message is recognised in `rejected_readings`
//! by its `message_digest`: sha256 of the topic bytes, a NUL byte, and the whole payload.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::support::{self, Daemon, Publisher, daemon_env, setup, with_http_port};

/// `ingest.max_payload_bytes`, the shipped default: a larger message is `payload_too_large`.
const MAX_PAYLOAD: usize = 256 * 1024;
const DAY_MS: i64 = 86_400_000;
/// The gateway of issue #11: one JSON array of this many CONS readings of −3.5 kW.
const WEDGE_READINGS: usize = 3240;

fn meter_topic(key: &str) -> String {
    format!("enalysis/v1/meters/{key}/readings")
}

/// What the daemon stores as `message_digest` (CONTRACT.md §2): sha256(topic ‖ 0x00 ‖ payload).
fn digest(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(topic.as_bytes());
    h.update([0u8]);
    h.update(payload);
    h.finalize().to_vec()
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A valid reading for a CONS meter: one message, one reading.
fn valid(ts_ms: i64, value: f64) -> String {
    format!(r#"{{"ts": {ts_ms}, "metric": "power", "value": {value:?}, "unit": "kW"}}"#)
}

/// The message of issue #11: a JSON array of `n` readings of `power` −3.5 kW (every one a
/// `category_violation` on a CONS meter), at `first_ts_ms`, `first_ts_ms + step_ms`, …, one per
/// line and indented as a gateway pretty-printing its buffer would: 79 bytes a reading, so
/// 3,240 readings make ~250 KiB, just under the 256 KiB limit.
fn violation_array(first_ts_ms: i64, step_ms: i64, n: usize) -> Vec<u8> {
    let mut out = String::with_capacity(n * 79 + 4);
    out.push_str("[\n");
    for i in 0..n {
        let obj = format!(
            r#"{{"ts": {}, "metric": "power", "value": -3.5, "unit": "kW"}}"#,
            first_ts_ms + i as i64 * step_ms
        );
        out.extend(std::iter::repeat_n(' ', 77usize.saturating_sub(obj.len())));
        out.push_str(&obj);
        out.push_str(if i + 1 < n { ",\n" } else { "\n" });
    }
    out.push(']');
    out.into_bytes()
}

/// Polls `sql` (one bigint) until it equals `expected`, for at most `timeout`; gives up at once
/// when the daemon is no longer running. The panic message ends with the daemon's warnings.
async fn wait_i64(
    client: &tokio_postgres::Client,
    daemon: &Daemon,
    what: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    expected: i64,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.query_one(sql, params).await {
            Ok(row) => match row.get::<_, i64>(0) {
                v if v == expected => return,
                v => v.to_string(),
            },
            Err(e) => e.to_string(),
        };
        let exited = !running(daemon.pid());
        if exited || Instant::now() >= deadline {
            panic!(
                "{} waiting for {what}: {sql} = {expected}; last: {last}\n\
                 the daemon's last warnings:\n{}",
                if exited {
                    format!("the daemon (pid {}) exited", daemon.pid())
                } else {
                    format!("timed out after {timeout:?}")
                },
                warnings(daemon, 10)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last `n` log lines of the daemon at WARN or ERROR level.
fn warnings(daemon: &Daemon, n: usize) -> String {
    let log = daemon.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// 1. The wedge of issue #11

#[tokio::test]
async fn one_message_of_3240_rejected_readings_does_not_stop_ingestion() {
    let s = setup().await;
    let daemon = Daemon::start(&daemon_env(&s.db, &s.broker.url())).await;
    let pid = daemon.pid();
    // Today's daemon reaches GBs retrying this message: enough room to see the retries go on.
    let _watchdog = Watchdog::start(pid, 8 * 1024 * 1024, None);
    let p = Publisher::connect(&s.broker.url()).await;
    let topic = meter_topic(&s.ids.meter.to_string());
    let now = now_ms();
    // 3,240 distinct millisecond timestamps within the last day, 26 s apart.
    let payload = violation_array(now - DAY_MS + 60_000, 26_000, WEDGE_READINGS);
    assert!(
        payload.len() > 245 * 1024 && payload.len() < MAX_PAYLOAD,
        "the wedge message is {} bytes: it must be ~250 KiB and under the limit",
        payload.len()
    );
    p.publish(&topic, payload.clone()).await;
    // Then valid readings: for the same meter and for another one.
    let other = meter_topic(&s.ids.stor_meter.to_string());
    for i in 0..5 {
        p.publish(&topic, valid(now - 60_000 + i, 1.0 + i as f64))
            .await;
        p.publish(&other, valid(now - 60_000 + i, -2.0 - i as f64))
            .await;
    }
    p.wait_acked(11).await;

    // Today's daemon never gets here: the batch holding the wedge is retried forever.
    wait_i64(
        &s.client,
        &daemon,
        "the valid readings published after the 3,240 rejections",
        "SELECT count(*) FROM measurements",
        &[],
        10,
        Duration::from_secs(60),
    )
    .await;
    let rows = s
        .client
        .query(
            "SELECT entity_id, value FROM measurements ORDER BY entity_id, value",
            &[],
        )
        .await
        .expect("measurements");
    let mut stored: Vec<(Uuid, f64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut expected: Vec<(Uuid, f64)> = (0..5)
        .flat_map(|i| {
            [
                (s.ids.meter, 1.0 + i as f64),
                (s.ids.stor_meter, -2.0 - i as f64),
            ]
        })
        .collect();
    stored.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    expected.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    assert_eq!(stored, expected, "the valid readings, each stored once");

    // Every reading of the wedge message is a rejection row of its own, with the payload intact.
    let d = digest(&topic, &payload);
    wait_i64(
        &s.client,
        &daemon,
        "the rejections of the wedge message",
        "SELECT count(*) FROM rejected_readings WHERE message_digest = $1",
        &[&d],
        WEDGE_READINGS as i64,
        Duration::from_secs(30),
    )
    .await;
    let text = std::str::from_utf8(&payload).expect("utf-8");
    let row = s
        .client
        .query_one(
            "SELECT count(*),
                    count(*) FILTER (WHERE reason = 'category_violation'),
                    count(*) FILTER (WHERE payload = $2),
                    count(*) FILTER (WHERE payload_text = $3),
                    count(*) FILTER (WHERE payload_size = $4),
                    count(*) FILTER (WHERE topic = $5),
                    count(*) FILTER (WHERE entity_type = 'meter' AND entity_id = $6
                                     AND metric = 'power'),
                    count(DISTINCT seq),
                    count(DISTINCT ts),
                    min(ts) = to_timestamp($7::float8 / 1000),
                    max(ts) = to_timestamp($8::float8 / 1000)
             FROM rejected_readings WHERE message_digest = $1",
            &[
                &d,
                &payload,
                &text,
                &(payload.len() as i32),
                &topic,
                &s.ids.meter,
                &((now - DAY_MS + 60_000) as f64),
                &((now - DAY_MS + 60_000 + (WEDGE_READINGS as i64 - 1) * 26_000) as f64),
            ],
        )
        .await
        .expect("rejections of the wedge message");
    let n = WEDGE_READINGS as i64;
    let counts: Vec<i64> = (0..9).map(|i| row.get(i)).collect();
    assert_eq!(
        counts,
        vec![n; 9],
        "rows, category_violation, payload, payload_text, payload_size, topic, entity+metric, \
         distinct seq, distinct ts"
    );
    assert!(
        row.get::<_, bool>(9) && row.get::<_, bool>(10),
        "ts range of the rejections"
    );
    let others: i64 = s
        .client
        .query_one(
            "SELECT count(*) FROM rejected_readings WHERE message_digest <> $1",
            &[&d],
        )
        .await
        .expect("other rejections")
        .get(0);
    assert_eq!(others, 0, "no valid reading was rejected");
    let log = daemon.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// 2. A hostile corpus, interleaved with valid readings, under a small byte budget

/// `ingest.max_buffered_bytes` for the corpus test: small, so the flood exceeds it many times.
// 24 MiB: 11 MiB of it is the read reserve for MAX_PACKET, and what the process holds outside
// the budget (rumqttc's buffers, the driver's statement buffers, the allocator's free lists)
// is ~20 MiB whatever the budget: at 16 MiB the bound held by 3 MiB only.
const BUDGET: u64 = 24 * 1024 * 1024;
/// `mqtt.max_packet_bytes` of the corpus test: a 1 MiB payload with its topic and header.
const MAX_PACKET: u64 = 1_050_000;
/// Rounds of the corpus; each round's messages differ from every other round's.
const ROUNDS: usize = 36;
/// Valid readings interleaved with the corpus (the first one before it, to warm up).
const VALID: usize = 2000;
/// The publisher waits for the broker's PUBACKs so that at most this many are outstanding.
const PUBLISH_WINDOW: usize = 48;

/// What the contract says must become of a hostile message in `rejected_readings`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// At least one row (the contract leaves the reason open, e.g. malformed or invalid value).
    Recorded,
    /// At least one row, every one with this reason.
    Reason(&'static str),
    /// Exactly this many rows, every one with this reason.
    Rows(&'static str, i64),
    /// Exactly this many rows, whatever their reasons (each reading is judged on its own).
    Count(i64),
    /// One `payload_too_large` row with the real size in `payload_size` and the first
    /// `max_payload_bytes` bytes in `payload`.
    TooLarge,
}

struct Hostile {
    label: String,
    topic: String,
    payload: Vec<u8>,
    expect: Expect,
}

struct Sent {
    label: String,
    topic: String,
    digest: Vec<u8>,
    /// sha256 of what `payload` must hold: the bytes sent, cut at the size limit.
    kept_sha256: Vec<u8>,
    len: usize,
    expect: Expect,
}

/// What the corpus needs to know of the inventory.
struct Ctx {
    cons_uuid: String,
    cons_ext: String,
    asset_uuid: String,
    /// A base time within the last day; every round and kind takes its own timestamps.
    base_ms: i64,
    /// Almost a day ago: the 250 KiB arrays span 23.4 hours from here.
    day_ago_ms: i64,
}

/// A small deterministic generator (xorshift64*), for bytes that must look random.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn repeat(s: &str, n: usize) -> String {
    s.repeat(n)
}

/// The hostile messages of round `r`. Every message embeds `r` (in a timestamp, a number, a
/// byte or a topic level), so each one has a digest of its own. No reading in them may be
/// stored: where a parser could read a reading out of one, it is a negative power for the CONS
/// meter (a `category_violation`) or fails a rule of its own.
fn round(r: usize, c: &Ctx) -> Vec<Hostile> {
    let cons = meter_topic(&c.cons_uuid);
    let cons_ext = meter_topic(&c.cons_ext);
    let gw = format!("enalysis/v1/gateways/gw-hostile-{r}/readings");
    // A timestamp of this round, within the last day, 1 ms apart per `k`.
    let t = |k: i64| c.base_ms + r as i64 * 1000 + k;
    let mut out: Vec<Hostile> = Vec::new();
    let mut push = |label: &str, topic: &str, payload: Vec<u8>, expect: Expect| {
        out.push(Hostile {
            label: format!("round {r}: {label}"),
            topic: topic.to_string(),
            payload,
            expect,
        });
    };

    // The issue's message, by UUID and by external id on alternate rounds.
    push(
        "250 KiB array of category violations",
        if r.is_multiple_of(2) {
            &cons
        } else {
            &cons_ext
        },
        violation_array(c.day_ago_ms + r as i64 * 7, 26_000, WEDGE_READINGS),
        Expect::Rows("category_violation", WEDGE_READINGS as i64),
    );
    // A gateway naming meters nobody knows.
    {
        let mut s = String::from("[");
        let mut n = 0;
        loop {
            let obj = format!(
                r#"{{"meter": "{}", "ts": {}, "metric": "power", "value": 1.5, "unit": "kW"}}"#,
                Uuid::new_v4(),
                t(n)
            );
            if s.len() + obj.len() + 2 > 250 * 1024 {
                break;
            }
            if n > 0 {
                s.push_str(",\n");
            }
            s.push_str(&obj);
            n += 1;
        }
        s.push(']');
        push(
            "250 KiB gateway array of unknown meters",
            &gw,
            s.into_bytes(),
            Expect::Rows("unknown_entity", n),
        );
    }
    // 1 MiB: a gateway's whole buffer of plausible readings (none may be stored), and noise.
    {
        let mut s = String::from("[");
        let mut k = 0;
        while s.len() < 1024 * 1024 - 100 {
            if k > 0 {
                s.push(',');
            }
            s.push_str(&valid(t(k), 1.0));
            k += 1;
        }
        s.push(']');
        push("1 MiB JSON array", &cons, s.into_bytes(), Expect::TooLarge);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ r as u64);
        let noise: Vec<u8> = (0..1024 * 1024).map(|_| rng.next() as u8).collect();
        push("1 MiB of random bytes", &gw, noise, Expect::TooLarge);
    }
    // Nesting far beyond any parser's stack.
    push(
        "100,000-deep array",
        &cons,
        format!("{}{r}{}", repeat("[", 100_000), repeat("]", 100_000)).into_bytes(),
        Expect::Reason("malformed_payload"),
    );
    push(
        "43,000-deep object (as deep as fits under the limit)",
        &cons,
        format!("{}{r}{}", repeat(r#"{"a":"#, 43_000), repeat("}", 43_000)).into_bytes(),
        Expect::Recorded,
    );
    push(
        "100,000-deep object (over the limit)",
        &gw,
        format!("{}{r}{}", repeat(r#"{"a":"#, 100_000), repeat("}", 100_000)).into_bytes(),
        Expect::TooLarge,
    );
    push(
        "100,000-deep array in an unknown key of a reading",
        &cons,
        format!(
            r#"{{"ts": {}, "metric": "power", "value": -3.5, "x": {}{}}}"#,
            t(0),
            repeat("[", 100_000),
            repeat("]", 100_000)
        )
        .into_bytes(),
        Expect::Recorded,
    );
    push(
        "100,000-deep array in a gateway reading",
        &gw,
        format!(
            r#"[{{"meter": "{}", "ts": {}, "metric": "power", "value": -3.5, "x": {}{}}}]"#,
            c.cons_uuid,
            t(1),
            repeat("[", 100_000),
            repeat("]", 100_000)
        )
        .into_bytes(),
        Expect::Recorded,
    );

    // Not UTF-8: the whole message is one malformed_payload (CONTRACT.md §4).
    let not_utf8: [(&str, &[u8]); 5] = [
        ("invalid UTF-8 in a unit", b"\xffW"),
        ("an overlong NUL (C0 80) in a unit", b"\xc0\x80"),
        ("a UTF-8-encoded surrogate in a unit", b"\xed\xa0\x80"),
        ("Latin-1 in a unit", b"\xb0C"),
        ("a truncated sequence at the end", b"\xe2\x82"),
    ];
    for (i, (label, bytes)) in not_utf8.iter().enumerate() {
        let mut p = format!(
            r#"{{"ts": {}, "metric": "power", "value": 1.0, "unit": "k"#,
            t(10 + i as i64)
        )
        .into_bytes();
        p.extend_from_slice(bytes);
        if i < 4 {
            p.extend_from_slice(br#""}"#);
        }
        push(label, &cons, p, Expect::Rows("malformed_payload", 1));
    }
    push(
        "bare invalid bytes",
        &gw,
        [b"\xff\xfe\x00\x00".as_slice(), r.to_string().as_bytes()].concat(),
        Expect::Rows("malformed_payload", 1),
    );

    // NUL bytes: raw (not JSON) and escaped (JSON, but in no known name).
    push(
        "a raw NUL inside a JSON string",
        &cons,
        format!(
            r#"{{"ts": {}, "metric": "po{}wer", "value": 1.0}}"#,
            t(20),
            '\0'
        )
        .into_bytes(),
        Expect::Rows("malformed_payload", 1),
    );
    push(
        "a NUL after the JSON",
        &cons,
        format!(
            r#"{{"ts": {}, "metric": "power", "value": -3.5}}{}"#,
            t(21),
            '\0'
        )
        .into_bytes(),
        Expect::Rows("malformed_payload", 1),
    );
    push(
        "a NUL between array elements",
        &cons,
        format!(
            r#"[{{"ts": {}, "metric": "power", "value": -3.5}},{}{{"ts": {}, "metric": "power", "value": -3.5}}]"#,
            t(22),
            '\0',
            t(23)
        )
        .into_bytes(),
        Expect::Rows("malformed_payload", 1),
    );
    push(
        "1,000 NUL bytes",
        &gw,
        [vec![0u8; 1000], r.to_string().into_bytes()].concat(),
        Expect::Rows("malformed_payload", 1),
    );
    push(
        "an escaped NUL in the metric name",
        &cons,
        format!(
            r#"{{"ts": {}, "metric": "po\u0000wer", "value": 1.0}}"#,
            t(24)
        )
        .into_bytes(),
        Expect::Rows("unknown_metric", 1),
    );
    push(
        "an escaped NUL after the metric name",
        &cons,
        format!(
            r#"{{"ts": {}, "metric": "power\u0000", "value": 1.0}}"#,
            t(25)
        )
        .into_bytes(),
        Expect::Rows("unknown_metric", 1),
    );
    push(
        "an escaped NUL in the unit",
        &cons,
        format!(
            r#"{{"ts": {}, "metric": "power", "value": 1.0, "unit": "kW\u0000"}}"#,
            t(26)
        )
        .into_bytes(),
        Expect::Rows("invalid_unit", 1),
    );
    push(
        "an escaped NUL in the quality",
        &cons,
        format!(
            r#"{{"ts": {}, "metric": "power", "value": 1.0, "quality": "good\u0000"}}"#,
            t(27)
        )
        .into_bytes(),
        Expect::Rows("invalid_quality", 1),
    );
    push(
        "an escaped NUL in an RFC 3339 timestamp",
        &cons,
        format!(
            r#"{{"ts": "{}\u0000", "metric": "power", "value": 1.0}}"#,
            chrono::DateTime::from_timestamp_millis(t(28))
                .expect("ts")
                .to_rfc3339()
        )
        .into_bytes(),
        Expect::Rows("invalid_timestamp", 1),
    );
    push(
        "an escaped NUL in a gateway reading's meter id",
        &gw,
        format!(
            r#"[{{"meter": "{}\u0000", "ts": {}, "metric": "power", "value": 1.0}}]"#,
            c.cons_ext,
            t(29)
        )
        .into_bytes(),
        Expect::Rows("unknown_entity", 1),
    );
    push(
        "a lone surrogate escape in the metric name",
        &cons,
        format!(
            r#"{{"ts": {}, "metric": "\ud800power", "value": 1.0}}"#,
            t(30)
        )
        .into_bytes(),
        Expect::Recorded,
    );
    push(
        "look-alike metric names (zero-width space, fullwidth)",
        &cons,
        format!(
            r#"[{{"ts": {}, "metric": "power\u200b", "value": 1.0}}, {{"ts": {}, "metric": "ｐｏｗｅｒ", "value": 1.0}}]"#,
            t(31),
            t(32)
        )
        .into_bytes(),
        Expect::Rows("unknown_metric", 2),
    );

    // Numbers no double holds (as a value, no reading of these could be stored).
    for (i, (label, value)) in [
        ("value 1e400", "1e400".to_string()),
        ("value -1e400", "-1e400".to_string()),
        (
            "a negative value of 200,000 digits",
            format!("-{}", repeat("9", 200_000)),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        push(
            label,
            &cons,
            format!(
                r#"{{"ts": {}, "metric": "power", "value": {value}}}"#,
                t(40 + i as i64)
            )
            .into_bytes(),
            Expect::Recorded,
        );
    }
    push(
        "timestamps no clock holds",
        &cons,
        format!(
            r#"[{{"ts": 1e400, "metric": "power", "value": {r}}}, {{"ts": 99999999999999999999999, "metric": "power", "value": 1.0}}]"#
        )
        .into_bytes(),
        Expect::Recorded,
    );
    push(
        "impossible instants",
        &cons,
        format!(
            r#"[{{"ts": "2026-02-30T00:00:00Z", "metric": "power", "value": {r}}}, {{"ts": "0000-00-00T00:00:00Z", "metric": "power", "value": 1.0}}, {{"ts": -9223372036854775808, "metric": "power", "value": 1.0}}, {{"ts": "+275760-09-13T00:00:00Z", "metric": "power", "value": 1.0}}]"#
        )
        .into_bytes(),
        Expect::Count(4),
    );
    push(
        "values that are not numbers",
        &cons,
        format!(
            r#"[{{"ts": {}, "metric": "power", "value": "NaN"}}, {{"ts": {}, "metric": "power", "value": null}}, {{"ts": {}, "metric": "power", "value": [1]}}, {{"ts": {}, "metric": "power", "value": {{"$numberDouble": "1"}}}}]"#,
            t(50),
            t(51),
            t(52),
            t(53)
        )
        .into_bytes(),
        Expect::Rows("invalid_value", 4),
    );

    // Very long strings where short names belong.
    let long = repeat("W", 200_000);
    push(
        "a 200,000-character metric name",
        &cons,
        format!(r#"{{"ts": {}, "metric": "{long}", "value": 1.0}}"#, t(60)).into_bytes(),
        Expect::Rows("unknown_metric", 1),
    );
    push(
        "a 200,000-character unit",
        &cons,
        format!(
            r#"{{"ts": {}, "metric": "power", "value": 1.0, "unit": "k{long}"}}"#,
            t(61)
        )
        .into_bytes(),
        Expect::Rows("invalid_unit", 1),
    );
    push(
        "a 200,000-character quality",
        &cons,
        format!(
            r#"{{"ts": {}, "metric": "power", "value": 1.0, "quality": "{long}"}}"#,
            t(62)
        )
        .into_bytes(),
        Expect::Rows("invalid_quality", 1),
    );
    push(
        "a 200,000-character timestamp",
        &cons,
        format!(r#"{{"ts": "2026{long}", "metric": "power", "value": {r}}}"#).into_bytes(),
        Expect::Rows("invalid_timestamp", 1),
    );
    push(
        "a 200,000-character meter id in a gateway reading",
        &gw,
        format!(
            r#"[{{"meter": "{long}{r}", "ts": {}, "metric": "power", "value": 1.0}}]"#,
            t(63)
        )
        .into_bytes(),
        Expect::Rows("unknown_entity", 1),
    );
    push(
        "a 60,000-character meter id in the topic",
        &meter_topic(&format!("{}{r}", repeat("m", 60_000))),
        valid(t(64), 1.0).into_bytes(),
        Expect::Rows("unknown_entity", 1),
    );
    push(
        "an emoji meter id in the topic",
        &meter_topic(&format!("\u{1F600}{r}")),
        valid(t(65), 1.0).into_bytes(),
        Expect::Rows("unknown_entity", 1),
    );
    push(
        "an empty entity level in the topic",
        "enalysis/v1/meters//readings",
        valid(t(66), 1.0).into_bytes(),
        Expect::Rows("unknown_topic", 1),
    );

    // Keys: many, repeated.
    push(
        "10,000 unknown keys beside a reading",
        &cons,
        format!(
            r#"{{"ts": {}, "metric": "power", "value": -3.5, {}"k": 0}}"#,
            t(70),
            (0..10_000)
                .map(|i| format!(r#""k{i}": {i}, "#))
                .collect::<String>()
        )
        .into_bytes(),
        Expect::Recorded,
    );
    push(
        "a repeated value key",
        &cons,
        format!(
            r#"{{"ts": {}, "metric": "power", "value": -1.0, "value": -3.5}}"#,
            t(71)
        )
        .into_bytes(),
        Expect::Recorded,
    );
    push(
        "a repeated metric key",
        &cons,
        format!(
            r#"{{"ts": {}, "metric": "power", "metric": "energy", "value": -3.5}}"#,
            t(72)
        )
        .into_bytes(),
        Expect::Recorded,
    );
    push(
        "a repeated ts key",
        &cons,
        format!(
            r#"{{"ts": {}, "ts": {}, "metric": "power", "value": -3.5}}"#,
            t(73),
            t(74)
        )
        .into_bytes(),
        Expect::Recorded,
    );
    push(
        "a repeated metric in values",
        &cons,
        format!(
            r#"{{"ts": {}, "values": {{"power": -1.0, "power": -3.5}}}}"#,
            t(75)
        )
        .into_bytes(),
        Expect::Recorded,
    );
    push(
        "a repeated entity key in a gateway reading",
        &gw,
        format!(
            r#"[{{"meter": "{}", "meter": "{}", "ts": {}, "metric": "power", "value": -3.5}}]"#,
            Uuid::new_v4(),
            c.cons_ext,
            t(76)
        )
        .into_bytes(),
        Expect::Recorded,
    );
    push(
        "a gateway reading naming a meter and an asset",
        &gw,
        format!(
            r#"[{{"meter": "{}", "asset": "{}", "ts": {}, "metric": "power", "value": -3.5}}]"#,
            c.cons_uuid,
            c.asset_uuid,
            t(77)
        )
        .into_bytes(),
        Expect::Recorded,
    );

    // Shapes that are no reading at all.
    for (i, (label, payload)) in [
        ("an empty payload", String::new()),
        ("250 KiB of whitespace", repeat(" \n\t\r", 64_000)),
        ("a JSON string", format!(r#""power {r}""#)),
        ("JSON null", "null".to_string()),
        ("JSON true", "true".to_string()),
        ("a JSON number", r.to_string()),
        (
            "a BOM before a reading",
            format!("\u{FEFF}{}", valid(t(80), -3.5)),
        ),
        (
            "trailing garbage after a reading",
            format!("{} }}", valid(t(81), -3.5)),
        ),
        ("a reading cut short", valid(t(82), 1.0)[..20].to_string()),
    ]
    .into_iter()
    .enumerate()
    {
        // One gateway topic per shape and round: an empty payload has no byte to vary.
        push(
            label,
            &format!("enalysis/v1/gateways/gw-shape-{r}-{i}/readings"),
            payload.into_bytes(),
            Expect::Rows("malformed_payload", 1),
        );
    }
    push(
        "an empty array",
        &format!("enalysis/v1/gateways/gw-empty-{r}/readings"),
        b"[]".to_vec(),
        Expect::Recorded,
    );
    push(
        "an array of empty objects and scalars",
        &cons,
        format!(r#"[{{}}, 1, "x", null, true, [], {{"ts": {}}}]"#, t(83)).into_bytes(),
        Expect::Recorded,
    );

    // The expensive ones, on some rounds only: one message, tens of thousands of rejections.
    if r % 4 == 1 {
        push(
            "10,000 unknown metrics in values",
            &cons,
            format!(
                r#"{{"ts": {}, "values": {{{}"m": 1}}}}"#,
                t(90),
                (0..9_999)
                    .map(|i| format!(r#""m{i}": {i}, "#))
                    .collect::<String>()
            )
            .into_bytes(),
            Expect::Rows("unknown_metric", 10_000),
        );
    }
    if r.is_multiple_of(ROUNDS / 2) {
        // [1,1,1,…] up to just under the limit, one byte varied.
        let n = (MAX_PAYLOAD - 2) / 2;
        let mut s = String::with_capacity(MAX_PAYLOAD);
        s.push('[');
        for i in 0..n {
            if i > 0 {
                s.push(',');
            }
            s.push(if i == r { '2' } else { '1' });
        }
        s.push(']');
        assert!(s.len() < MAX_PAYLOAD);
        push(
            "[1,1,1,…] just under the size limit",
            &cons,
            s.into_bytes(),
            Expect::Reason("malformed_payload"),
        );
    }
    out
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"))
}

/// Whether `pid` is running (not exited: our child stays a zombie until it is reaped).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            rest.trim_start().chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Samples the daemon's VmRSS every 50 ms and SIGKILLs it above a limit far above any bound,
/// so that a daemon gone wrong (the wedge of issue #11 reached GBs) fails the test at once
/// instead of taking a shared CI machine down with it; the waits see it gone. Stops when dropped.
///
/// With the daemon's HTTP port it also keeps the highest `ingest_buffered_bytes` it saw: not
/// part of the contract and not asserted, only printed beside the RSS figures, to tell memory
/// the budget accounts for from memory outside it when the bound is missed.
struct Watchdog {
    limit_kib: u64,
    fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
    max_buffered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    fn start(pid: i32, limit_kib: u64, http_port: Option<u16>) -> Watchdog {
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let max_buffered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let flag = fired.clone();
        let buffered = max_buffered.clone();
        let task = tokio::spawn(async move {
            while running(pid) {
                if let Some(port) = http_port {
                    let metrics = support::http_get(port, "/metrics").await;
                    if let Some(v) = metrics
                        .lines()
                        .find_map(|l| l.strip_prefix("ingest_buffered_bytes "))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                    {
                        buffered.fetch_max(v as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))?
                            .split_whitespace()
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0);
                if rss > limit_kib {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    eprintln!("watchdog: the daemon's VmRSS is {rss} KiB; killing it");
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Watchdog {
            limit_kib,
            fired,
            max_buffered,
            task,
        }
    }

    /// The highest `ingest_buffered_bytes` seen, in bytes (0 without a port or the metric).
    fn max_buffered(&self) -> u64 {
        self.max_buffered.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_hostile_corpus_interleaved_with_valid_readings() {
    let s = setup().await;
    let mut env = daemon_env(&s.db, &s.broker.url());
    let port = with_http_port(&mut env);
    env.push((
        "ENALYSIS_INGEST__MAX_BUFFERED_BYTES".into(),
        BUDGET.to_string(),
    ));
    // Room for the corpus's 1 MiB messages and a little more: 11 packets of this size are
    // the read reserve within the budget (the default 4 MiB would need a 48 MiB budget).
    env.push((
        "ENALYSIS_MQTT__MAX_PACKET_BYTES".into(),
        MAX_PACKET.to_string(),
    ));
    let daemon = Daemon::start(&env).await;
    let pid = daemon.pid();
    let watchdog = Watchdog::start(pid, 2 * 1024 * 1024, Some(port));
    let p = Publisher::connect(&s.broker.url()).await;
    let cons_ext: String = s
        .client
        .query_one(
            "SELECT external_id FROM meters WHERE id = $1",
            &[&s.ids.meter],
        )
        .await
        .expect("external id")
        .get(0);

    // Valid reading `i`: value 10,000 + i at its own second of the last two hours.
    let valid_topic = meter_topic(&s.ids.meter.to_string());
    let valid_base = now_ms() - 2 * 3_600_000;
    let valid_value = |i: usize| 10_000.0 + i as f64;
    let valid_msg = |i: usize| valid(valid_base + i as i64 * 1000, valid_value(i));

    // Up and idle: the first valid reading is stored, then the daemon's base RSS is read.
    p.publish(&valid_topic, valid_msg(0)).await;
    let mut published = 1usize;
    wait_i64(
        &s.client,
        &daemon,
        "the first valid reading",
        "SELECT count(*) FROM measurements",
        &[],
        1,
        Duration::from_secs(30),
    )
    .await;
    let base_kib = proc_status_kib(pid, "VmRSS");

    let ctx = Ctx {
        cons_uuid: s.ids.meter.to_string(),
        cons_ext,
        asset_uuid: s.ids.asset.to_string(),
        base_ms: now_ms() - DAY_MS / 2,
        day_ago_ms: now_ms() - DAY_MS + 120_000,
    };
    let mut sent: Vec<Sent> = Vec::new();
    let mut next_valid = 1usize;
    let mut hostile_bytes = 0u64;
    let started = Instant::now();
    for r in 0..ROUNDS {
        let messages = round(r, &ctx);
        let m = messages.len();
        // This round's share of the valid readings, spread over its hostile messages.
        let (from, to) = (next_valid, 1 + (r + 1) * (VALID - 1) / ROUNDS);
        for (j, h) in messages.into_iter().enumerate() {
            hostile_bytes += h.payload.len() as u64;
            let kept = &h.payload[..h.payload.len().min(MAX_PAYLOAD)];
            sent.push(Sent {
                label: h.label,
                digest: digest(&h.topic, &h.payload),
                kept_sha256: Sha256::digest(kept).to_vec(),
                topic: h.topic.clone(),
                len: h.payload.len(),
                expect: h.expect,
            });
            p.publish(&h.topic, h.payload).await;
            published += 1;
            while next_valid < from + (j + 1) * (to - from) / m {
                p.publish(&valid_topic, valid_msg(next_valid)).await;
                next_valid += 1;
                published += 1;
            }
            // The broker owns what it acknowledged; keep the publisher's own queue short.
            if published > PUBLISH_WINDOW {
                p.wait_acked(published - PUBLISH_WINDOW).await;
            }
        }
    }
    assert_eq!(next_valid, VALID, "every valid reading was published");
    p.wait_acked(published).await;
    let published_in = started.elapsed();
    let unique: std::collections::HashSet<&[u8]> =
        sent.iter().map(|m| m.digest.as_slice()).collect();
    assert_eq!(unique.len(), sent.len(), "every hostile message is unique");
    assert!(
        hostile_bytes >= 8 * BUDGET,
        "the corpus ({hostile_bytes} bytes) must exceed the budget eight times"
    );
    let reasons: BTreeMap<&str, usize> = sent.iter().fold(BTreeMap::new(), |mut acc, m| {
        *acc.entry(match m.expect {
            Expect::TooLarge => "too large",
            Expect::Rows(..) | Expect::Count(_) => "exact rows",
            Expect::Reason(_) => "one reason",
            Expect::Recorded => "recorded",
        })
        .or_default() += 1;
        acc
    });
    println!(
        "hostile corpus: {} messages ({reasons:?}), {:.1} MiB, and {VALID} valid readings, \
         published in {:.1} s",
        sent.len(),
        hostile_bytes as f64 / 1048576.0,
        published_in.as_secs_f64(),
    );

    // Everything lands: the valid readings (the last ones were published after the last
    // hostile message), and at least one row for every hostile message.
    wait_i64(
        &s.client,
        &daemon,
        "every valid reading",
        "SELECT count(*) FROM measurements",
        &[],
        VALID as i64,
        Duration::from_secs(120),
    )
    .await;
    let digests: Vec<&[u8]> = sent.iter().map(|m| m.digest.as_slice()).collect();
    wait_i64(
        &s.client,
        &daemon,
        "a rejection row for every hostile message",
        "SELECT count(DISTINCT message_digest) FROM rejected_readings
         WHERE message_digest = ANY($1)",
        &[&digests],
        sent.len() as i64,
        Duration::from_secs(30),
    )
    .await;
    let drained_in = started.elapsed();

    // The valid readings, each exactly once: the set of values is the set sent.
    let values: Vec<f64> = s
        .client
        .query(
            "SELECT value FROM measurements WHERE entity_id = $1 ORDER BY value",
            &[&s.ids.meter],
        )
        .await
        .expect("values")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<f64> = (0..VALID).map(valid_value).collect();
    assert!(
        values == expected,
        "{} valid readings stored; missing {:?}; unexpected {:?}",
        values.len(),
        expected
            .iter()
            .filter(|v| !values.contains(v))
            .take(20)
            .collect::<Vec<_>>(),
        values
            .iter()
            .filter(|v| !expected.contains(v))
            .take(20)
            .collect::<Vec<_>>()
    );

    // Every hostile message: its rows, their reasons, its size, its bytes.
    let mut failures: Vec<String> = Vec::new();
    let groups: HashMap<Vec<u8>, (i64, Vec<String>, i32, i32)> = s
        .client
        .query(
            "SELECT message_digest, count(*),
                    array_agg(DISTINCT reason::text ORDER BY reason::text),
                    min(payload_size), max(payload_size)
             FROM rejected_readings GROUP BY message_digest",
            &[],
        )
        .await
        .expect("rejections by message")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();
    let kept: HashMap<Vec<u8>, (Vec<u8>, String)> = s
        .client
        .query(
            "SELECT r.message_digest, sha256(r.payload), r.topic
             FROM rejected_readings r
             JOIN (SELECT message_digest, min(seq) AS seq FROM rejected_readings
                   WHERE message_digest = ANY($1) GROUP BY message_digest) first
               USING (message_digest, seq)",
            &[&digests],
        )
        .await
        .expect("stored payloads")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut rows_total = 0i64;
    for m in &sent {
        let Some((rows, reasons, min_size, max_size)) = groups.get(&m.digest) else {
            failures.push(format!("{}: no row in rejected_readings", m.label));
            continue;
        };
        rows_total += rows;
        let only = |reason: &str| reasons.len() == 1 && reasons[0] == reason;
        let ok = match m.expect {
            Expect::Recorded => true,
            Expect::Reason(reason) => only(reason),
            Expect::Rows(reason, n) => only(reason) && *rows == n,
            Expect::Count(n) => *rows == n,
            Expect::TooLarge => only("payload_too_large") && *rows == 1,
        };
        if !ok {
            failures.push(format!(
                "{}: expected {:?}, found {rows} row(s) with reasons {reasons:?}",
                m.label, m.expect
            ));
        }
        if (*min_size, *max_size) != (m.len as i32, m.len as i32) {
            failures.push(format!(
                "{}: payload_size {min_size}..{max_size}, sent {} bytes",
                m.label, m.len
            ));
        }
        match kept.get(&m.digest) {
            Some((sha, topic)) if *sha == m.kept_sha256 && *topic == m.topic => {}
            Some((_, topic)) => failures.push(format!(
                "{}: the stored payload is not the bytes sent (first {MAX_PAYLOAD} at most){}",
                m.label,
                if *topic == m.topic {
                    ""
                } else {
                    ", nor the topic"
                }
            )),
            None => failures.push(format!("{}: no stored payload", m.label)),
        }
    }
    let strangers = groups
        .keys()
        .filter(|d| !unique.contains(d.as_slice()))
        .count();
    if strangers > 0 {
        failures.push(format!(
            "{strangers} message(s) rejected that are not in the corpus (valid readings?)"
        ));
    }
    let shown: Vec<&String> = failures.iter().take(40).collect();
    assert!(
        failures.is_empty(),
        "{} problem(s) with the rejections, the first {}:\n{}",
        failures.len(),
        shown.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Alive, and within its memory bound.
    assert!(running(pid), "the daemon exited:\n{}", daemon.log_text());
    let health = support::http_get(port, "/healthz").await;
    assert!(health.starts_with("HTTP/1.0 200"), "/healthz: {health}");
    let log = daemon.log_text();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    let retries = log
        .lines()
        .filter(|l| l.contains("batch not written; retrying"))
        .count();
    let hwm_kib = proc_status_kib(pid, "VmHWM");
    assert!(
        !watchdog.fired(),
        "the daemon's RSS passed {} KiB: killed",
        watchdog.limit_kib
    );
    let bound_kib = 2 * BUDGET / 1024 + base_kib;
    println!(
        "hostile corpus: {rows_total} rejection rows; all stored {:.1} s after the first \
         publish; {retries} batch retries",
        drained_in.as_secs_f64(),
    );
    println!(
        "daemon memory: base VmRSS {:.1} MiB, peak VmHWM {:.1} MiB, bound 2 × {} MiB + base = \
         {:.1} MiB (ingest_buffered_bytes peaked at {:.1} MiB)",
        base_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0,
        BUDGET / 1048576,
        bound_kib as f64 / 1024.0,
        watchdog.max_buffered() as f64 / 1048576.0
    );
    assert!(
        hwm_kib <= bound_kib,
        "peak RSS {hwm_kib} KiB above 2 × budget + base = {bound_kib} KiB"
    );
}
