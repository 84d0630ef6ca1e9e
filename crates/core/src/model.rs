//! Domain types shared along the path of a reading: what an entity is, what a validated
//! reading is, and why a reading was rejected. Pure data, no I/O.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// What a reading belongs to; the `entity_type_enum` of `measurements`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "sql",
    derive(postgres_types::ToSql, postgres_types::FromSql)
)]
#[cfg_attr(feature = "sql", postgres(name = "entity_type_enum"))]
pub enum EntityKind {
    #[cfg_attr(feature = "sql", postgres(name = "meter"))]
    Meter,
    #[cfg_attr(feature = "sql", postgres(name = "asset"))]
    Asset,
    #[cfg_attr(feature = "sql", postgres(name = "energy_source"))]
    EnergySource,
}

impl EntityKind {
    pub const ALL: [EntityKind; 3] = [Self::Meter, Self::Asset, Self::EnergySource];

    /// The label used in the database, in JSON (`"meter"` key of a gateway reading) and in
    /// metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Meter => "meter",
            Self::Asset => "asset",
            Self::EnergySource => "energy_source",
        }
    }
}

/// `meter_category_enum`: what a meter (and everything under it) can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "sql",
    derive(postgres_types::ToSql, postgres_types::FromSql)
)]
#[cfg_attr(feature = "sql", postgres(name = "meter_category_enum"))]
pub enum MeterCategory {
    #[cfg_attr(feature = "sql", postgres(name = "CONS"))]
    Cons,
    #[cfg_attr(feature = "sql", postgres(name = "PROD"))]
    Prod,
    #[cfg_attr(feature = "sql", postgres(name = "INJ"))]
    Inj,
    #[cfg_attr(feature = "sql", postgres(name = "STOR"))]
    Stor,
}

impl MeterCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cons => "CONS",
            Self::Prod => "PROD",
            Self::Inj => "INJ",
            Self::Stor => "STOR",
        }
    }
}

/// `quality_enum`: how far to trust a value. Not a reason to drop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(
    feature = "sql",
    derive(postgres_types::ToSql, postgres_types::FromSql)
)]
#[cfg_attr(
    feature = "sql",
    postgres(name = "quality_enum", rename_all = "lowercase")
)]
pub enum Quality {
    #[default]
    Good,
    Bad,
    Estimated,
}

impl Quality {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "good" => Some(Self::Good),
            "bad" => Some(Self::Bad),
            "estimated" => Some(Self::Estimated),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Bad => "bad",
            Self::Estimated => "estimated",
        }
    }
}

/// One active meter, asset or energy source as the ingest path sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub kind: EntityKind,
    pub id: Uuid,
    pub external_id: Option<String>,
    /// The category of the meter itself, or of the meter an asset / energy source hangs under.
    pub category: MeterCategory,
    /// An energy source of kind `battery`: may report `state_of_charge` under any meter.
    pub is_battery: bool,
}

/// A reading that passed validation: the only thing the writer accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub entity_type: EntityKind,
    pub entity_id: Uuid,
    /// Canonical metric name from the catalogue.
    pub metric: &'static str,
    pub ts: DateTime<Utc>,
    /// In the metric's canonical unit; always finite and within the metric's bounds.
    pub value: f64,
    /// The metric's canonical unit.
    pub unit: &'static str,
    pub quality: Quality,
}

/// Why a reading (or a whole message) was not stored in `measurements`: CONTRACT.md §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    MalformedPayload,
    PayloadTooLarge,
    UnknownTopic,
    UnknownEntity,
    InvalidTimestamp,
    FutureTimestamp,
    StaleTimestamp,
    UnknownMetric,
    InvalidUnit,
    InvalidValue,
    InvalidQuality,
    OutOfRange,
    CategoryViolation,
    /// A different reading for a key that holds one the correction policy keeps.
    Superseded,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Self::MalformedPayload,
        Self::PayloadTooLarge,
        Self::UnknownTopic,
        Self::UnknownEntity,
        Self::InvalidTimestamp,
        Self::FutureTimestamp,
        Self::StaleTimestamp,
        Self::UnknownMetric,
        Self::InvalidUnit,
        Self::InvalidValue,
        Self::InvalidQuality,
        Self::OutOfRange,
        Self::CategoryViolation,
        Self::Superseded,
    ];

    /// The label stored in `rejected_readings.reason` and used as the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedPayload => "malformed_payload",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnknownTopic => "unknown_topic",
            Self::UnknownEntity => "unknown_entity",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::FutureTimestamp => "future_timestamp",
            Self::StaleTimestamp => "stale_timestamp",
            Self::UnknownMetric => "unknown_metric",
            Self::InvalidUnit => "invalid_unit",
            Self::InvalidValue => "invalid_value",
            Self::InvalidQuality => "invalid_quality",
            Self::OutOfRange => "out_of_range",
            Self::CategoryViolation => "category_violation",
            Self::Superseded => "superseded",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected reading, or a whole rejected message when `seq` is 0 and nothing was decoded; or a
/// run of `count` consecutive readings rejected alike (`[1,1,1,…]` is one run, not 130,000
/// rejections: what a message costs to keep must not grow faster than the message).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: Reason,
    /// Human-readable: which field, which value, which rule. Without the element's index,
    /// which is [`Rejection::element`]; [`Rejection::describe`] puts them together.
    pub detail: String,
    /// Position of the (first) reading in the message, in decoding order (array index, then
    /// metric order inside a `values` map). Deterministic for the same bytes, so a redelivered
    /// message maps onto the same rejection rows.
    pub seq: u32,
    /// How many readings this stands for: `seq`, `seq + 1`, … `seq + count - 1`. At least 1.
    pub count: u32,
    /// Index of the (first) reading's element when the payload is an array; advances with
    /// `seq` along a run.
    pub element: Option<u32>,
    /// What is known about the reading, for operators querying `rejected_readings`.
    pub entity_type: Option<EntityKind>,
    pub entity_id: Option<Uuid>,
    pub metric: Option<String>,
    pub ts: Option<DateTime<Utc>>,
}

impl Rejection {
    /// A rejection with no reading context (e.g. the message as a whole).
    pub fn new(reason: Reason, seq: u32, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            seq,
            count: 1,
            element: None,
            entity_type: None,
            entity_id: None,
            metric: None,
            ts: None,
        }
    }
}

impl Rejection {
    /// The detail as stored: `element 3: …` for a reading of an array (here the run's first).
    /// The `rejected_readings` view composes the same text for every reading of a run.
    pub fn describe(&self) -> std::borrow::Cow<'_, str> {
        match self.element {
            Some(i) => format!("element {i}: {}", self.detail).into(),
            None => self.detail.as_str().into(),
        }
    }

    /// Does `next` continue this run: the next reading, rejected the same way?
    fn continued_by(&self, next: &Rejection) -> bool {
        let Some(expected_seq) = self.seq.checked_add(self.count) else {
            return false;
        };
        let elements_follow = match (self.element, next.element) {
            (Some(a), Some(b)) => a.checked_add(self.count) == Some(b),
            (None, None) => true,
            _ => false,
        };
        next.seq == expected_seq
            && elements_follow
            && next.reason == self.reason
            && next.detail == self.detail
            && next.entity_type == self.entity_type
            && next.entity_id == self.entity_id
            && next.metric == self.metric
            && next.ts == self.ts
    }
}

/// Everything one MQTT message turned into. Every reading ends up in exactly one of the two.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub accepted: Vec<Reading>,
    /// In `seq` order; consecutive readings rejected alike are one run (see [`Rejection`]).
    pub rejected: Vec<Rejection>,
}

impl Outcome {
    /// Records a rejection, extending the last run when `r` continues it.
    pub fn reject(&mut self, r: Rejection) {
        if let Some(last) = self.rejected.last_mut()
            && last.continued_by(&r)
        {
            last.count = last.count.saturating_add(r.count);
            return;
        }
        self.rejected.push(r);
    }

    /// How many readings were rejected (runs counted by their length).
    pub fn rejected_readings(&self) -> usize {
        self.rejected.iter().map(|r| r.count as usize).sum()
    }
}
