//! Validation: the rules of CONTRACT.md §4, applied to what [`crate::decode`] made of a message.
//! [`judge`] is the one entry point: topic and payload bytes in, an [`Outcome`] out, in which
//! every reading is either accepted (canonical metric, unit and value) or rejected with exactly
//! one reason.
//!
//! Architecture Invariant: judging is a pure function of the message, the registry snapshot, the
//! limits and the receipt time. The same bytes judged again give the same outcome, `seq` for
//! `seq`, which is what lets a redelivered message map onto the rejection rows already stored.
//!
//! The rules, per reading, in order; the first that fails is the reason:
//! entity → timestamp → metric → unit → value → quality → physical bounds → meter category.
//! Before them come the message-level checks, each of which rejects the whole message once
//! (`seq` 0): size, topic, the topic's entity, and the JSON itself.

use chrono::{DateTime, Duration, SecondsFormat, SubsecRound, Utc};

use crate::catalogue::{self, Metric};
use crate::decode::{self, Element, Json, Metrics, Num, Object, Quoted, Target};
use crate::model::{
    Entity, EntityKind, MeterCategory, Outcome, Quality, Reading, Reason, Rejection,
};
use crate::registry::Registry;

/// The configurable limits of validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A larger payload is rejected unparsed (`payload_too_large`): it bounds the work one
    /// message can cause.
    pub max_payload_bytes: usize,
    /// How far a gateway clock may run ahead of ours before a reading is `future_timestamp`.
    pub max_clock_skew: Duration,
    /// How old a reading may be before it is `stale_timestamp`: older ones would land in
    /// partitions that retention has dropped or never created.
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_clock_skew: Duration::minutes(5),
            max_age: Duration::days(400),
        }
    }
}

/// Everything a message is judged against besides its own bytes.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The topic prefix, e.g. `enalysis/v1`; may contain slashes.
    pub prefix: &'a str,
    pub registry: &'a Registry,
    pub limits: &'a Limits,
    /// When the message was received: the reference for the timestamp window.
    pub now: DateTime<Utc>,
}

/// Judges one MQTT message.
pub fn judge(topic: &str, payload: &[u8], ctx: &Context<'_>) -> Outcome {
    let mut out = Outcome::default();
    if let Some(detail) = decode::oversize(payload.len(), ctx.limits.max_payload_bytes) {
        out.reject(Rejection::new(Reason::PayloadTooLarge, 0, detail));
        return out;
    }
    let Some(target) = decode::parse_topic(ctx.prefix, topic) else {
        let detail = format!(
            "topic {} does not match {}/{{meters|assets|energy-sources|gateways}}/{{key}}/readings",
            Quoted(topic),
            ctx.prefix.trim_end_matches('/'),
        );
        out.reject(Rejection::new(Reason::UnknownTopic, 0, detail));
        return out;
    };
    // The topic's entity is resolved once for the whole message.
    let topic_entity = match target {
        Target::Entity { kind, key } => match ctx.registry.resolve(kind, key) {
            Some(entity) => Some(entity),
            None => {
                let detail = format!(
                    "{} {} in the topic is not an active {}",
                    kind.as_str(),
                    Quoted(key),
                    noun(kind)
                );
                let mut r = Rejection::new(Reason::UnknownEntity, 0, detail);
                r.entity_type = Some(kind);
                out.reject(r);
                return out;
            }
        },
        Target::Gateway { .. } => None,
    };
    let decoded = match decode::decode(payload) {
        Ok(decoded) => decoded,
        Err(detail) => {
            out.reject(with_entity(
                Rejection::new(Reason::MalformedPayload, 0, detail),
                topic_entity,
            ));
            return out;
        }
    };
    // Room for the readings of reading objects only: `[1,1,…]` accepts none.
    out.accepted.reserve(
        decoded
            .elements
            .iter()
            .filter(|e| matches!(e, Element::Reading(_)))
            .map(Element::readings)
            .sum(),
    );
    let window = Window::new(ctx);
    let mut seq: u32 = 0;
    for (index, element) in decoded.elements.into_iter().enumerate() {
        let element_index = decoded
            .array
            .then(|| u32::try_from(index).unwrap_or(u32::MAX));
        match element {
            Element::Malformed(detail) => {
                let mut r = Rejection::new(Reason::MalformedPayload, seq, detail);
                r.element = element_index;
                out.reject(with_entity(r, topic_entity));
                seq = seq.saturating_add(1);
            }
            Element::Reading(object) => {
                judge_object(
                    &object,
                    element_index,
                    topic_entity,
                    ctx.registry,
                    &window,
                    &mut seq,
                    &mut out,
                );
            }
        }
    }
    out
}

fn with_entity(mut r: Rejection, entity: Option<&Entity>) -> Rejection {
    if let Some(e) = entity {
        r.entity_type = Some(e.kind);
        r.entity_id = Some(e.id);
    }
    r
}

/// How an entity kind is named in prose.
fn noun(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::Meter => "meter",
        EntityKind::Asset => "asset",
        EntityKind::EnergySource => "energy source",
    }
}

/// The accepted range of timestamps for one message.
struct Window {
    now: DateTime<Utc>,
    /// `None` when `now + skew` is beyond chrono's range: nothing is too new then.
    latest: Option<DateTime<Utc>>,
    earliest: Option<DateTime<Utc>>,
    skew: Duration,
    max_age: Duration,
}

impl Window {
    fn new(ctx: &Context<'_>) -> Self {
        let limits = ctx.limits;
        Self {
            now: ctx.now,
            latest: ctx.now.checked_add_signed(limits.max_clock_skew),
            earliest: ctx.now.checked_sub_signed(limits.max_age),
            skew: limits.max_clock_skew,
            max_age: limits.max_age,
        }
    }

    fn check(&self, ts: DateTime<Utc>, raw: &Json<'_>) -> Result<(), (Reason, String)> {
        let now = || self.now.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        // Epoch milliseconds are echoed with the instant they stand for.
        let shown = || match raw {
            Json::Str(_) => raw.to_string(),
            _ => format!(
                "{raw} ({})",
                ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            ),
        };
        if self.latest.is_some_and(|latest| ts > latest) {
            return Err((
                Reason::FutureTimestamp,
                format!(
                    "ts {} is later than the receipt time {} plus the allowed clock skew of {}",
                    shown(),
                    now(),
                    Span(self.skew)
                ),
            ));
        }
        if self.earliest.is_some_and(|earliest| ts < earliest) {
            return Err((
                Reason::StaleTimestamp,
                format!(
                    "ts {} is older than the accepted age of {} before the receipt time {}",
                    shown(),
                    Span(self.max_age),
                    now()
                ),
            ));
        }
        Ok(())
    }
}

/// A duration in the largest whole unit that expresses it exactly.
struct Span(Duration);

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.num_seconds();
        match s {
            _ if s != 0 && s % 86_400 == 0 => write!(f, "{} days", s / 86_400),
            _ if s != 0 && s % 60 == 0 => write!(f, "{} min", s / 60),
            _ => write!(f, "{s} s"),
        }
    }
}

/// A canonical value with its unit, for details: `-3.2 kW`, or `0.9` when dimensionless.
struct Amount(f64, &'static str);

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.1.is_empty() {
            write!(f, "{}", Num(self.0))
        } else {
            write!(f, "{} {}", Num(self.0), self.1)
        }
    }
}

/// The parts of a reading object shared by all its readings (all metrics of a `values` map),
/// judged once. Each holds the rejection detail should its rule be the first to fail.
struct Shared<'r> {
    /// The entity's kind, when known even though the entity may not resolve.
    kind: Option<EntityKind>,
    entity: Result<&'r Entity, String>,
    ts: Result<DateTime<Utc>, String>,
    quality: Result<Quality, String>,
}

/// Judges every reading of one object, numbering them from `seq` on.
fn judge_object<'r>(
    object: &Object<'_>,
    element: Option<u32>,
    topic_entity: Option<&'r Entity>,
    registry: &'r Registry,
    window: &Window,
    seq: &mut u32,
    out: &mut Outcome,
) {
    let (kind, entity) = match topic_entity {
        Some(e) => (Some(e.kind), Ok(e)),
        None => gateway_entity(object, registry),
    };
    let shared = Shared {
        kind,
        entity,
        ts: parse_ts(object.ts.as_ref()),
        quality: parse_quality(object.quality.as_ref()),
    };
    let mut one = |metric: Name<'_>, value: Option<&Json<'_>>, unit: Option<&Json<'_>>| {
        match judge_reading(&shared, object.ts.as_ref(), window, metric, value, unit) {
            Ok(reading) => out.accepted.push(reading),
            Err((reason, detail)) => out.reject(Rejection {
                reason,
                detail,
                seq: *seq,
                count: 1,
                element,
                entity_type: shared.kind,
                entity_id: shared.entity.as_ref().ok().map(|e| e.id),
                metric: metric.known(),
                ts: shared.ts.as_ref().ok().copied(),
            }),
        }
        *seq = seq.saturating_add(1);
    };
    match &object.metrics {
        Metrics::Single {
            metric,
            value,
            unit,
        } => {
            let name = match metric {
                None => Name::Missing,
                Some(Json::Str(s)) => Name::Given(s),
                Some(other) => Name::NotAString(other),
            };
            one(name, value.as_ref(), unit.as_ref());
        }
        Metrics::Map(values) => {
            for (name, value) in values {
                one(Name::Given(name), Some(value), None);
            }
        }
    }
}

/// The metric name of a reading as sent.
#[derive(Clone, Copy)]
enum Name<'o> {
    Given(&'o str),
    NotAString(&'o Json<'o>),
    Missing,
}

impl Name<'_> {
    /// What to store in `rejected_readings.metric`: the canonical name, or the name as sent when
    /// it is short and printable (the detail echoes it escaped in any case).
    fn known(self) -> Option<String> {
        let Name::Given(s) = self else { return None };
        match catalogue::lookup(s) {
            Some(m) => Some(m.name.to_owned()),
            None if s.chars().count() <= 100 && !s.chars().any(char::is_control) => {
                Some(s.to_owned())
            }
            None => None,
        }
    }
}

/// The entity a gateway reading names with exactly one of `meter`, `asset`, `energy_source`.
fn gateway_entity<'r>(
    object: &Object<'_>,
    registry: &'r Registry,
) -> (Option<EntityKind>, Result<&'r Entity, String>) {
    let mut named = EntityKind::ALL
        .iter()
        .zip(&object.entity)
        .filter_map(|(kind, key)| key.as_ref().map(|key| (*kind, key)));
    let Some((kind, key)) = named.next() else {
        return (
            None,
            Err(
                "a reading on a gateway topic must name its entity with one of the keys \
                 \"meter\", \"asset\", \"energy_source\""
                    .to_owned(),
            ),
        );
    };
    if let Some((other, _)) = named.next() {
        return (
            None,
            Err(format!(
                "a reading on a gateway topic names more than one entity (\"{}\" and \"{}\"); \
                 exactly one is allowed",
                kind.as_str(),
                other.as_str()
            )),
        );
    }
    let Json::Str(key) = key else {
        return (
            Some(kind),
            Err(format!(
                "{} {key} is not a string (a UUID or an external id)",
                kind.as_str()
            )),
        );
    };
    match registry.resolve(kind, key) {
        Some(entity) => (Some(kind), Ok(entity)),
        None => (
            Some(kind),
            Err(format!(
                "{} {} is not an active {}",
                kind.as_str(),
                Quoted(key),
                noun(kind)
            )),
        ),
    }
}

/// `ts`: an RFC 3339 string with an offset, or integer epoch milliseconds.
fn parse_ts(ts: Option<&Json<'_>>) -> Result<DateTime<Utc>, String> {
    let Some(raw) = ts else {
        return Err("ts is missing".to_owned());
    };
    let not_an_instant = || format!("ts {raw} is not an RFC 3339 instant or epoch milliseconds");
    let ms = match raw {
        Json::Str(s) => {
            let parsed = DateTime::parse_from_rfc3339(s).map_err(|_| not_an_instant())?;
            let utc = parsed.with_timezone(&Utc);
            // chrono admits second 60 at the end of any minute; PostgreSQL would silently move
            // it into the next minute. Neither is the instant the gateway meant.
            if utc.timestamp_subsec_nanos() >= 1_000_000_000 {
                return Err(format!("ts {raw} is a leap second, which is not accepted"));
            }
            // PostgreSQL keeps microseconds: the reading's key is the instant as stored, so two
            // readings that differ below a microsecond are one key here as there.
            return Ok(utc.trunc_subsecs(6));
        }
        Json::Int(ms) => Some(*ms),
        Json::Uint(ms) => i64::try_from(*ms).ok(),
        Json::Float(_) => {
            return Err(format!(
                "ts {raw} is not an RFC 3339 instant or epoch milliseconds \
                 (epoch milliseconds are an integer)"
            ));
        }
        _ => return Err(not_an_instant()),
    };
    ms.and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| format!("ts {raw} epoch milliseconds are outside the representable range"))
}

/// `quality`: absent is `good`; otherwise exactly `good`, `bad` or `estimated`.
fn parse_quality(quality: Option<&Json<'_>>) -> Result<Quality, String> {
    match quality {
        None => Ok(Quality::Good),
        Some(Json::Str(s)) => Quality::parse(s)
            .ok_or_else(|| format!("quality {} is not good, bad or estimated", Quoted(s))),
        Some(other) => Err(format!(
            "quality {other} is not a string (good, bad or estimated)"
        )),
    }
}

/// Applies the rules, in order, to one reading.
fn judge_reading(
    shared: &Shared<'_>,
    raw_ts: Option<&Json<'_>>,
    window: &Window,
    name: Name<'_>,
    value: Option<&Json<'_>>,
    unit: Option<&Json<'_>>,
) -> Result<Reading, (Reason, String)> {
    let entity = match &shared.entity {
        Ok(entity) => *entity,
        Err(detail) => return Err((Reason::UnknownEntity, detail.clone())),
    };
    let ts = match &shared.ts {
        Ok(ts) => *ts,
        Err(detail) => return Err((Reason::InvalidTimestamp, detail.clone())),
    };
    if let Some(raw) = raw_ts {
        window.check(ts, raw)?;
    }
    let metric: &'static Metric = match name {
        Name::Given(s) => catalogue::lookup(s).ok_or_else(|| {
            (
                Reason::UnknownMetric,
                format!("metric {} is not in the catalogue", Quoted(s)),
            )
        })?,
        Name::NotAString(other) => {
            return Err((
                Reason::UnknownMetric,
                format!("metric {other} is not a string"),
            ));
        }
        Name::Missing => return Err((Reason::UnknownMetric, "metric is missing".to_owned())),
    };
    let unit = match unit {
        None => metric.unit(None),
        Some(Json::Str(symbol)) => Some(metric.unit(Some(symbol)).ok_or_else(|| {
            (
                Reason::InvalidUnit,
                format!(
                    "unit {} is not a unit of {} (accepted: {})",
                    Quoted(symbol),
                    metric.name,
                    metric.unit_list()
                ),
            )
        })?),
        Some(other) => {
            return Err((
                Reason::InvalidUnit,
                format!(
                    "unit {other} is not a string (accepted for {}: {})",
                    metric.name,
                    metric.unit_list()
                ),
            ));
        }
    };
    // A unit of a metric always exists (the canonical one at least); kept total anyway.
    let Some(unit) = unit else {
        return Err((
            Reason::InvalidUnit,
            format!("{} has no canonical unit in the catalogue", metric.name),
        ));
    };
    let sent = match value {
        None => {
            return Err((
                Reason::InvalidValue,
                format!("value for {} is missing", metric.name),
            ));
        }
        Some(raw) => raw.as_f64().ok_or_else(|| {
            (
                Reason::InvalidValue,
                format!("value {raw} for {} is not a number", metric.name),
            )
        })?,
    };
    // `+ 0.0` turns -0 into 0: a meter reporting "-0" has not run backwards.
    let canonical = unit.to_canonical(sent) + 0.0;
    // The value as a gateway sent it, for details when it was converted.
    let as_sent = || {
        if unit.symbol == metric.unit {
            String::new()
        } else {
            format!(" (sent as {} {})", Num(sent), unit.symbol)
        }
    };
    if !canonical.is_finite() {
        return Err((
            Reason::InvalidValue,
            format!(
                "value {} {} for {} is not a finite number in {}",
                Num(sent),
                unit.symbol,
                metric.name,
                if metric.unit.is_empty() {
                    "its canonical unit"
                } else {
                    metric.unit
                }
            ),
        ));
    }
    let quality = match &shared.quality {
        Ok(q) => *q,
        Err(detail) => return Err((Reason::InvalidQuality, detail.clone())),
    };
    if !(metric.min..=metric.max).contains(&canonical) {
        return Err((
            Reason::OutOfRange,
            format!(
                "value {}{} for {} is outside its physical bounds {}..{}",
                Amount(canonical, metric.unit),
                as_sent(),
                metric.name,
                Num(metric.min),
                Amount(metric.max, metric.unit),
            ),
        ));
    }
    category_rule(entity, metric, canonical).map_err(|rule| {
        (
            Reason::CategoryViolation,
            format!(
                "value {}{} for {}: {rule}",
                Amount(canonical, metric.unit),
                as_sent(),
                metric.name
            ),
        )
    })?;
    Ok(Reading {
        entity_type: entity.kind,
        entity_id: entity.id,
        metric: metric.name,
        ts,
        value: canonical,
        unit: metric.unit,
        quality,
    })
}

/// The meter category rule (CONTRACT.md §4); `Err` says which rule, for the detail.
fn category_rule(entity: &Entity, metric: &Metric, value: f64) -> Result<(), String> {
    let category = entity.category;
    if metric.directional && value < 0.0 && category != MeterCategory::Stor {
        return Err(format!(
            "{} cannot report negative {} (only STOR meters can)",
            whose(entity),
            metric.name
        ));
    }
    if metric.storage_only && category != MeterCategory::Stor && !entity.is_battery {
        return Err(format!(
            "{} is reported only by STOR meters and battery energy sources, not by {}",
            metric.name,
            whose(entity)
        ));
    }
    Ok(())
}

/// `a CONS meter`, `an asset under a CONS meter`, …
fn whose(entity: &Entity) -> String {
    let category = entity.category.as_str();
    match entity.kind {
        EntityKind::Meter => format!("a {category} meter"),
        EntityKind::Asset => format!("an asset under a {category} meter"),
        EntityKind::EnergySource => format!("an energy source under a {category} meter"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{A_PUMP, M_CONS, registry};
    use uuid::Uuid;

    const NOW: &str = "2026-11-24T15:00:00Z";

    const CONS: &str = "enalysis/v1/meters/EAN-CONS/readings";
    const STOR: &str = "enalysis/v1/meters/EAN-STOR/readings";
    const PROD: &str = "enalysis/v1/meters/EAN-PROD/readings";
    const PUMP: &str = "enalysis/v1/assets/pump-1/readings";
    const BATT: &str = "enalysis/v1/energy-sources/battery-1/readings";
    const PV: &str = "enalysis/v1/energy-sources/pv-1/readings";
    const GW: &str = "enalysis/v1/gateways/gw-1/readings";

    fn uuid(s: &str) -> Uuid {
        Uuid::parse_str(s).expect("test uuid")
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(NOW)
            .expect("test now")
            .with_timezone(&Utc)
    }

    /// Judges a message under the default prefix and limits at [`NOW`]. `$TS` in the payload
    /// stands for `"2026-11-24T15:00:00Z"`.
    fn judged(topic: &str, payload: &str, limits: &Limits) -> Outcome {
        let registry = registry();
        let ctx = Context {
            prefix: decode::DEFAULT_PREFIX,
            registry: &registry,
            limits,
            now: now(),
        };
        let payload = payload.replace("$TS", &format!("\"{NOW}\""));
        judge(topic, payload.as_bytes(), &ctx)
    }

    /// One line per reading: `ok <metric> <value> <unit> <quality>` for the accepted ones (in
    /// order), then `#<seq> <reason>` for the rejected ones.
    fn render(outcome: &Outcome) -> Vec<String> {
        let ok = outcome.accepted.iter().map(|r| {
            format!(
                "ok {} {} {} {}",
                r.metric,
                r.value,
                r.unit,
                r.quality.as_str()
            )
            .trim_end()
            .replace("  ", " ")
        });
        let rejected = outcome
            .rejected
            .iter()
            .map(|r| format!("#{} {}", r.seq, r.reason));
        ok.chain(rejected).collect()
    }

    fn check(cases: &[(&str, &str, &[&str])]) {
        for (topic, payload, expected) in cases {
            let got = render(&judged(topic, payload, &Limits::default()));
            assert_eq!(got, *expected, "topic {topic}\npayload {payload}");
        }
    }

    /// The detail of the only rejection of a message.
    fn detail(topic: &str, payload: &str) -> String {
        let out = judged(topic, payload, &Limits::default());
        assert_eq!(out.rejected.len(), 1, "{out:?}");
        out.rejected[0].describe().into_owned()
    }

    #[test]
    fn consecutive_readings_rejected_alike_are_one_run() {
        let cons = format!("enalysis/v1/meters/{M_CONS}/readings");
        let limits = Limits::default();
        let ones = format!("[{}1]", "1,".repeat(9_999));
        let out = judged(&cons, &ones, &limits);
        assert_eq!(out.rejected.len(), 1, "{out:?}");
        let run = &out.rejected[0];
        assert_eq!((run.seq, run.count, run.element), (0, 10_000, Some(0)));
        assert_eq!(run.describe(), "element 0: a number, not a reading object");
        assert_eq!(out.rejected_readings(), 10_000);

        // A different element, or a different instant, starts a new run.
        let mixed = judged(&cons, r#"[1, 1, "x", 1]"#, &limits);
        let runs: Vec<(u32, u32, Option<u32>)> = mixed
            .rejected
            .iter()
            .map(|r| (r.seq, r.count, r.element))
            .collect();
        assert_eq!(runs, [(0, 2, Some(0)), (2, 1, Some(2)), (3, 1, Some(3))]);
        let reading = |ts: &str| format!(r#"{{"ts":"{ts}","metric":"power","value":-1}}"#);
        let distinct = format!(
            "[{},{}]",
            reading("2026-11-24T14:00:00Z"),
            reading("2026-11-24T14:01:00Z")
        );
        assert_eq!(judged(&cons, &distinct, &limits).rejected.len(), 2);
        let same = format!("[{0},{0}]", reading("2026-11-24T14:00:00Z"));
        let out = judged(&cons, &same, &limits);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].count, 2);
        // A single object names no element.
        let one = judged(&cons, &reading("2026-11-24T14:00:00Z"), &limits);
        assert_eq!(one.rejected[0].element, None);
    }

    #[test]
    fn every_accepted_shape_is_stored() {
        let cons_uuid = format!("enalysis/v1/meters/{M_CONS}/readings");
        let cons_upper = format!("enalysis/v1/meters/{}/readings", M_CONS.to_uppercase());
        let gateway_meter =
            format!(r#"{{"ts":$TS,"meter":"{M_CONS}","metric":"power","value":1}}"#);
        check(&[
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":12.5,"unit":"kW","quality":"good"}"#,
                &["ok power 12.5 kW good"],
            ),
            (
                CONS,
                r#"[{"ts":$TS,"metric":"power","value":1},{"ts":$TS,"metric":"energy","value":2}]"#,
                &["ok power 1 kW good", "ok energy 2 kWh good"],
            ),
            (
                CONS,
                r#"{"ts":1764082800000,"values":{"power":12.5,"voltage":231.2,"current":54.1},"quality":"estimated"}"#,
                &[
                    "ok current 54.1 A estimated",
                    "ok power 12.5 kW estimated",
                    "ok voltage 231.2 V estimated",
                ],
            ),
            (
                &cons_uuid,
                r#"{"ts":$TS,"metric":"power","value":1}"#,
                &["ok power 1 kW good"],
            ),
            (
                &cons_upper,
                r#"{"ts":$TS,"metric":"power","value":1}"#,
                &["ok power 1 kW good"],
            ),
            (GW, &gateway_meter, &["ok power 1 kW good"]),
            (
                GW,
                r#"{"ts":$TS,"meter":"EAN-STOR","metric":"power","value":-1}"#,
                &["ok power -1 kW good"],
            ),
            (
                GW,
                r#"{"ts":$TS,"asset":"pump-1","metric":"power","value":1}"#,
                &["ok power 1 kW good"],
            ),
            (
                GW,
                r#"{"ts":$TS,"energy_source":"battery-1","values":{"state_of_charge":80}}"#,
                &["ok state_of_charge 80 % good"],
            ),
            (
                PUMP,
                r#"{"ts":$TS,"metric":"temperature","value":40}"#,
                &["ok temperature 40 °C good"],
            ),
            (
                PV,
                r#"{"ts":$TS,"metric":"power","value":3}"#,
                &["ok power 3 kW good"],
            ),
            (
                CONS,
                r#"{"ts":"2026-11-24T17:00:00+02:00","metric":"power","value":1}"#,
                &["ok power 1 kW good"],
            ),
            (
                CONS,
                r#"{"ts":"2026-11-24T15:04:59.999Z","metric":"power","value":1}"#,
                &["ok power 1 kW good"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"quality":"bad"}"#,
                &["ok power 1 kW bad"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"firmware":{"v":[1,2]},"seq":7}"#,
                &["ok power 1 kW good"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power_factor","value":0.97}"#,
                &["ok power_factor 0.97 good"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power_factor","value":-1,"unit":""}"#,
                &["ok power_factor -1 good"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":-0.0}"#,
                &["ok power 0 kW good"],
            ),
            (
                STOR,
                r#"{"ts":$TS,"values":{"power":-250,"energy":-5,"state_of_charge":0}}"#,
                &[
                    "ok energy -5 kWh good",
                    "ok power -250 kW good",
                    "ok state_of_charge 0 % good",
                ],
            ),
            (
                BATT,
                r#"{"ts":$TS,"metric":"state_of_charge","value":100}"#,
                &["ok state_of_charge 100 % good"],
            ),
        ]);
    }

    #[test]
    fn units_are_converted_to_the_canonical_unit() {
        check(&[
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1500,"unit":"W"}"#,
                &["ok power 1.5 kW good"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":2,"unit":"MW"}"#,
                &["ok power 2000 kW good"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"energy","value":1.5,"unit":"MWh"}"#,
                &["ok energy 1500 kWh good"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"energy","value":250,"unit":"Wh"}"#,
                &["ok energy 0.25 kWh good"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"voltage","value":0.4,"unit":"kV"}"#,
                &["ok voltage 400 V good"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"temperature","value":212,"unit":"°F"}"#,
                &["ok temperature 100 °C good"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"temperature","value":300,"unit":"K"}"#,
                &["ok temperature 26.850000000000023 °C good"],
            ),
        ]);
    }

    #[test]
    fn whole_messages_are_rejected_once() {
        let two =
            r#"[{"ts":$TS,"metric":"power","value":1},{"ts":$TS,"metric":"power","value":2}]"#;
        check(&[
            (CONS, "not json", &["#0 malformed_payload"]),
            (CONS, "[]", &["#0 malformed_payload"]),
            (CONS, "\"power\"", &["#0 malformed_payload"]),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1e400}"#,
                &["#0 malformed_payload"],
            ),
            (
                CONS,
                "{\"ts\":$TS,\"metric\":\"power\",\u{0}\"value\":1}",
                &["#0 malformed_payload"],
            ),
            ("enalysis/v1/meters/EAN-CONS", two, &["#0 unknown_topic"]),
            (
                "enalysis/v2/meters/EAN-CONS/readings",
                two,
                &["#0 unknown_topic"],
            ),
            (
                "enalysis/v1/sensors/EAN-CONS/readings",
                two,
                &["#0 unknown_topic"],
            ),
            (
                "enalysis/v1/meters/NOPE/readings",
                two,
                &["#0 unknown_entity"],
            ),
            // A key resolves only within the kind its topic names.
            (
                "enalysis/v1/assets/EAN-CONS/readings",
                two,
                &["#0 unknown_entity"],
            ),
            // The topic is checked before the payload is parsed.
            (
                "enalysis/v1/meters/NOPE/readings",
                "not json",
                &["#0 unknown_entity"],
            ),
        ]);
    }

    #[test]
    fn readings_are_rejected_with_the_first_rule_they_break() {
        check(&[
            // Entity, on gateway topics.
            (
                GW,
                r#"{"ts":$TS,"metric":"power","value":1}"#,
                &["#0 unknown_entity"],
            ),
            (
                GW,
                r#"{"ts":$TS,"meter":"NOPE","metric":"power","value":1}"#,
                &["#0 unknown_entity"],
            ),
            (
                GW,
                r#"{"ts":$TS,"meter":7,"metric":"power","value":1}"#,
                &["#0 unknown_entity"],
            ),
            (
                GW,
                r#"{"ts":$TS,"meter":"EAN-CONS","asset":"pump-1","metric":"power","value":1}"#,
                &["#0 unknown_entity"],
            ),
            (
                GW,
                r#"{"ts":"nope","meter":"NOPE","metric":"pwr"}"#,
                &["#0 unknown_entity"],
            ),
            (
                GW,
                r#"{"ts":$TS,"values":{"power":1,"voltage":2}}"#,
                &["#0 unknown_entity", "#1 unknown_entity"],
            ),
            // Timestamp.
            (
                CONS,
                r#"{"metric":"power","value":1}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":null,"metric":"power","value":1}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":"2026-13-01T00:00:00Z","metric":"power","value":1}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":"2026-02-30T00:00:00Z","metric":"power","value":1}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":"2026-11-24T15:00:00","metric":"power","value":1}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":"2026-11-24T14:59:60Z","metric":"power","value":1}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":"99999-01-01T00:00:00Z","metric":"power","value":1}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":"1764082800000","metric":"power","value":1}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":1764082800000.0,"metric":"power","value":1}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":true,"metric":"power","value":1}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":[],"metric":"power","value":1}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":9223372036854775807,"metric":"power","value":1}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":18446744073709551615,"metric":"power","value":1}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":"nope","metric":"pwr"}"#,
                &["#0 invalid_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":"2026-11-24T15:05:01Z","metric":"power","value":1}"#,
                &["#0 future_timestamp"],
            ),
            // Year 99999 in epoch milliseconds is a real instant, far in the future.
            (
                CONS,
                r#"{"ts":3093527980800000,"metric":"power","value":1}"#,
                &["#0 future_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":"2025-10-20T14:59:59Z","metric":"power","value":1}"#,
                &["#0 stale_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":0,"metric":"power","value":1}"#,
                &["#0 stale_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":-1,"metric":"power","value":1}"#,
                &["#0 stale_timestamp"],
            ),
            (
                CONS,
                r#"{"ts":"2025-10-20T15:00:00Z","metric":"power","value":1}"#,
                &["ok power 1 kW good"],
            ),
            (
                CONS,
                r#"{"ts":"2026-11-24T15:05:00Z","metric":"power","value":1}"#,
                &["ok power 1 kW good"],
            ),
            // Metric.
            (
                CONS,
                r#"{"ts":$TS,"metric":"pwr","value":1}"#,
                &["#0 unknown_metric"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"Power","value":1}"#,
                &["#0 unknown_metric"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":3,"value":1}"#,
                &["#0 unknown_metric"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":null,"value":1}"#,
                &["#0 unknown_metric"],
            ),
            (CONS, r#"{"ts":$TS,"value":1}"#, &["#0 unknown_metric"]),
            (
                CONS,
                r#"{"ts":$TS,"metric":"pwr","value":"x","quality":"?"}"#,
                &["#0 unknown_metric"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"values":{"pwr":1}}"#,
                &["#0 unknown_metric"],
            ),
            // Unit.
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"unit":"kw"}"#,
                &["#0 invalid_unit"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"unit":"kWh"}"#,
                &["#0 invalid_unit"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"unit":""}"#,
                &["#0 invalid_unit"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"unit":1000}"#,
                &["#0 invalid_unit"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"unit":null}"#,
                &["#0 invalid_unit"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"frequency","value":1,"unit":"mHz"}"#,
                &["#0 invalid_unit"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":"x","unit":"kw"}"#,
                &["#0 invalid_unit"],
            ),
            // Value.
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":"12"}"#,
                &["#0 invalid_value"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":null}"#,
                &["#0 invalid_value"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":true}"#,
                &["#0 invalid_value"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":{"v":1}}"#,
                &["#0 invalid_value"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power"}"#,
                &["#0 invalid_value"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1e308,"unit":"MW"}"#,
                &["#0 invalid_value"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"values":{"power":"1"}}"#,
                &["#0 invalid_value"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":"x","quality":"?"}"#,
                &["#0 invalid_value"],
            ),
            // Quality.
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"quality":"Good"}"#,
                &["#0 invalid_quality"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"quality":"ok"}"#,
                &["#0 invalid_quality"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"quality":1}"#,
                &["#0 invalid_quality"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"quality":null}"#,
                &["#0 invalid_quality"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"voltage","value":-1,"quality":"?"}"#,
                &["#0 invalid_quality"],
            ),
            // Physical bounds.
            (
                CONS,
                r#"{"ts":$TS,"metric":"voltage","value":-1}"#,
                &["#0 out_of_range"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power_factor","value":1.01}"#,
                &["#0 out_of_range"],
            ),
            (
                STOR,
                r#"{"ts":$TS,"metric":"state_of_charge","value":100.5}"#,
                &["#0 out_of_range"],
            ),
            (
                STOR,
                r#"{"ts":$TS,"metric":"state_of_charge","value":-1}"#,
                &["#0 out_of_range"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":10001,"unit":"MW"}"#,
                &["#0 out_of_range"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"temperature","value":-300}"#,
                &["#0 out_of_range"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"frequency","value":1.5,"unit":"kHz"}"#,
                &["#0 out_of_range"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":-2e7}"#,
                &["#0 out_of_range"],
            ),
            // Meter category.
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":-3.2}"#,
                &["#0 category_violation"],
            ),
            (
                PROD,
                r#"{"ts":$TS,"metric":"energy","value":-1}"#,
                &["#0 category_violation"],
            ),
            (
                PUMP,
                r#"{"ts":$TS,"metric":"power","value":-1,"unit":"W"}"#,
                &["#0 category_violation"],
            ),
            (
                PV,
                r#"{"ts":$TS,"metric":"power","value":-1}"#,
                &["#0 category_violation"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"state_of_charge","value":50}"#,
                &["#0 category_violation"],
            ),
            (
                PUMP,
                r#"{"ts":$TS,"metric":"state_of_charge","value":50}"#,
                &["#0 category_violation"],
            ),
            (
                PV,
                r#"{"ts":$TS,"metric":"state_of_charge","value":50}"#,
                &["#0 category_violation"],
            ),
            // Signed metrics other than power and energy are free on one-way meters.
            (
                CONS,
                r#"{"ts":$TS,"metric":"current","value":-3}"#,
                &["ok current -3 A good"],
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"reactive_power","value":-3}"#,
                &["ok reactive_power -3 kvar good"],
            ),
        ]);
    }

    #[test]
    fn every_reason_is_produced_by_some_message() {
        let tiny = Limits {
            max_payload_bytes: 4,
            ..Limits::default()
        };
        let cases: &[(&str, &str, &Limits)] = &[
            (CONS, "{", &Limits::default()),
            (CONS, "12345", &tiny),
            ("x", "{}", &Limits::default()),
            (
                GW,
                r#"{"ts":$TS,"metric":"power","value":1}"#,
                &Limits::default(),
            ),
            (CONS, r#"{"metric":"power","value":1}"#, &Limits::default()),
            (
                CONS,
                r#"{"ts":"2099-01-01T00:00:00Z","metric":"power","value":1}"#,
                &Limits::default(),
            ),
            (
                CONS,
                r#"{"ts":"2001-01-01T00:00:00Z","metric":"power","value":1}"#,
                &Limits::default(),
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"pwr","value":1}"#,
                &Limits::default(),
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"unit":"A"}"#,
                &Limits::default(),
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":"1"}"#,
                &Limits::default(),
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"quality":"meh"}"#,
                &Limits::default(),
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"voltage","value":-1}"#,
                &Limits::default(),
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":-1}"#,
                &Limits::default(),
            ),
        ];
        let mut seen: Vec<Reason> = cases
            .iter()
            .flat_map(|(topic, payload, limits)| judged(topic, payload, limits).rejected)
            .map(|r| r.reason)
            .collect();
        seen.sort();
        seen.dedup();
        // `superseded` is the writer's, decided against what the database holds.
        let validation: Vec<Reason> = Reason::ALL
            .into_iter()
            .filter(|r| *r != Reason::Superseded)
            .collect();
        assert_eq!(seen, validation);
    }

    /// The key of a reading is the instant as PostgreSQL stores it: microseconds.
    #[test]
    fn timestamps_are_kept_to_the_microsecond() {
        let at = |frac: &str| {
            let payload =
                format!(r#"{{"ts":"2026-11-24T11:00:00.{frac}Z","metric":"power","value":1}}"#);
            judged(CONS, &payload, &Limits::default()).accepted[0].ts
        };
        assert_eq!(at("123456789"), at("123456"));
        assert_ne!(at("123457"), at("123456"));
    }

    #[test]
    fn a_payload_at_the_limit_is_judged_and_one_byte_more_is_too_large() {
        let reading =
            r#"{"ts":$TS,"metric":"power","value":1}"#.replace("$TS", &format!("\"{NOW}\""));
        let limits = Limits {
            max_payload_bytes: 100,
            ..Limits::default()
        };
        let at_limit = format!("{reading:<100}");
        assert_eq!(at_limit.len(), 100);
        assert_eq!(
            render(&judged(CONS, &at_limit, &limits)),
            ["ok power 1 kW good"]
        );
        let over = format!("{reading:<101}");
        let out = judged(CONS, &over, &limits);
        assert_eq!(render(&out), ["#0 payload_too_large"]);
        assert_eq!(
            out.rejected[0].detail,
            "payload is 101 bytes, above the limit of 100"
        );
        // Size comes first, before the topic is even looked at.
        assert_eq!(
            render(&judged("nowhere", &over, &limits)),
            ["#0 payload_too_large"]
        );
    }

    #[test]
    fn hostile_payloads_are_one_malformed_message() {
        let registry = registry();
        let limits = Limits::default();
        let ctx = Context {
            prefix: decode::DEFAULT_PREFIX,
            registry: &registry,
            limits: &limits,
            now: now(),
        };
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_object = "{\"a\":".repeat(50_000);
        let payloads: Vec<Vec<u8>> = vec![
            b"\xff\xfe\xfd".to_vec(),
            b"{\"ts\":\"2026-11-24T15:00:00Z\",\"metric\":\"p\xc0wer\",\"value\":1}".to_vec(),
            b"\0\0\0\0".to_vec(),
            b"{\"metric\":\"power\",\"value\":1}\0".to_vec(),
            b"".to_vec(),
            deep.into_bytes(),
            deep_object.into_bytes(),
            b"{\"ts\":1,\"metric\":\"power\",\"value\":-1e400}".to_vec(),
        ];
        for payload in payloads {
            let out = judge(CONS, &payload, &ctx);
            assert!(out.accepted.is_empty());
            assert_eq!(out.rejected.len(), 1, "{out:?}");
            let r = &out.rejected[0];
            assert_eq!((r.reason, r.seq), (Reason::MalformedPayload, 0));
            assert_eq!(r.entity_id, Some(uuid(M_CONS)));
            assert!(!r.detail.contains('\0'));
        }
    }

    #[test]
    fn seq_follows_array_order_then_sorted_metric_names_and_is_stable() {
        let payload = r#"[
            {"ts":$TS,"metric":"power","value":1},
            7,
            {"ts":$TS,"values":{"voltage":-1,"current":1,"power":-5}},
            {"ts":$TS,"metric":"pwr","value":1}
        ]"#;
        let first = judged(CONS, payload, &Limits::default());
        assert_eq!(
            render(&first),
            [
                "ok power 1 kW good",
                "ok current 1 A good",
                "#1 malformed_payload",
                "#3 category_violation",
                "#4 out_of_range",
                "#5 unknown_metric",
            ]
        );
        assert_eq!(first, judged(CONS, payload, &Limits::default()));
    }

    #[test]
    fn a_custom_prefix_with_slashes_is_honoured() {
        let registry = registry();
        let limits = Limits::default();
        let ctx = Context {
            prefix: "plant/7/ingest",
            registry: &registry,
            limits: &limits,
            now: now(),
        };
        let payload = format!(r#"{{"ts":"{NOW}","metric":"power","value":1}}"#);
        let ok = judge(
            "plant/7/ingest/meters/EAN-CONS/readings",
            payload.as_bytes(),
            &ctx,
        );
        assert_eq!(render(&ok), ["ok power 1 kW good"]);
        let wrong = judge(CONS, payload.as_bytes(), &ctx);
        assert_eq!(render(&wrong), ["#0 unknown_topic"]);
    }

    #[test]
    fn accepted_readings_carry_entity_and_instant() {
        let out = judged(
            GW,
            r#"{"ts":"2026-11-24T17:00:00+02:00","asset":"pump-1","metric":"power","value":1500,"unit":"W","quality":"estimated"}"#,
            &Limits::default(),
        );
        assert_eq!(
            out.accepted,
            [Reading {
                entity_type: EntityKind::Asset,
                entity_id: uuid(A_PUMP),
                metric: "power",
                ts: now(),
                value: 1.5,
                unit: "kW",
                quality: Quality::Estimated,
            }]
        );
        let ms = judged(
            CONS,
            r#"{"ts":1764082800000,"metric":"power","value":1}"#,
            &Limits::default(),
        );
        let expected =
            DateTime::parse_from_rfc3339("2025-11-25T15:00:00Z").map(|t| t.with_timezone(&Utc));
        assert_eq!(ms.accepted.first().map(|r| r.ts), expected.ok());
    }

    #[test]
    fn rejections_carry_what_is_known_of_the_reading() {
        let r = |topic, payload| {
            let out = judged(topic, payload, &Limits::default());
            assert_eq!(out.rejected.len(), 1, "{out:?}");
            let r = out.rejected[0].clone();
            (r.entity_type, r.entity_id, r.metric, r.ts)
        };
        let meter = Some(EntityKind::Meter);
        let p = |s: &str| Some(s.to_owned());
        assert_eq!(
            r(CONS, r#"{"ts":$TS,"metric":"power","value":-1,"unit":"W"}"#),
            (meter, Some(uuid(M_CONS)), p("power"), Some(now()))
        );
        assert_eq!(
            r(CONS, r#"{"ts":"bad","metric":"pwr","value":1}"#),
            (meter, Some(uuid(M_CONS)), p("pwr"), None)
        );
        assert_eq!(
            r(
                GW,
                r#"{"ts":$TS,"meter":"NOPE","metric":"power","value":1}"#
            ),
            (meter, None, p("power"), Some(now()))
        );
        assert_eq!(
            r(CONS, r#"{"ts":$TS,"metric":"p\u0000wer","value":1}"#),
            (meter, Some(uuid(M_CONS)), None, Some(now()))
        );
        assert_eq!(
            r(
                "enalysis/v1/assets/NOPE/readings",
                r#"{"ts":$TS,"metric":"power","value":1}"#
            ),
            (Some(EntityKind::Asset), None, None, None)
        );
        assert_eq!(r("x", "{}"), (None, None, None, None));
    }

    #[test]
    fn details_name_the_field_the_value_and_the_rule() {
        let long = "x".repeat(300);
        let long_metric = format!(r#"{{"ts":$TS,"metric":"{long}","value":1}}"#);
        let cases: &[(&str, &str, &str)] = &[
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":-3.2}"#,
                "value -3.2 kW for power: a CONS meter cannot report negative power (only STOR meters can)",
            ),
            (
                PUMP,
                r#"{"ts":$TS,"metric":"power","value":-1500,"unit":"W"}"#,
                "value -1.5 kW (sent as -1500 W) for power: an asset under a CONS meter cannot report \
                 negative power (only STOR meters can)",
            ),
            (
                PV,
                r#"{"ts":$TS,"metric":"state_of_charge","value":5}"#,
                "value 5 % for state_of_charge: state_of_charge is reported only by STOR meters and \
                 battery energy sources, not by an energy source under a PROD meter",
            ),
            (
                CONS,
                r#"{"ts":"2026-13-01T00:00:00Z","metric":"power","value":1}"#,
                r#"ts "2026-13-01T00:00:00Z" is not an RFC 3339 instant or epoch milliseconds"#,
            ),
            (
                CONS,
                r#"{"ts":1.5,"metric":"power","value":1}"#,
                "ts 1.5 is not an RFC 3339 instant or epoch milliseconds (epoch milliseconds are an integer)",
            ),
            (
                CONS,
                r#"{"ts":9223372036854775807,"metric":"power","value":1}"#,
                "ts 9223372036854775807 epoch milliseconds are outside the representable range",
            ),
            (CONS, r#"{"metric":"power","value":1}"#, "ts is missing"),
            (
                CONS,
                r#"{"ts":"2027-01-01T00:00:00Z","metric":"power","value":1}"#,
                r#"ts "2027-01-01T00:00:00Z" is later than the receipt time 2026-11-24T15:00:00Z plus the allowed clock skew of 5 min"#,
            ),
            (
                CONS,
                r#"{"ts":0,"metric":"power","value":1}"#,
                "ts 0 (1970-01-01T00:00:00Z) is older than the accepted age of 400 days before the \
                 receipt time 2026-11-24T15:00:00Z",
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"pwr","value":1}"#,
                r#"metric "pwr" is not in the catalogue"#,
            ),
            (
                CONS,
                &long_metric,
                &format!("metric \"{}…\" is not in the catalogue", "x".repeat(100)),
            ),
            (CONS, r#"{"ts":$TS,"value":1}"#, "metric is missing"),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"unit":"kWh"}"#,
                r#"unit "kWh" is not a unit of power (accepted: W, kW, MW)"#,
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":"12"}"#,
                r#"value "12" for power is not a number"#,
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power"}"#,
                "value for power is missing",
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1e308,"unit":"MW"}"#,
                "value 1e308 MW for power is not a finite number in kW",
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power","value":1,"quality":"Good"}"#,
                r#"quality "Good" is not good, bad or estimated"#,
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"voltage","value":-5}"#,
                "value -5 V for voltage is outside its physical bounds 0..1000000 V",
            ),
            (
                CONS,
                r#"{"ts":$TS,"metric":"power_factor","value":1.2}"#,
                "value 1.2 for power_factor is outside its physical bounds -1..1",
            ),
            (
                "enalysis/v1/meters/NOPE/readings",
                "{}",
                r#"meter "NOPE" in the topic is not an active meter"#,
            ),
            (
                GW,
                r#"{"ts":$TS,"energy_source":"nope","metric":"power","value":1}"#,
                r#"energy_source "nope" is not an active energy source"#,
            ),
            (
                GW,
                r#"{"ts":$TS,"meter":"a","asset":"b","metric":"power","value":1}"#,
                r#"a reading on a gateway topic names more than one entity ("meter" and "asset"); exactly one is allowed"#,
            ),
            (
                "enalysis/v1/meters/x\u{0}y/data",
                "{}",
                r#"topic "enalysis/v1/meters/x\0y/data" does not match enalysis/v1/{meters|assets|energy-sources|gateways}/{key}/readings"#,
            ),
            (CONS, "[1]", "element 0: a number, not a reading object"),
            (CONS, "[]", "payload is an empty array"),
        ];
        for (topic, payload, expected) in cases {
            assert_eq!(detail(topic, payload), *expected, "{payload}");
        }
    }
}
