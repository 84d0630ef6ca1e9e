//! Rejections as rows: one `rejected_messages` row per message (its payload, once), one
//! `rejected_reading_runs` row per run of readings rejected alike; and the chunks they go to
//! PostgreSQL in, so that no statement grows with the input (its protocol messages stop at
//! 1 GB). Encoding is pure, so it is unit-tested and fuzzed without a database.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::batch::{Accepted, Message, Part};
use crate::corrections::{Policy, Version};
use crate::model::{Reason, Rejection};

/// At most this many rows in one statement ...
pub const CHUNK_ROWS: usize = 5_000;
/// ... and at most about this many bytes of parameters (a single message larger than this, up
/// to `ingest.max_payload_bytes` ≤ 64 MiB, goes alone). Small: the driver holds a statement's
/// parameters twice while it sends them (encoded, and in its write buffer), outside the byte
/// budget, and a few round trips more per batch of rejections cost nothing that matters.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The seq numbers given to readings the writer rejects (refused, superseded) start here, above any position the
/// validator assigns, so they never collide with its rejections of the same message.
pub const REFUSED_SEQ_BASE: u32 = 1 << 30;
/// The seq of the one row kept for a message whose rejections could not be stored either.
pub const UNSTORABLE_SEQ: u32 = i32::MAX as u32;
/// How much of the topic the last-resort row keeps.
const UNSTORABLE_TOPIC_CHARS: usize = 1024;

/// How a part's rejections are to be stored.
#[derive(Debug, Clone, Copy)]
pub enum Form<'e> {
    /// As judged, plus the accepted readings the writer rejected after all.
    Judged,
    /// The message could not be stored even as rejections: one row saying so, without the
    /// payload (its size is kept). The last resort before concluding the database is at fault.
    Unstorable(&'e str),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow<'a> {
    pub digest: &'a [u8],
    pub received_at: DateTime<Utc>,
    pub topic: Cow<'a, str>,
    pub payload: &'a [u8],
    /// The payload is UTF-8 without NUL, so the database keeps a text copy too (made there,
    /// not sent twice).
    pub is_text: bool,
    pub payload_size: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunRow<'a> {
    pub digest: &'a [u8],
    pub seq: i32,
    pub count: i32,
    pub element: Option<i32>,
    pub received_at: DateTime<Utc>,
    pub reason: &'static str,
    pub detail: Cow<'a, str>,
    pub entity_type: Option<&'static str>,
    pub entity_id: Option<Uuid>,
    pub metric: Option<Cow<'a, str>>,
    pub ts: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rows<'a> {
    pub messages: Vec<MessageRow<'a>>,
    pub runs: Vec<RunRow<'a>>,
}

impl MessageRow<'_> {
    /// Parameter bytes (payload and its text copy dominate).
    pub fn weight(&self) -> usize {
        96 + self.topic.len() + self.payload.len()
    }
}

impl RunRow<'_> {
    pub fn weight(&self) -> usize {
        128 + self.detail.len() + self.metric.as_ref().map_or(0, |m| m.len())
    }
}

/// PostgreSQL text cannot hold NUL; anything echoed from outside is cleaned of it (borrowed,
/// not copied, when there is none: the usual case).
pub fn clean(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\\0"))
    } else {
        Cow::Borrowed(s)
    }
}

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The rejection recorded for an accepted reading the database refused (`why`).
pub fn refused(a: &Accepted, why: &str) -> Rejection {
    let r = &a.reading;
    let detail = format!(
        "value {} {} for {} was refused by the database: {why}",
        r.value, r.unit, r.metric
    );
    after_judgement(a, Reason::InvalidValue, detail)
}

/// The rejection recorded for an accepted reading the correction policy did not apply: the key
/// held `held` (CONTRACT.md §4).
pub fn superseded(a: &Accepted, held: Version, policy: Policy) -> Rejection {
    let r = &a.reading;
    let detail = format!(
        "the key holds {} {} ({}), which policy {:?} keeps over this {} {} ({})",
        held.value,
        r.unit,
        held.quality.as_str(),
        policy.as_str(),
        r.value,
        r.unit,
        r.quality.as_str()
    );
    after_judgement(a, Reason::Superseded, detail)
}

/// A rejection of an accepted reading, decided by the writer after validation. Its seq lies
/// above the validator's, so redelivery maps it onto the same row.
fn after_judgement(a: &Accepted, reason: Reason, detail: String) -> Rejection {
    let r = &a.reading;
    Rejection {
        reason,
        detail,
        seq: REFUSED_SEQ_BASE.saturating_add(a.index),
        count: 1,
        element: None,
        entity_type: Some(r.entity_type),
        entity_id: Some(r.entity_id),
        metric: Some(r.metric.to_string()),
        ts: Some(r.ts),
    }
}

/// The rows for `part`'s rejections and for the accepted readings the writer rejected after all
/// (refused by the database, or superseded: [`refused`], [`superseded`]). Messages without any
/// are left out.
pub fn encode<'a>(
    part: &Part<'a>,
    after: &[(&'a Accepted, Rejection)],
    form: Form<'_>,
) -> Rows<'a> {
    let mut rows = Rows::default();
    // One row per message with something to store (consecutive rejections share it; refused
    // readings revisit earlier messages, hence the dedup at the end).
    let add_message = |rows: &mut Rows<'a>, msg: &'a Message| {
        if rows.messages.last().map(|r| r.digest) == Some(&msg.digest()[..]) {
            return;
        }
        let payload_size = i32::try_from(msg.size).unwrap_or(i32::MAX);
        rows.messages.push(match form {
            Form::Judged => MessageRow {
                digest: msg.digest(),
                received_at: msg.received_at,
                topic: clean(&msg.topic),
                payload: &msg.payload,
                is_text: is_text(&msg.payload),
                payload_size,
            },
            Form::Unstorable(_) => MessageRow {
                digest: msg.digest(),
                received_at: msg.received_at,
                topic: Cow::Owned(
                    clean(&msg.topic)
                        .chars()
                        .take(UNSTORABLE_TOPIC_CHARS)
                        .collect(),
                ),
                payload: &[],
                is_text: false,
                payload_size,
            },
        });
    };
    if let Form::Unstorable(why) = form {
        let detail = clean(&format!(
            "the database refused this message and its rejections, so only this row is kept \
             (the payload is not): {why}"
        ))
        .into_owned();
        let j = Rejection::new(Reason::InvalidValue, UNSTORABLE_SEQ, "");
        for msg in part.messages {
            add_message(&mut rows, msg);
            rows.runs.push(RunRow {
                detail: Cow::Owned(detail.clone()),
                ..run_row(msg, &j)
            });
        }
        return rows;
    }
    for r in part.rejected {
        let Some(msg) = part.message(r.message) else {
            continue;
        };
        add_message(&mut rows, msg);
        let j = &r.rejection;
        rows.runs.push(RunRow {
            detail: clean(&j.detail),
            metric: j.metric.as_deref().map(clean),
            ..run_row(msg, j)
        });
    }
    for (a, j) in after {
        let Some(msg) = part.message(a.message) else {
            continue;
        };
        add_message(&mut rows, msg);
        rows.runs.push(RunRow {
            detail: Cow::Owned(clean(&j.detail).into_owned()),
            metric: j
                .metric
                .as_deref()
                .map(|m| Cow::Owned(clean(m).into_owned())),
            ..run_row(msg, j)
        });
    }
    // Refused readings come after the validator's rejections of other messages; one row per
    // message all the same.
    rows.messages.sort_by(|a, b| a.digest.cmp(b.digest));
    rows.messages.dedup_by(|a, b| a.digest == b.digest);
    rows
}

/// A run's row but for its texts (detail and metric, which the caller cleans and borrows or
/// owns).
fn run_row<'a>(msg: &'a Message, r: &Rejection) -> RunRow<'a> {
    RunRow {
        digest: msg.digest(),
        seq: int(r.seq),
        count: int(r.count.max(1)),
        element: r.element.map(int),
        received_at: msg.received_at,
        reason: r.reason.as_str(),
        detail: Cow::Borrowed(""),
        entity_type: r.entity_type.map(|k| k.as_str()),
        entity_id: r.entity_id,
        metric: None,
        ts: r.ts,
    }
}

/// Whether the database keeps a text copy of the payload: UTF-8 without NUL.
pub fn is_text(payload: &[u8]) -> bool {
    std::str::from_utf8(payload).is_ok_and(|s| !s.contains('\0'))
}

/// `items` cut into consecutive chunks of at most [`CHUNK_ROWS`] items and about
/// [`CHUNK_BYTES`] bytes; an item heavier than that is a chunk of its own.
pub fn chunks<T>(items: &[T], weight: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        let w = weight(item);
        if i > start && (i - start >= CHUNK_ROWS || bytes + w > CHUNK_BYTES) {
            out.push(&items[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += w;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_both_bounds_and_keep_every_item_in_order() {
        let items: Vec<usize> = (0..12_000).collect();
        let cut = chunks(&items, |_| 10);
        assert_eq!(
            cut.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [CHUNK_ROWS, CHUNK_ROWS, 2_000]
        );
        let heavy = [CHUNK_BYTES / 2 + 1, 10, CHUNK_BYTES * 3, 5];
        let cut = chunks(&heavy, |w| *w);
        assert_eq!(cut, [&heavy[0..2], &heavy[2..3], &heavy[3..4]]);
        assert!(chunks(&[] as &[usize], |_| 1).is_empty());
    }

    #[test]
    fn clean_escapes_nul() {
        assert_eq!(clean("a\0b"), "a\\0b");
        assert_eq!(clean("plain"), "plain");
    }
}
