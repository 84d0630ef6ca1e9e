//! The statements: binary COPY of accepted readings (in chunks), the staging insert that skips
//! duplicates and isolates refused rows, and the inserts of rejection rows (in chunks).

use std::pin::pin;

use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::WriteError;
use super::rejections::{CHUNK_ROWS, MessageRow, Rows, RunRow, chunks};
use crate::batch::Accepted;
use crate::db::pg_error_message;

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

/// Binary COPY of `rows` into `table`, one COPY per [`CHUNK_ROWS`]; returns the rows copied.
pub async fn copy_chunked(
    tx: &Transaction<'_>,
    table: &str,
    types: &[Type],
    rows: &[&Accepted],
) -> Result<u64, tokio_postgres::Error> {
    let mut n = 0;
    for chunk in rows.chunks(CHUNK_ROWS) {
        n += copy_rows(tx, table, types, chunk).await?;
    }
    Ok(n)
}

async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    types: &[Type],
    rows: &[&Accepted],
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)"
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

/// Staging insert (at most [`CHUNK_ROWS`] rows) that skips duplicates; a chunk the database
/// refuses is split in halves under savepoints until the refused rows stand alone (then
/// recorded in `refused` with the reason). Returns how many rows were inserted.
pub async fn insert_isolating<'a>(
    tx: &mut Transaction<'_>,
    types: &[Type],
    rows: &[&'a Accepted],
    refused: &mut Vec<(&'a Accepted, String)>,
) -> Result<u64, WriteError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sp = tx.savepoint("chunk").await?;
    let attempt = async {
        sp.batch_execute("TRUNCATE measurements_staging").await?;
        copy_rows(&sp, "measurements_staging", types, rows).await?;
        sp.execute(
            &format!(
                "INSERT INTO measurements ({COLUMNS}) SELECT {COLUMNS} FROM measurements_staging \
                 ON CONFLICT DO NOTHING"
            ),
            &[],
        )
        .await
    }
    .await;
    match attempt {
        Ok(n) => {
            sp.commit().await?;
            Ok(n)
        }
        Err(e) if row_level(&e) => {
            sp.rollback().await?;
            if rows.len() == 1 {
                refused.push((rows[0], pg_error_message(&e)));
                return Ok(0);
            }
            let (left, right) = rows.split_at(rows.len() / 2);
            let a = Box::pin(insert_isolating(tx, types, left, refused)).await?;
            let b = Box::pin(insert_isolating(tx, types, right, refused)).await?;
            Ok(a + b)
        }
        Err(e) => Err(e.into()),
    }
}

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
