//! Decoding: a topic becomes the place its readings belong, and payload bytes become reading
//! objects whose fields are still raw JSON scalars. Pure, no I/O.
//!
//! Architecture Invariant: decoding judges only the *shape* of a message (CONTRACT.md §3).
//! Whether a `ts` is a real instant, a metric is in the catalogue or a value is in range is
//! [`crate::validate`]'s business, so that every such rule lives in one place and a reading
//! fails on the first rule in the documented order.
//!
//! Decisions the contract leaves open, taken here:
//!
//! - A reading object uses either `metric` + `value` (+ `unit`) or a `values` map. Values in a
//!   `values` map are in their metric's canonical unit; `unit` (like `metric` and `value`) next to
//!   `values` makes the object malformed. An object with `value` but no `metric` is a reading
//!   whose metric is missing (`unknown_metric` later); an object with none of `metric`, `value`,
//!   `values` is malformed, and so is an empty `values` map.
//! - A key repeated in a reading object or in a `values` map makes that object malformed: a
//!   repeated key means two parsers may read two different readings from the same bytes.
//! - Unknown keys are ignored (forward compatibility), whatever they hold, up to serde_json's
//!   nesting limit of 128 levels; deeper nesting anywhere makes the whole message malformed.
//! - The entity keys (`meter`, `asset`, `energy_source`) are decoded on every topic but only
//!   gateway topics use them; on an entity topic the topic alone names the entity.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::model::EntityKind;

/// The topic prefix of the contract, used when the configuration does not set one.
pub const DEFAULT_PREFIX: &str = "enalysis/v1";

/// Echoed strings are cut to this many characters in rejection details.
const ECHO_CHARS: usize = 100;

// ---------------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------------

/// Where the readings of a message belong, as its topic says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'t> {
    /// `{prefix}/meters|assets|energy-sources/{key}/readings`: every reading belongs to the
    /// entity `key` (a UUID or an external id, not yet resolved).
    Entity { kind: EntityKind, key: &'t str },
    /// `{prefix}/gateways/{gateway}/readings`: each reading names its own entity. The gateway
    /// name is informational; gateways are not entities.
    Gateway { gateway: &'t str },
}

/// Does the MQTT topic filter `filter` (levels, `+` for one level, a final `#` for any rest,
/// including none) match `topic`? As MQTT 3.1.1 §4.7 / 5.0 §4.7 define it.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return f.next().is_none(),
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Is `filter` a well-formed MQTT topic filter: `+` and `#` only as whole levels, `#` last,
/// no NUL, not empty?
pub fn valid_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    !filter.is_empty()
        && !filter.contains('\0')
        && levels.iter().enumerate().all(|(i, l)| {
            (!l.contains('+') || *l == "+")
                && (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
        })
}

/// Parses `{prefix}/{collection}/{key}/readings`. The prefix may contain slashes (a trailing one
/// is ignored); the key is exactly one non-empty topic level. `None` is `unknown_topic`.
pub fn parse_topic<'t>(prefix: &str, topic: &'t str) -> Option<Target<'t>> {
    let prefix = prefix.trim_end_matches('/');
    let rest = if prefix.is_empty() {
        topic
    } else {
        topic.strip_prefix(prefix)?.strip_prefix('/')?
    };
    let (collection, key) = rest.strip_suffix("/readings")?.split_once('/')?;
    if key.is_empty() || key.contains('/') {
        return None;
    }
    let kind = match collection {
        "meters" => EntityKind::Meter,
        "assets" => EntityKind::Asset,
        "energy-sources" => EntityKind::EnergySource,
        "gateways" => return Some(Target::Gateway { gateway: key }),
        _ => return None,
    };
    Some(Target::Entity { kind, key })
}

// ---------------------------------------------------------------------------------------------
// Payloads: what decoding produces
// ---------------------------------------------------------------------------------------------

/// A JSON value as far as the ingest path cares: scalars in full, arrays and objects only as
/// "there was one here" (their content is never a valid field of a reading).
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    /// A negative integer.
    Int(i64),
    /// A non-negative integer.
    Uint(u64),
    /// A number written with a fraction or an exponent, or an integer beyond 64 bits.
    Float(f64),
    /// Borrowed from the payload unless it contained escapes.
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Json<'_> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of a JSON number, whatever its spelling.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Int(i) => Some(i as f64),
            Self::Uint(u) => Some(u as f64),
            Self::Float(f) => Some(f),
            _ => None,
        }
    }
}

/// Echoes the value for a rejection detail: strings quoted, escaped and cut to 100 characters,
/// arrays and objects as `[…]` and `{…}`.
impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("null"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Uint(u) => write!(f, "{u}"),
            Self::Float(x) => write!(f, "{}", Num(*x)),
            Self::Str(s) => write!(f, "{}", Quoted(s)),
            Self::Array => f.write_str("[…]"),
            Self::Object => f.write_str("{…}"),
        }
    }
}

/// A string echoed in a rejection detail: in double quotes, control characters and quotes
/// escaped (so a NUL never reaches a PostgreSQL `text` column), cut to 100 characters.
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'s>(pub &'s str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars().take(ECHO_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        if self.0.chars().nth(ECHO_CHARS).is_some() {
            f.write_str("…")?;
        }
        f.write_str("\"")
    }
}

/// A number echoed in a rejection detail: plain notation for everyday magnitudes, exponent
/// notation for the absurd ones (`1e308` rather than 309 digits).
#[derive(Debug, Clone, Copy)]
pub struct Num(pub f64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        let magnitude = x.abs();
        if x == 0.0 || (1e-5..1e16).contains(&magnitude) {
            write!(f, "{x}")
        } else {
            write!(f, "{x:e}")
        }
    }
}

/// One reading object of a message, its fields raw.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<'a> {
    pub ts: Option<Json<'a>>,
    pub quality: Option<Json<'a>>,
    /// The entity keys `meter`, `asset`, `energy_source`, in [`EntityKind::ALL`] order. Only
    /// gateway topics use them.
    pub entity: [Option<Json<'a>>; 3],
    pub metrics: Metrics<'a>,
}

/// The metric part of a reading object.
#[derive(Debug, Clone, PartialEq)]
pub enum Metrics<'a> {
    /// `metric` + `value` (+ `unit`); `metric` or `value` may be missing, which validation
    /// rejects with its own reason.
    Single {
        metric: Option<Json<'a>>,
        value: Option<Json<'a>>,
        unit: Option<Json<'a>>,
    },
    /// A `values` map: metric name → value in the canonical unit. Sorted by name, names unique,
    /// never empty: this is the decoding order of its readings.
    Map(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// One element of a message: a reading object, or something that is not one.
///
/// Small on purpose: a 256 KiB array holds up to ~130,000 elements, and all of them are in
/// memory at once; a boxed object keeps `[1,1,…]` at 32 bytes an element instead of ~200.
#[derive(Debug, Clone, PartialEq)]
pub enum Element<'a> {
    Reading(Box<Object<'a>>),
    /// Not a reading object of an accepted shape: one `malformed_payload` rejection. The detail
    /// does not name the element's index (the rejection carries it), so that identical elements
    /// have identical details and a run of them is stored as one row.
    Malformed(Cow<'static, str>),
}

/// The elements of a payload, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<'a> {
    pub elements: Vec<Element<'a>>,
    /// The payload was an array (so each element has an index worth naming).
    pub array: bool,
}

impl Element<'_> {
    /// How many readings (and so `seq` numbers) this element stands for: one per metric of a
    /// `values` map, else one.
    pub fn readings(&self) -> usize {
        match self {
            Self::Reading(object) => match &object.metrics {
                Metrics::Map(values) => values.len(),
                Metrics::Single { .. } => 1,
            },
            Self::Malformed(_) => 1,
        }
    }
}

/// The `payload_too_large` detail, when the payload exceeds `max_bytes`. Checked before any
/// parsing, so an oversized message costs nothing but its length.
pub fn oversize(len: usize, max_bytes: usize) -> Option<String> {
    (len > max_bytes).then(|| format!("payload is {len} bytes, above the limit of {max_bytes}"))
}

/// Decodes a payload into its elements, in array order (a single object is one element).
/// `Err` is the `malformed_payload` detail for the message as a whole: not UTF-8, not JSON,
/// nested too deep, neither an object nor an array, or an empty array.
pub fn decode(payload: &[u8]) -> Result<Decoded<'_>, String> {
    let text = std::str::from_utf8(payload).map_err(|e| {
        format!(
            "payload is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )
    })?;
    let top: Top<'_> =
        serde_json::from_str(text).map_err(|e| format!("payload is not valid JSON: {e}"))?;
    match top {
        Top::One(raw) => Ok(Decoded {
            elements: vec![match element(raw) {
                Element::Malformed(why) => {
                    Element::Malformed(format!("reading object: {why}").into())
                }
                reading => reading,
            }],
            array: false,
        }),
        Top::Many(elements) if elements.is_empty() => Err("payload is an empty array".to_owned()),
        Top::Many(elements) => Ok(Decoded {
            elements,
            array: true,
        }),
        Top::Other(kind) => Err(format!(
            "payload is {kind}, not a reading object or an array of them"
        )),
    }
}

/// Checks the shape of one reading object.
fn element(raw: RawObject<'_>) -> Element<'_> {
    match shape(raw) {
        Ok(object) => Element::Reading(Box::new(object)),
        Err(why) => Element::Malformed(Cow::Owned(why)),
    }
}

/// An array element: a reading object, or the detail of what it is instead.
fn array_element(raw: RawElement<'_>) -> Element<'_> {
    match raw {
        RawElement::Object(raw) => element(raw),
        RawElement::Other(kind) => Element::Malformed(Cow::Borrowed(match kind {
            NUMBER => "a number, not a reading object",
            STRING => "a string, not a reading object",
            NULL => "null, not a reading object",
            BOOLEAN => "a boolean, not a reading object",
            ARRAY => "an array, not a reading object",
            _ => "not a reading object",
        })),
    }
}

fn shape(raw: RawObject<'_>) -> Result<Object<'_>, String> {
    if let Some(key) = raw.duplicate {
        return Err(format!("key {} appears more than once", Quoted(&key)));
    }
    let metrics = match raw.values {
        Some(values) => {
            let single = [
                ("metric", &raw.metric),
                ("value", &raw.value),
                ("unit", &raw.unit),
            ];
            if let Some((key, _)) = single.iter().find(|(_, v)| v.is_some()) {
                return Err(format!(
                    "\"{key}\" cannot be combined with \"values\" (values are in canonical units)"
                ));
            }
            let mut entries = match values {
                RawValues::Map(entries) => entries,
                RawValues::Other(kind) => {
                    return Err(format!(
                        "\"values\" is {kind}, not an object of metric names to numbers"
                    ));
                }
            };
            if entries.is_empty() {
                return Err("\"values\" is empty".to_owned());
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(pair) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(format!(
                    "metric {} appears more than once in \"values\"",
                    Quoted(&pair[0].0)
                ));
            }
            Metrics::Map(entries)
        }
        None if raw.metric.is_none() && raw.value.is_none() => {
            return Err("needs \"metric\" and \"value\", or \"values\"".to_owned());
        }
        None => Metrics::Single {
            metric: raw.metric,
            value: raw.value,
            unit: raw.unit,
        },
    };
    Ok(Object {
        ts: raw.ts,
        quality: raw.quality,
        entity: raw.entity,
        metrics,
    })
}

// ---------------------------------------------------------------------------------------------
// Payloads: the serde visitors
//
// Hand-written rather than `serde_json::Value` so that strings are borrowed from the payload,
// nothing is built for keys we ignore, and a repeated key is seen (a `Value` map keeps the last).
// Every visitor accepts every JSON type: the only errors are the parser's own (syntax, numbers
// out of range, nesting beyond 128 levels), which make the whole message malformed.
// ---------------------------------------------------------------------------------------------

/// The whole payload.
// The object variants are the common case; boxing them would cost an allocation per object.
#[allow(clippy::large_enum_variant)]
enum Top<'a> {
    One(RawObject<'a>),
    /// Converted as they are read, so only the small [`Element`]s are ever held together.
    Many(Vec<Element<'a>>),
    /// A scalar: what it is, for the detail.
    Other(&'static str),
}

#[allow(clippy::large_enum_variant)]
enum RawElement<'a> {
    Object(RawObject<'a>),
    Other(&'static str),
}

/// A reading object's known keys, before its shape is checked.
#[derive(Default)]
struct RawObject<'a> {
    ts: Option<Json<'a>>,
    metric: Option<Json<'a>>,
    value: Option<Json<'a>>,
    unit: Option<Json<'a>>,
    quality: Option<Json<'a>>,
    values: Option<RawValues<'a>>,
    entity: [Option<Json<'a>>; 3],
    /// The first key seen twice.
    duplicate: Option<Cow<'a, str>>,
}

enum RawValues<'a> {
    Map(Vec<(Cow<'a, str>, Json<'a>)>),
    Other(&'static str),
}

/// Skips any value, recursing through serde_json so that its nesting limit applies.
struct Skip;

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

const NULL: &str = "null";
const BOOLEAN: &str = "a boolean";
const NUMBER: &str = "a number";
const STRING: &str = "a string";
const ARRAY: &str = "an array";

/// Defines `visit_*` for every scalar as `Ok($value)`, for visitors that treat all scalars alike.
macro_rules! scalars {
    (|$kind:ident| $value:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            let $kind = NULL;
            Ok($value)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            let $kind = BOOLEAN;
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            let $kind = NUMBER;
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            let $kind = NUMBER;
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            let $kind = NUMBER;
            Ok($value)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            let $kind = STRING;
            Ok($value)
        }
    };
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Skip>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, Skip>()?.is_some() {}
    Ok(())
}

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            scalars!(|_kind| Skip);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Skip, A::Error> {
                drain_seq(seq).map(|()| Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Skip, A::Error> {
                drain_map(map).map(|()| Skip)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Json<'de>, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Json<'de>, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, i: i64) -> Result<Json<'de>, E> {
                Ok(Json::Int(i))
            }
            fn visit_u64<E: de::Error>(self, u: u64) -> Result<Json<'de>, E> {
                Ok(Json::Uint(u))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<Json<'de>, E> {
                Ok(Json::Float(x))
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Json<'de>, E> {
                Ok(Json::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Json<'de>, E> {
                Ok(Json::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Json<'de>, E> {
                Ok(Json::Str(Cow::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Json<'de>, A::Error> {
                drain_seq(seq).map(|()| Json::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Json<'de>, A::Error> {
                drain_map(map).map(|()| Json::Object)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawValues<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawValues<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            scalars!(|kind| RawValues::Other(kind));
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawValues<'de>, A::Error> {
                drain_seq(seq).map(|()| RawValues::Other(ARRAY))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValues<'de>, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(4).min(16));
                while let Some((Key(name), value)) = map.next_entry::<Key<'de>, Json<'de>>()? {
                    entries.push((name, value));
                }
                Ok(RawValues::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> RawObject<'de> {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut raw = RawObject::default();
        // Unknown keys are rare: only remembered (to see them repeated) once one turns up.
        let mut unknown: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let slot = match key.as_ref() {
                "ts" => &mut raw.ts,
                "metric" => &mut raw.metric,
                "value" => &mut raw.value,
                "unit" => &mut raw.unit,
                "quality" => &mut raw.quality,
                "meter" => &mut raw.entity[0],
                "asset" => &mut raw.entity[1],
                "energy_source" => &mut raw.entity[2],
                "values" => {
                    if raw.values.is_some() {
                        raw.duplicate.get_or_insert(key);
                        map.next_value::<Skip>()?;
                    } else {
                        raw.values = Some(map.next_value::<RawValues<'de>>()?);
                    }
                    continue;
                }
                _ => {
                    map.next_value::<Skip>()?;
                    if raw.duplicate.is_none() {
                        let seen = unknown.get_or_insert_with(HashSet::new);
                        if seen.contains(&key) {
                            raw.duplicate = Some(key);
                        } else {
                            seen.insert(key);
                        }
                    }
                    continue;
                }
            };
            if slot.is_some() {
                map.next_value::<Skip>()?;
                raw.duplicate.get_or_insert(key);
            } else {
                *slot = Some(map.next_value::<Json<'de>>()?);
            }
        }
        Ok(raw)
    }
}

impl<'de> Deserialize<'de> for RawElement<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawElement<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a reading object")
            }
            scalars!(|kind| RawElement::Other(kind));
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawElement<'de>, A::Error> {
                drain_seq(seq).map(|()| RawElement::Other(ARRAY))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawElement<'de>, A::Error> {
                RawObject::from_map(map).map(RawElement::Object)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a reading object or an array of them")
            }
            scalars!(|kind| Top::Other(kind));
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top<'de>, A::Error> {
                let mut elements = Vec::with_capacity(seq.size_hint().unwrap_or(8).min(64));
                while let Some(e) = seq.next_element::<RawElement<'de>>()? {
                    elements.push(array_element(e));
                }
                Ok(Top::Many(elements))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Top<'de>, A::Error> {
                RawObject::from_map(map).map(Top::One)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_match_as_mqtt_defines_them() {
        for (filter, topic, expected) in [
            ("a/b/c", "a/b/c", true),
            ("a/b/c", "a/b", false),
            ("a/+/c", "a/x/c", true),
            ("a/+/c", "a/x/y/c", false),
            ("a/+", "a/", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/b/#", "a/c/d", false),
            ("#", "anything/at/all", true),
            (
                "enalysis/v1/gateways/+/status",
                "enalysis/v1/gateways/gw1/status",
                true,
            ),
            (
                "enalysis/v1/gateways/+/status",
                "enalysis/v1/gateways/gw1/readings",
                false,
            ),
        ] {
            assert_eq!(topic_matches(filter, topic), expected, "{filter} ~ {topic}");
        }
        for (filter, ok) in [
            ("a/+/b", true),
            ("a/#", true),
            ("#", true),
            ("a/b+", false),
            ("a/#/b", false),
            ("a/b#", false),
            ("", false),
        ] {
            assert_eq!(valid_filter(filter), ok, "{filter}");
        }
    }

    #[test]
    fn topics_name_their_target() {
        use EntityKind::*;
        let entity = |kind, key| Some(Target::Entity { kind, key });
        let cases: &[(&str, &str, Option<Target<'_>>)] = &[
            (
                "enalysis/v1",
                "enalysis/v1/meters/m1/readings",
                entity(Meter, "m1"),
            ),
            (
                "enalysis/v1",
                "enalysis/v1/assets/a-1/readings",
                entity(Asset, "a-1"),
            ),
            (
                "enalysis/v1",
                "enalysis/v1/energy-sources/pv/readings",
                entity(EnergySource, "pv"),
            ),
            (
                "enalysis/v1",
                "enalysis/v1/gateways/gw-7/readings",
                Some(Target::Gateway { gateway: "gw-7" }),
            ),
            (
                "site/a/b",
                "site/a/b/meters/m1/readings",
                entity(Meter, "m1"),
            ),
            (
                "site/a/b/",
                "site/a/b/meters/m1/readings",
                entity(Meter, "m1"),
            ),
            ("", "meters/m1/readings", entity(Meter, "m1")),
            ("enalysis/v1", "enalysis/v1/meters//readings", None),
            ("enalysis/v1", "enalysis/v1/meters/a/b/readings", None),
            ("enalysis/v1", "enalysis/v1/meters/m1/reading", None),
            ("enalysis/v1", "enalysis/v1/meters/m1/readings/", None),
            ("enalysis/v1", "enalysis/v1/meters/m1", None),
            (
                "enalysis/v1",
                "enalysis/v1/energy_sources/pv/readings",
                None,
            ),
            ("enalysis/v1", "enalysis/v1/Meters/m1/readings", None),
            ("enalysis/v1", "enalysis/v2/meters/m1/readings", None),
            ("enalysis/v1", "enalysis/v1x/meters/m1/readings", None),
            ("enalysis/v1", "/enalysis/v1/meters/m1/readings", None),
            ("enalysis/v1", "meters/m1/readings", None),
            ("enalysis/v1", "", None),
        ];
        for (prefix, topic, expected) in cases {
            assert_eq!(
                parse_topic(prefix, topic),
                *expected,
                "{prefix:?} {topic:?}"
            );
        }
    }

    /// Decodes `payload` and renders each element: `single <metric>` / `map <names>` for a
    /// reading object, `malformed: <detail>` otherwise; or `message: <detail>` when the whole
    /// message is malformed.
    fn check(payload: &[u8]) -> Vec<String> {
        match decode(payload) {
            Err(detail) => vec![format!("message: {detail}")],
            Ok(decoded) => decoded
                .elements
                .iter()
                .enumerate()
                .map(|(i, e)| match e {
                    Element::Malformed(detail) if decoded.array => {
                        format!("malformed: element {i}: {detail}")
                    }
                    Element::Malformed(detail) => format!("malformed: {detail}"),
                    Element::Reading(o) => match &o.metrics {
                        Metrics::Single { metric, .. } => match metric {
                            Some(m) => format!("single {m}"),
                            None => "single (no metric)".to_owned(),
                        },
                        Metrics::Map(values) => {
                            let names: Vec<&str> = values.iter().map(|(k, _)| k.as_ref()).collect();
                            format!("map {}", names.join(","))
                        }
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn payload_shapes_decode_into_elements() {
        let cases: &[(&str, &[&str])] = &[
            (r#"{"metric":"power","value":1}"#, &[r#"single "power""#]),
            (
                r#"[{"metric":"a","value":1},{"metric":"b","value":2}]"#,
                &[r#"single "a""#, r#"single "b""#],
            ),
            (
                r#"{"values":{"voltage":1,"current":2,"power":3}}"#,
                &["map current,power,voltage"],
            ),
            (r#" {"value":1} "#, &["single (no metric)"]),
            (
                r#"{"metric":"power","value":1,"future":{"a":[1,{"b":null}]}}"#,
                &[r#"single "power""#],
            ),
            (
                r#"{"metric":"p\u006fwer","value":1}"#,
                &[r#"single "power""#],
            ),
            (
                r#"[1,"x",null,true,[],{"metric":"p","value":1}]"#,
                &[
                    "malformed: element 0: a number, not a reading object",
                    "malformed: element 1: a string, not a reading object",
                    "malformed: element 2: null, not a reading object",
                    "malformed: element 3: a boolean, not a reading object",
                    "malformed: element 4: an array, not a reading object",
                    r#"single "p""#,
                ],
            ),
            (
                r#"[{"ts":1}]"#,
                &[r#"malformed: element 0: needs "metric" and "value", or "values""#],
            ),
            (
                r#"{"metric":"power","values":{"power":1}}"#,
                &[
                    r#"malformed: reading object: "metric" cannot be combined with "values" (values are in canonical units)"#,
                ],
            ),
            (
                r#"{"unit":"W","values":{"power":1}}"#,
                &[
                    r#"malformed: reading object: "unit" cannot be combined with "values" (values are in canonical units)"#,
                ],
            ),
            (
                r#"{"values":{}}"#,
                &[r#"malformed: reading object: "values" is empty"#],
            ),
            (
                r#"{"values":[1]}"#,
                &[
                    r#"malformed: reading object: "values" is an array, not an object of metric names to numbers"#,
                ],
            ),
            (
                r#"{"metric":"power","value":1,"value":2}"#,
                &[r#"malformed: reading object: key "value" appears more than once"#],
            ),
            (
                r#"[{"metric":"p","value":1},{"metric":"p","value":1,"x":1,"x":2}]"#,
                &[
                    r#"single "p""#,
                    r#"malformed: element 1: key "x" appears more than once"#,
                ],
            ),
            (
                r#"{"values":{"power":1,"power":2}}"#,
                &[
                    r#"malformed: reading object: metric "power" appears more than once in "values""#,
                ],
            ),
            (
                r#"{"values":{"power":1},"values":{"power":1}}"#,
                &[r#"malformed: reading object: key "values" appears more than once"#],
            ),
            ("[]", &["message: payload is an empty array"]),
            (
                "\"x\"",
                &["message: payload is a string, not a reading object or an array of them"],
            ),
            (
                "42",
                &["message: payload is a number, not a reading object or an array of them"],
            ),
            (
                "null",
                &["message: payload is null, not a reading object or an array of them"],
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(check(payload.as_bytes()), *expected, "{payload}");
        }
    }

    /// Whole-message failures, by a fragment of their detail.
    #[test]
    fn broken_payloads_are_one_malformed_message() {
        let deep_array = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let deep_unknown = format!(
            r#"{{"metric":"power","value":1,"x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "not valid JSON"),
            (b"   ".to_vec(), "not valid JSON"),
            (b"{".to_vec(), "not valid JSON"),
            (b"{\"metric\":\"power\"}{}".to_vec(), "not valid JSON"),
            (
                b"{\"metric\":\"power\",\"value\":1e400}".to_vec(),
                "not valid JSON",
            ),
            (
                b"\xff\xfe{}".to_vec(),
                "not UTF-8 (invalid byte at offset 0)",
            ),
            (
                b"{\"metric\":\"pow\xc3\x28\"}".to_vec(),
                "not UTF-8 (invalid byte at offset 14)",
            ),
            (b"\0".to_vec(), "not valid JSON"),
            (
                b"{\"metric\":\"po\0wer\",\"value\":1}".to_vec(),
                "not valid JSON",
            ),
            (deep_array.into_bytes(), "recursion limit exceeded"),
            (deep_unknown.into_bytes(), "recursion limit exceeded"),
        ];
        for (payload, fragment) in cases {
            let got = check(&payload);
            assert!(
                got.len() == 1 && got[0].starts_with("message: ") && got[0].contains(fragment),
                "{:?}: {got:?}",
                String::from_utf8_lossy(&payload)
            );
        }
    }

    #[test]
    fn moderately_nested_unknown_keys_are_ignored() {
        let nested = format!(
            r#"{{"metric":"power","value":1,"x":{}{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(check(nested.as_bytes()), [r#"single "power""#]);
    }

    #[test]
    fn scalars_keep_their_json_type_and_strings_are_borrowed() {
        let payload = br#"{"ts":1764082800000,"metric":"power","value":-2.5,"unit":"kW","quality":null,"meter":"m\"1","asset":-3}"#;
        let elements = decode(payload).expect("decodes").elements;
        let Element::Reading(o) = &elements[0] else {
            panic!("not a reading: {elements:?}")
        };
        assert_eq!(o.ts, Some(Json::Uint(1_764_082_800_000)));
        assert_eq!(o.quality, Some(Json::Null));
        assert_eq!(o.entity[0], Some(Json::Str(Cow::Owned("m\"1".into()))));
        assert_eq!(o.entity[1], Some(Json::Int(-3)));
        assert_eq!(o.entity[2], None);
        let Metrics::Single {
            metric,
            value,
            unit,
        } = &o.metrics
        else {
            panic!("not single")
        };
        assert!(matches!(metric, Some(Json::Str(Cow::Borrowed("power")))));
        assert_eq!(value.as_ref().and_then(Json::as_f64), Some(-2.5));
        assert_eq!(unit.as_ref().and_then(Json::as_str), Some("kW"));
        assert_eq!(elements[0].readings(), 1);
    }

    #[test]
    fn echoes_are_escaped_and_cut() {
        let long = "x".repeat(150);
        let cases: &[(Json<'_>, String)] = &[
            (Json::Str("a\"b\0c\n".into()), r#""a\"b\0c\n""#.to_owned()),
            (
                Json::Str(long.as_str().into()),
                format!("\"{}…\"", "x".repeat(100)),
            ),
            (Json::Float(1e308), "1e308".to_owned()),
            (Json::Float(-3.25), "-3.25".to_owned()),
            (Json::Float(1.5e-9), "1.5e-9".to_owned()),
            (Json::Uint(7), "7".to_owned()),
            (Json::Array, "[…]".to_owned()),
            (Json::Object, "{…}".to_owned()),
            (Json::Null, "null".to_owned()),
        ];
        for (json, expected) in cases {
            assert_eq!(json.to_string(), *expected);
        }
    }

    #[test]
    fn oversize_counts_bytes_against_an_inclusive_limit() {
        assert_eq!(oversize(10, 10), None);
        assert_eq!(
            oversize(11, 10).as_deref(),
            Some("payload is 11 bytes, above the limit of 10")
        );
    }
}
