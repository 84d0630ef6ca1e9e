//! The statements: binary COPY of accepted readings (in chunks); the conflict path, which decides
//! each key's readings by the correction policy, writes the outcome in one statement and
//! isolates refused rows; and the inserts of rejection rows (in chunks).

use std::pin::pin;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use super::WriteError;
use super::rejections::{self, CHUNK_ROWS, MessageRow, Rows, RunRow, chunks};
use crate::batch::Accepted;
use crate::corrections::{self, Policy, Replaced, Version};
use crate::db::pg_error_message;
use crate::model::{EntityKind, Quality, Reading, Rejection};

pub const COLUMNS: &str = "entity_type, entity_id, metric, ts, value, unit, quality, received_at";

/// Is this error about the rows themselves (retrying the same rows cannot help)?
pub fn row_level(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => false,
        // Class 22 (data exception) and 23 (integrity constraint violation).
        Some(code) => code.code().starts_with("22") || code.code().starts_with("23"),
        None => false,
    }
}

pub fn unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

// The fast path's statements take the connection (`Transaction::client`, or a connection with a
// transaction begun by hand, whose COMMIT the pipelined writer sends from a task of its own).

/// Binary COPY of `rows` into `measurements`, one COPY per [`CHUNK_ROWS`]; returns the rows
/// copied.
pub async fn copy_chunked(
    tx: &Client,
    types: &[Type],
    rows: &[&Accepted],
) -> Result<u64, tokio_postgres::Error> {
    let mut n = 0;
    for chunk in rows.chunks(CHUNK_ROWS) {
        n += copy_rows(tx, types, chunk).await?;
    }
    Ok(n)
}

async fn copy_rows(
    tx: &Client,
    types: &[Type],
    rows: &[&Accepted],
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!(
            "COPY measurements ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, types));
    for a in rows {
        let r = &a.reading;
        writer
            .as_mut()
            .write(&[
                &r.entity_type,
                &r.entity_id,
                &r.metric,
                &r.ts,
                &r.value,
                &r.unit,
                &r.quality,
                &a.received_at,
            ])
            .await?;
    }
    writer.finish().await
}

// The conflict path's statements take rows as parameter arrays (one per column) and reach
// each key through the primary key's conflict check, which routes the row to its partition.
// Looking keys up by a join or a LATERAL probe instead goes through the partitioned parent:
// with the ~17 partitions of the default retention that cost 27 µs a key (90 µs with a row
// lock) against ~9 µs routed, and a join could become a hash of a whole partition when its
// statistics lagged (250 ms a chunk at 300,000 rows). Measured on this machine, BENCHMARKS.md.

/// `unnest` of the parameter arrays of one [`Columns`], `$first` to `$first + 7`, in the order
/// of [`COLUMNS`] and [`Columns::params`].
fn unnest(first: usize) -> String {
    const TYPES: [&str; 8] = [
        "entity_type_enum",
        "uuid",
        "text",
        "timestamptz",
        "float8",
        "text",
        "quality_enum",
        "timestamptz",
    ];
    let arrays: Vec<String> = TYPES
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}[]", first + i))
        .collect();
    format!("unnest({})", arrays.join(", "))
}

/// Stores the first reading of each key of a chunk where the key holds none; returns the keys
/// it stored. A key another transaction is inserting waits for it, then counts as held.
static FIRST: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO measurements ({COLUMNS}) SELECT * FROM {}
         ON CONFLICT DO NOTHING RETURNING entity_type, entity_id, metric, ts",
        unnest(1)
    )
});

/// The versions the keys the first statement did not store hold, locked until commit: a
/// no-op update (the only way to lock and read a row through the conflict check) returns the
/// stored row. Rows go in key order, so two daemons lock in the same order and do not deadlock.
/// A second daemon deciding the same key waits here and then reads the first one's result.
static HELD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO measurements ({COLUMNS}) SELECT * FROM {}
         ON CONFLICT (entity_type, entity_id, metric, ts) DO UPDATE
         SET received_at = measurements.received_at
         RETURNING {COLUMNS}",
        unnest(1)
    )
});

/// Writes what the corrections decided, in one statement: the readings a key holds now in
/// place of another (rows this transaction holds locked, or stored by [`FIRST`]) and the
/// versions they replaced (to the revisions).
static APPLY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH upd AS (
             INSERT INTO measurements ({COLUMNS}) SELECT * FROM {}
             ON CONFLICT (entity_type, entity_id, metric, ts) DO UPDATE
             SET value = excluded.value, unit = excluded.unit, quality = excluded.quality,
                 received_at = excluded.received_at)
         INSERT INTO measurement_revisions ({COLUMNS}) SELECT * FROM {}",
        unnest(1),
        unnest(9)
    )
});

/// One set of `measurements` rows as parameter arrays, a column each.
#[derive(Default)]
struct Columns<'a> {
    entity_type: Vec<EntityKind>,
    entity_id: Vec<Uuid>,
    metric: Vec<&'a str>,
    ts: Vec<DateTime<Utc>>,
    value: Vec<f64>,
    unit: Vec<&'a str>,
    quality: Vec<Quality>,
    received_at: Vec<DateTime<Utc>>,
}

impl<'a> Columns<'a> {
    fn push_reading(&mut self, a: &'a Accepted) {
        let r = &a.reading;
        self.push(r, r.value, r.unit, r.quality, a.received_at);
    }

    fn push(
        &mut self,
        key: &'a Reading,
        value: f64,
        unit: &'a str,
        quality: Quality,
        received_at: DateTime<Utc>,
    ) {
        self.entity_type.push(key.entity_type);
        self.entity_id.push(key.entity_id);
        self.metric.push(key.metric);
        self.ts.push(key.ts);
        self.value.push(value);
        self.unit.push(unit);
        self.quality.push(quality);
        self.received_at.push(received_at);
    }

    fn len(&self) -> usize {
        self.entity_id.len()
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.entity_type,
            &self.entity_id,
            &self.metric,
            &self.ts,
            &self.value,
            &self.unit,
            &self.quality,
            &self.received_at,
        ]
    }
}

/// A stored version as the conflict path reads it.
struct Stored {
    version: Version,
    unit: String,
    received_at: DateTime<Utc>,
}

/// What the conflict path did with accepted readings.
#[derive(Debug, Default)]
pub struct Settlement<'a> {
    /// Stored under keys that held nothing.
    pub inserted: u64,
    /// Stored in place of a reading (each replaced version kept as a revision).
    pub corrected: u64,
    pub duplicates: u64,
    /// Rejected after all: refused by the database, or superseded.
    pub rejected: Vec<(&'a Accepted, Rejection)>,
}

#[derive(Debug, thiserror::Error)]
enum ChunkError {
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    /// A key the chunk sent did not come back as stored or held: deciding it would drop its
    /// readings unseen, so the batch is refused instead (and, repeated, isolated).
    #[error("{0} keys came back from the database unlike they were sent")]
    Unmatched(usize),
}

impl From<ChunkError> for WriteError {
    fn from(e: ChunkError) -> Self {
        match e {
            ChunkError::Pg(e) => e.into(),
            unmatched @ ChunkError::Unmatched(_) => WriteError::Db {
                msg: unmatched.to_string(),
                failure: super::Failure::Refused,
            },
        }
    }
}

/// The conflict path for one chunk (at most [`CHUNK_ROWS`] rows): each key's first reading is
/// stored where the key holds none ([`FIRST`]), the versions of the others are read and locked
/// ([`HELD`]), each key's readings are decided by `policy` against what it holds
/// ([`corrections::settle`]), and what that changes is written by one statement ([`APPLY`]):
/// one to three round trips whatever the chunk's size, none per row. A chunk the database
/// refuses is split in halves under savepoints until the refused rows stand alone (then
/// rejected with the reason).
pub async fn settle_isolating<'a>(
    tx: &mut Transaction<'_>,
    rows: &[&'a Accepted],
    policy: Policy,
    out: &mut Settlement<'a>,
) -> Result<(), WriteError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sp = tx.savepoint("chunk").await?;
    let mut settled = Settlement::default();
    match settle_chunk(&sp, rows, policy, &mut settled).await {
        Ok(()) => {
            sp.commit().await?;
            out.inserted += settled.inserted;
            out.corrected += settled.corrected;
            out.duplicates += settled.duplicates;
            out.rejected.append(&mut settled.rejected);
            Ok(())
        }
        Err(ChunkError::Pg(e)) if row_level(&e) => {
            sp.rollback().await?;
            if rows.len() == 1 {
                out.rejected
                    .push((rows[0], rejections::refused(rows[0], &pg_error_message(&e))));
                return Ok(());
            }
            let (left, right) = rows.split_at(rows.len() / 2);
            Box::pin(settle_isolating(tx, left, policy, out)).await?;
            Box::pin(settle_isolating(tx, right, policy, out)).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn settle_chunk<'a>(
    tx: &Transaction<'_>,
    rows: &[&'a Accepted],
    policy: Policy,
    out: &mut Settlement<'a>,
) -> Result<(), ChunkError> {
    // Each key's positions, in arrival order; keys in key order (the order of the locks).
    let mut keys: BTreeMap<Key, Vec<usize>> = BTreeMap::new();
    for (i, a) in rows.iter().enumerate() {
        let r = &a.reading;
        keys.entry((r.entity_type, r.entity_id, r.metric, r.ts))
            .or_default()
            .push(i);
    }
    let mut firsts = Columns::default();
    for positions in keys.values() {
        firsts.push_reading(rows[positions[0]]);
    }
    let mut stored_first: HashSet<Key> = HashSet::new();
    for row in tx.query(FIRST.as_str(), &firsts.params()).await? {
        if let Some(k) = returned_key(&row)? {
            stored_first.insert(k);
        }
    }
    let mut held_rows = Columns::default();
    for (k, positions) in &keys {
        if !stored_first.contains(k) {
            held_rows.push_reading(rows[positions[0]]);
        }
    }
    let mut held: HashMap<Key, Stored> = HashMap::new();
    if held_rows.len() > 0 {
        for row in tx.query(HELD.as_str(), &held_rows.params()).await? {
            let Some(k) = returned_key(&row)? else {
                continue;
            };
            let stored = Stored {
                version: Version {
                    value: row.try_get(4)?,
                    quality: row.try_get(6)?,
                },
                unit: row.try_get(5)?,
                received_at: row.try_get(7)?,
            };
            held.insert(k, stored);
        }
    }
    let unmatched = keys
        .keys()
        .filter(|k| !stored_first.contains(k) && !held.contains_key(k))
        .count();
    if unmatched > 0 {
        return Err(ChunkError::Unmatched(unmatched));
    }
    out.inserted += stored_first.len() as u64;
    let (mut replacing, mut replaced) = (Columns::default(), Columns::default());
    for (k, positions) in &keys {
        let stored = held.get(k);
        let versions = positions.iter().map(|&i| {
            let r = &rows[i].reading;
            (
                i,
                Version {
                    value: r.value,
                    quality: r.quality,
                },
            )
        });
        let s = corrections::settle(policy, stored.map(|s| s.version), versions);
        // A new key's first reading is already stored; anything else the key ends with
        // replaces what it holds.
        if let Some(last) = s.last
            && (stored.is_some() || last != positions[0])
        {
            replacing.push_reading(rows[last]);
        }
        for r in &s.replaced {
            match (r, stored) {
                (Replaced::Stored, Some(st)) => {
                    let key = &rows[positions[0]].reading;
                    replaced.push(
                        key,
                        st.version.value,
                        &st.unit,
                        st.version.quality,
                        st.received_at,
                    );
                }
                (Replaced::New(i), _) => replaced.push_reading(rows[*i]),
                // `settle` names the stored version only when there is one.
                (Replaced::Stored, None) => {}
            }
        }
        out.corrected += s.replaced.len() as u64;
        out.duplicates += s.duplicates.len() as u64;
        for (i, against) in s.superseded {
            let a = rows[i];
            out.rejected
                .push((a, rejections::superseded(a, against, policy)));
        }
    }
    if replacing.len() > 0 || replaced.len() > 0 {
        let params: Vec<&(dyn ToSql + Sync)> = [replacing.params(), replaced.params()]
            .into_iter()
            .flatten()
            .collect();
        tx.execute(APPLY.as_str(), &params).await?;
    }
    Ok(())
}

/// A key of `measurements`; metric names are the catalogue's.
type Key = (EntityKind, Uuid, &'static str, DateTime<Utc>);

/// The key of a row the conflict path's statements return.
fn returned_key(row: &tokio_postgres::Row) -> Result<Option<Key>, tokio_postgres::Error> {
    let metric: &str = row.try_get(2)?;
    let Some(m) = crate::catalogue::lookup(metric) else {
        return Ok(None);
    };
    Ok(Some((
        row.try_get(0)?,
        row.try_get(1)?,
        m.name,
        row.try_get(3)?,
    )))
}

/// Inserts the rejection rows, message rows first (the runs refer to them), each table in
/// bounded chunks. Idempotent: a redelivered message maps onto the rows already stored.
/// Returns the runs inserted.
pub async fn insert_rejections(tx: &Client, rows: &Rows<'_>) -> Result<u64, WriteError> {
    for chunk in chunks(&rows.messages, MessageRow::weight) {
        insert_messages(tx, chunk).await?;
    }
    let mut n = 0;
    for chunk in chunks(&rows.runs, RunRow::weight) {
        n += insert_runs(tx, chunk).await?;
    }
    Ok(n)
}

async fn insert_messages(tx: &Client, rows: &[MessageRow<'_>]) -> Result<u64, WriteError> {
    let digest: Vec<&[u8]> = rows.iter().map(|r| r.digest).collect();
    let received_at: Vec<_> = rows.iter().map(|r| r.received_at).collect();
    let topic: Vec<&str> = rows.iter().map(|r| r.topic.as_ref()).collect();
    let payload: Vec<&[u8]> = rows.iter().map(|r| r.payload).collect();
    let is_text: Vec<bool> = rows.iter().map(|r| r.is_text).collect();
    let payload_size: Vec<i32> = rows.iter().map(|r| r.payload_size).collect();
    // The text copy is made here from the bytes (checked UTF-8 without NUL), not sent twice.
    Ok(tx
        .execute(
            "INSERT INTO rejected_messages (message_digest, received_at, topic, payload,
                 payload_text, payload_size)
             SELECT d, r, t, p, CASE WHEN x THEN convert_from(p, 'UTF8') END, s
             FROM unnest($1::bytea[], $2::timestamptz[], $3::text[], $4::bytea[], $5::bool[],
                         $6::int4[]) AS u(d, r, t, p, x, s)
             ON CONFLICT (message_digest) DO NOTHING",
            &[
                &digest,
                &received_at,
                &topic,
                &payload,
                &is_text,
                &payload_size,
            ],
        )
        .await?)
}

async fn insert_runs(tx: &Client, rows: &[RunRow<'_>]) -> Result<u64, WriteError> {
    let digest: Vec<&[u8]> = rows.iter().map(|r| r.digest).collect();
    let seq: Vec<i32> = rows.iter().map(|r| r.seq).collect();
    let count: Vec<i32> = rows.iter().map(|r| r.count).collect();
    let element: Vec<Option<i32>> = rows.iter().map(|r| r.element).collect();
    let received_at: Vec<_> = rows.iter().map(|r| r.received_at).collect();
    let reason: Vec<&str> = rows.iter().map(|r| r.reason).collect();
    let detail: Vec<&str> = rows.iter().map(|r| r.detail.as_ref()).collect();
    let entity_type: Vec<Option<&str>> = rows.iter().map(|r| r.entity_type).collect();
    let entity_id: Vec<_> = rows.iter().map(|r| r.entity_id).collect();
    let metric: Vec<Option<&str>> = rows.iter().map(|r| r.metric.as_deref()).collect();
    let ts: Vec<_> = rows.iter().map(|r| r.ts).collect();
    Ok(tx
        .execute(
            "INSERT INTO rejected_reading_runs (message_digest, seq, count, element, received_at,
                 reason, detail, entity_type, entity_id, metric, ts)
             SELECT d, s, c, e, r, reason::rejection_reason_enum, detail, et::entity_type_enum,
                    eid, m, ts
             FROM unnest($1::bytea[], $2::int4[], $3::int4[], $4::int4[], $5::timestamptz[],
                         $6::text[], $7::text[], $8::text[], $9::uuid[], $10::text[],
                         $11::timestamptz[])
                  AS u(d, s, c, e, r, reason, detail, et, eid, m, ts)
             ON CONFLICT (message_digest, seq) DO NOTHING",
            &[
                &digest,
                &seq,
                &count,
                &element,
                &received_at,
                &reason,
                &detail,
                &entity_type,
                &entity_id,
                &metric,
                &ts,
            ],
        )
        .await?)
}
