//! Fuzz target: `validate::judge` (topic + payload bytes → outcome), the daemon's whole decode
//! and validation path, against a small registry.
//!
//! Input: the topic up to the first `\n`, the payload after it (no `\n`: all topic, empty
//! payload), so the seeds in `corpus/judge/` read like the messages they stand for. The topic is
//! made text with `from_utf8_lossy`, exactly as `batch` does with what the broker delivers.
//!
//! Invariants checked for every input (those of tests/it/properties.rs, plus the accounting):
//! - no panic (debug assertions and overflow checks are on in fuzz builds);
//! - a message leaves a trace: something accepted or something rejected;
//! - a whole-message rejection is exactly one rejection with `seq` 0 and nothing accepted;
//!   otherwise every reading the decoder found gets exactly one outcome, and the rejected ones
//!   carry distinct `seq` numbers below that count;
//! - an accepted reading has a catalogue metric in its canonical unit, a finite value within the
//!   metric's physical bounds, a `ts` inside the window, an entity of the registry of the kind
//!   it claims, and obeys the meter-category rules;
//! - a rejection has a non-empty detail without NUL, and a short printable metric if any;
//! - judging is deterministic: the same bytes judged again give the same outcome;
//! - the writer's encoding of the rejections (`rejections::encode`, `rejections::chunks`): one message
//!   row holding the kept payload exactly, runs that stand for every rejected reading once,
//!   no NUL in any text, chunks within their bounds, and what is stored for the message bounded
//!   by a small multiple of its size whatever it holds.

#![no_main]

use std::sync::LazyLock;

use chrono::{DateTime, Duration, Utc};
use enalysis_core::batch::{Contents, Message};
use enalysis_core::catalogue;
use enalysis_core::decode::{self, Target};
use enalysis_core::fixture;
use enalysis_core::model::{MeterCategory, Outcome};
use enalysis_core::registry::Registry;
use enalysis_core::rejections::{self, Form};
use enalysis_core::validate::{Context, Limits, judge};
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "enalysis/v1";

/// libFuzzer's inputs are at most 4096 bytes (its default `-max_len`): a smaller limit lets
/// the fuzzer reach `payload_too_large` too.
const MAX_PAYLOAD: usize = 3 * 1024;

struct World {
    registry: Registry,
    limits: Limits,
    now: DateTime<Utc>,
}

/// The registry shared with validate's unit tests and the property tests
/// (`enalysis_core::fixture`). Keys as in `corpus/judge/` and `judge.dict`.
static WORLD: LazyLock<World> = LazyLock::new(|| World {
    registry: fixture::registry(),
    limits: Limits {
        max_payload_bytes: MAX_PAYLOAD,
        max_clock_skew: Duration::minutes(5),
        max_age: Duration::days(400),
    },
    now: DateTime::parse_from_rfc3339("2026-11-24T15:00:00Z")
        .expect("fixed instant")
        .with_timezone(&Utc),
});

fuzz_target!(|data: &[u8]| {
    let (topic, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let raw_topic = topic;
    let topic = String::from_utf8_lossy(topic);
    let w = &*WORLD;
    let ctx = Context {
        prefix: PREFIX,
        registry: &w.registry,
        limits: &w.limits,
        now: w.now,
    };
    let out = judge(&topic, payload, &ctx);
    check(&topic, payload, &out, w);
    assert_eq!(
        out,
        judge(&topic, payload, &ctx),
        "judging is not deterministic"
    );
    check_encoding(&topic, raw_topic, payload, out, w);
});

/// What the writer would store for this message's rejections.
fn check_encoding(topic: &str, raw_topic: &[u8], payload: &[u8], out: Outcome, w: &World) {
    let rejected_readings = out.rejected_readings();
    let message = Message::new(
        topic.to_owned(),
        raw_topic,
        bytes::Bytes::copy_from_slice(payload),
        w.now,
        MAX_PAYLOAD,
        !out.rejected.is_empty(),
    );
    // The part the writer would see for a batch of this one message: the daemon's batch
    // collects into the same `Contents`.
    let mut contents = Contents::default();
    contents.push(message, out);
    let rows = rejections::encode(&contents.whole(), &[], Form::Judged);
    if rejected_readings == 0 {
        assert!(rows.messages.is_empty() && rows.runs.is_empty(), "{rows:?}");
        return;
    }
    assert_eq!(rows.messages.len(), 1, "one message row: {rows:?}");
    let m = &rows.messages[0];
    let kept = &payload[..payload.len().min(MAX_PAYLOAD)];
    assert_eq!(m.payload, kept, "the payload kept exactly");
    assert_eq!(m.payload_size as usize, payload.len());
    assert_eq!(
        m.is_text,
        std::str::from_utf8(kept).is_ok_and(|t| !t.contains('\0'))
    );
    assert!(!m.topic.contains('\0'));
    let mut covered: Vec<(i32, i32)> = Vec::new();
    for r in &rows.runs {
        assert_eq!(r.digest, m.digest);
        assert!(r.count >= 1 && r.seq >= 0, "{r:?}");
        assert!(!r.detail.contains('\0') && !r.detail.is_empty(), "{r:?}");
        assert!(r.metric.as_ref().is_none_or(|x| !x.contains('\0')), "{r:?}");
        covered.push((r.seq, r.seq + r.count));
    }
    covered.sort_unstable();
    assert!(
        covered.windows(2).all(|p| p[0].1 <= p[1].0),
        "runs overlap: {covered:?}"
    );
    let total: usize = rows.runs.iter().map(|r| r.count as usize).sum();
    assert_eq!(total, rejected_readings, "every rejected reading once");
    // The budget of the issue: what one message costs to store grows with its size, not with
    // readings × size. Run rows cost ~130 bytes + their detail; the smallest element that
    // earns a row of its own is ~13 bytes (`{"a":1,"a":1}`), so 24x covers every shape.
    let weight: usize = m.weight() + rows.runs.iter().map(|r| r.weight()).sum::<usize>();
    assert!(
        weight <= 24 * (kept.len() + topic.len()) + 2048,
        "{weight} bytes stored for a {} byte message: {rows:?}",
        kept.len()
    );
    for chunk in rejections::chunks(&rows.runs, |r| r.weight()) {
        let bytes: usize = chunk.iter().map(|r| r.weight()).sum();
        assert!(chunk.len() <= rejections::CHUNK_ROWS);
        assert!(chunk.len() == 1 || bytes <= rejections::CHUNK_BYTES);
    }
}

fn check(topic: &str, payload: &[u8], out: &Outcome, w: &World) {
    assert!(
        !out.accepted.is_empty() || !out.rejected.is_empty(),
        "a message must leave a trace"
    );

    // Accounting: how many readings the message stands for, when it is judged reading by
    // reading at all.
    let per_reading = payload.len() <= MAX_PAYLOAD
        && match decode::parse_topic(PREFIX, topic) {
            None => false,
            Some(Target::Gateway { .. }) => true,
            Some(Target::Entity { kind, key }) => w.registry.resolve(kind, key).is_some(),
        };
    let readings = if per_reading {
        decode::decode(payload)
            .ok()
            .map(|decoded| decoded.elements.iter().map(|e| e.readings()).sum::<usize>())
    } else {
        None
    };
    match readings {
        None => {
            assert!(
                out.accepted.is_empty(),
                "accepted from a rejected message: {out:?}"
            );
            assert_eq!(
                out.rejected.len(),
                1,
                "one whole-message rejection: {out:?}"
            );
            assert_eq!(
                (out.rejected[0].seq, out.rejected[0].count),
                (0, 1),
                "{out:?}"
            );
        }
        Some(n) => {
            assert_eq!(
                out.accepted.len() + out.rejected_readings(),
                n,
                "every reading exactly one outcome: {out:?}"
            );
            // A run stands for `count` readings, seq after seq.
            let mut seqs: Vec<u32> = out
                .rejected
                .iter()
                .flat_map(|r| {
                    assert!(r.count >= 1, "empty run: {out:?}");
                    r.seq..r.seq + r.count
                })
                .collect();
            seqs.sort_unstable();
            seqs.dedup();
            assert_eq!(
                seqs.len(),
                out.rejected_readings(),
                "duplicate seq: {out:?}"
            );
            assert!(
                seqs.iter().all(|&s| (s as usize) < n),
                "seq beyond the readings: {out:?}"
            );
            // Independently of the decoder: a JSON array of k elements is at least k readings.
            if let Ok(serde_json::Value::Array(items)) =
                serde_json::from_slice::<serde_json::Value>(payload)
            {
                assert!(
                    n >= items.len(),
                    "{n} readings for {} elements",
                    items.len()
                );
            }
        }
    }

    let latest = w.now + w.limits.max_clock_skew;
    let earliest = w.now - w.limits.max_age;
    for r in &out.accepted {
        let m = catalogue::lookup(r.metric).expect("accepted metrics are in the catalogue");
        assert_eq!(r.metric, m.name, "{r:?}");
        assert_eq!(r.unit, m.unit, "canonical unit: {r:?}");
        assert!(r.value.is_finite(), "{r:?}");
        assert!(
            r.value >= m.min && r.value <= m.max,
            "outside bounds: {r:?}"
        );
        assert!(
            r.ts <= latest && r.ts >= earliest,
            "ts outside the window: {r:?}"
        );
        let entity = w
            .registry
            .get(r.entity_type, r.entity_id)
            .expect("accepted readings belong to a registered entity");
        assert_eq!(entity.kind, r.entity_type, "{r:?}");
        if m.directional && r.value < 0.0 {
            assert_eq!(entity.category, MeterCategory::Stor, "negative flow: {r:?}");
        }
        if m.storage_only {
            assert!(
                entity.category == MeterCategory::Stor || entity.is_battery,
                "storage-only metric: {r:?}"
            );
        }
    }
    for j in &out.rejected {
        assert!(!j.detail.is_empty(), "{j:?}");
        assert!(!j.detail.contains('\0'), "NUL in detail: {j:?}");
        if let Some(metric) = &j.metric {
            assert!(
                metric.chars().count() <= 100 && !metric.chars().any(char::is_control),
                "metric echoed unclean: {j:?}"
            );
        }
        if let (Some(kind), Some(id)) = (j.entity_type, j.entity_id) {
            assert!(
                w.registry.get(kind, id).is_some(),
                "unknown entity id: {j:?}"
            );
        }
    }
}
