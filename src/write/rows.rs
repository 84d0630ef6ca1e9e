//! The statements: binary COPY of accepted readings (in chunks); the conflict path, which decides
//! each key's readings by the correction policy, writes the outcome in one statement and
//! isolates refused rows; and the inserts of rejection rows (in chunks).

use std::pin::pin;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use super::rejections::{self, CHUNK_ROWS, MessageRow, Rows, RunRow, chunks};
use super::{Failure, WriteError};
use crate::batch::Accepted;
use crate::corrections::{self, Policy, Replaced, Version};
use crate::db::pg_error_message;
use crate::model::{EntityKind, Rejection};

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

/// Binary COPY of `rows` into `measurements`, one COPY per [`CHUNK_ROWS`]; returns the rows
/// copied.
pub async fn copy_chunked(
    tx: &Transaction<'_>,
    types: &[Type],
    rows: &[&Accepted],
) -> Result<u64, tokio_postgres::Error> {
    let mut n = 0;
    for chunk in rows.chunks(CHUNK_ROWS) {
        n += copy_rows(tx, Into::Measurements, types, chunk).await?;
    }
    Ok(n)
}

/// Where a COPY goes: the table itself, or the staging table of the conflict path, where each
/// row also carries its position in the chunk (`ord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Into {
    Measurements,
    Staging,
}

async fn copy_rows(
    tx: &Transaction<'_>,
    into: Into,
    types: &[Type],
    rows: &[&Accepted],
) -> Result<u64, tokio_postgres::Error> {
    let statement = match into {
        Into::Measurements => format!("COPY measurements ({COLUMNS}) FROM STDIN (FORMAT binary)"),
        Into::Staging => {
            format!("COPY measurements_staging ({COLUMNS}, ord) FROM STDIN (FORMAT binary)")
        }
    };
    let mut types = types.to_vec();
    if into == Into::Staging {
        types.push(Type::INT4);
    }
    let sink = tx.copy_in(&statement).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    for (i, a) in rows.iter().enumerate() {
        let r = &a.reading;
        // A chunk holds at most CHUNK_ROWS rows.
        let ord = i32::try_from(i).unwrap_or(i32::MAX);
        let values: [&(dyn ToSql + Sync); 9] = [
            &r.entity_type,
            &r.entity_id,
            &r.metric,
            &r.ts,
            &r.value,
            &r.unit,
            &r.quality,
            &a.received_at,
            &ord,
        ];
        let n = if into == Into::Staging { 9 } else { 8 };
        writer.as_mut().write(&values[..n]).await?;
    }
    writer.finish().await
}

/// The staging table of the conflict path: one chunk at a time, emptied at commit.
pub const CREATE_STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS measurements_staging \
     (LIKE measurements, ord int4 NOT NULL) ON COMMIT DELETE ROWS";

/// The stored versions of a staged chunk's keys, locked until commit (so a second daemon
/// deciding the same key waits and then sees this one's result), in key order (so two such
/// transactions lock in the same order and cannot deadlock over them).
const STORED: &str = "SELECT s.ord, m.value, m.quality
     FROM measurements_staging s
     JOIN measurements m USING (entity_type, entity_id, metric, ts)
     ORDER BY m.entity_type, m.entity_id, m.metric, m.ts
     FOR UPDATE OF m";

/// Applies what the corrections decided for a staged chunk, by positions in the chunk: $1 the
/// readings stored under new keys, $2 those replacing a stored reading, $3 (a position of the
/// key) the stored versions replaced, $4 the versions of this chunk stored and replaced in it.
/// One statement; all its parts see the same snapshot, so `rev` reads the rows as they were
/// before `upd`.
const APPLY: &str = "WITH ins AS (
         INSERT INTO measurements (entity_type, entity_id, metric, ts, value, unit, quality,
             received_at)
         SELECT s.entity_type, s.entity_id, s.metric, s.ts, s.value, s.unit, s.quality,
             s.received_at
         FROM measurements_staging s JOIN unnest($1::int4[]) AS p(ord) ON p.ord = s.ord
         ON CONFLICT DO NOTHING RETURNING 1),
     upd AS (
         UPDATE measurements m
         SET value = s.value, unit = s.unit, quality = s.quality, received_at = s.received_at
         FROM measurements_staging s JOIN unnest($2::int4[]) AS p(ord) ON p.ord = s.ord
         WHERE m.entity_type = s.entity_type AND m.entity_id = s.entity_id
           AND m.metric = s.metric AND m.ts = s.ts
         RETURNING 1),
     rev AS (
         INSERT INTO measurement_revisions (entity_type, entity_id, metric, ts, value, unit,
             quality, received_at)
         SELECT m.entity_type, m.entity_id, m.metric, m.ts, m.value, m.unit, m.quality,
             m.received_at
         FROM measurements_staging s JOIN unnest($3::int4[]) AS p(ord) ON p.ord = s.ord
         JOIN measurements m ON m.entity_type = s.entity_type AND m.entity_id = s.entity_id
           AND m.metric = s.metric AND m.ts = s.ts
         UNION ALL
         SELECT s.entity_type, s.entity_id, s.metric, s.ts, s.value, s.unit, s.quality,
             s.received_at
         FROM measurements_staging s JOIN unnest($4::int4[]) AS p(ord) ON p.ord = s.ord
         RETURNING 1)
     SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd), (SELECT count(*) FROM rev)";

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
    #[error(
        "another writer stored {0} of this chunk's new keys between our look and our insert; deciding them again"
    )]
    Raced(usize),
}

impl From<ChunkError> for WriteError {
    fn from(e: ChunkError) -> Self {
        match e {
            ChunkError::Pg(e) => e.into(),
            // Retried as a whole: the retry finds those keys stored and decides against them.
            raced @ ChunkError::Raced(_) => WriteError::Db {
                msg: raced.to_string(),
                failure: Failure::Unavailable,
            },
        }
    }
}

/// The conflict path for one chunk (at most [`CHUNK_ROWS`] rows): the readings are staged,
/// each key's are decided by `policy` against what it holds ([`corrections::settle`]), and the
/// outcome is written by one statement. A chunk the database refuses is split in halves under
/// savepoints until the refused rows stand alone (then rejected with the reason).
pub async fn settle_isolating<'a>(
    tx: &mut Transaction<'_>,
    types: &[Type],
    rows: &[&'a Accepted],
    policy: Policy,
    out: &mut Settlement<'a>,
) -> Result<(), WriteError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sp = tx.savepoint("chunk").await?;
    let mut settled = Settlement::default();
    match settle_chunk(&sp, types, rows, policy, &mut settled).await {
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
            Box::pin(settle_isolating(tx, types, left, policy, out)).await?;
            Box::pin(settle_isolating(tx, types, right, policy, out)).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn settle_chunk<'a>(
    tx: &Transaction<'_>,
    types: &[Type],
    rows: &[&'a Accepted],
    policy: Policy,
    out: &mut Settlement<'a>,
) -> Result<(), ChunkError> {
    tx.batch_execute("TRUNCATE measurements_staging").await?;
    copy_rows(tx, Into::Staging, types, rows).await?;
    let mut held: HashMap<usize, Version> = HashMap::new();
    for row in tx.query(STORED, &[]).await? {
        let ord: i32 = row.try_get(0)?;
        let version = Version {
            value: row.try_get(1)?,
            quality: row.try_get(2)?,
        };
        held.insert(usize::try_from(ord).unwrap_or(usize::MAX), version);
    }
    // Each key's positions, in arrival order; keys in order of first arrival.
    let mut keys: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<Key<'_>, usize> = HashMap::with_capacity(rows.len());
    for (i, a) in rows.iter().enumerate() {
        let r = &a.reading;
        let k = (r.entity_type, r.entity_id, r.metric, r.ts);
        match index.get(&k) {
            Some(&g) => keys[g].push(i),
            None => {
                index.insert(k, keys.len());
                keys.push(vec![i]);
            }
        }
    }
    let (mut new, mut replacing, mut replaced_stored, mut replaced_new) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let ord = |i: usize| i32::try_from(i).unwrap_or(i32::MAX);
    for positions in &keys {
        let stored = positions.iter().find_map(|i| held.get(i).copied());
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
        let s = corrections::settle(policy, stored, versions);
        match (s.last, stored) {
            (Some(last), None) => new.push(ord(last)),
            (Some(last), Some(_)) => replacing.push(ord(last)),
            (None, _) => {}
        }
        for r in &s.replaced {
            match r {
                Replaced::Stored => replaced_stored.push(ord(positions[0])),
                Replaced::New(i) => replaced_new.push(ord(*i)),
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
    let row = tx
        .query_one(APPLY, &[&new, &replacing, &replaced_stored, &replaced_new])
        .await?;
    let inserted: i64 = row.try_get(0)?;
    let inserted = usize::try_from(inserted).unwrap_or(0);
    if inserted < new.len() {
        return Err(ChunkError::Raced(new.len() - inserted));
    }
    out.inserted += inserted as u64;
    Ok(())
}

type Key<'r> = (EntityKind, Uuid, &'r str, DateTime<Utc>);

/// Inserts the rejection rows, message rows first (the runs refer to them), each table in
/// bounded chunks. Idempotent: a redelivered message maps onto the rows already stored.
/// Returns the runs inserted.
pub async fn insert_rejections(tx: &Transaction<'_>, rows: &Rows<'_>) -> Result<u64, WriteError> {
    for chunk in chunks(&rows.messages, MessageRow::weight) {
        insert_messages(tx, chunk).await?;
    }
    let mut n = 0;
    for chunk in chunks(&rows.runs, RunRow::weight) {
        n += insert_runs(tx, chunk).await?;
    }
    Ok(n)
}

async fn insert_messages(tx: &Transaction<'_>, rows: &[MessageRow<'_>]) -> Result<u64, WriteError> {
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

async fn insert_runs(tx: &Transaction<'_>, rows: &[RunRow<'_>]) -> Result<u64, WriteError> {
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
