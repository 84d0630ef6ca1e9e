//! The writer: one batch, one transaction, binary COPY; then the acks, in arrival order.
//!
//! Fast path: COPY straight into `measurements`. The unique key makes a redelivered reading fail
//! the COPY; then (and for the next few batches, since redeliveries come in runs) the batch goes
//! through a temporary staging table and `INSERT … ON CONFLICT DO NOTHING`, which skips the
//! duplicates and commits the rest. A row the database refuses for a reason of its own (a check
//! constraint, a bad value) is isolated by bisection under savepoints and stored as a rejection,
//! so it never poisons the batch. Everything else (connection lost, server restarting, …) is
//! retried with backoff, keeping the batch, for as long as it takes.

use std::pin::pin;

use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use crate::ack::Acker;
use crate::batch::{Accepted, Batch};
use crate::db::{Db, DbError, pg_error_message};
use crate::model::{Reason, Rejection};
use crate::mqtt::Backoff;
use crate::telemetry::names;

const COLUMNS: &str = "entity_type, entity_id, metric, ts, value, unit, quality, received_at";

/// After a batch met duplicates, this many following batches take the staging path directly.
const STAGED_RUN: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Connect(#[from] DbError),
    #[error("{0}")]
    Db(String),
}

impl WriteError {
    fn from_pg(e: &tokio_postgres::Error) -> Self {
        Self::Db(pg_error_message(e))
    }
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub inserted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Rows the database refused, stored as rejections instead.
    pub refused: u64,
}

/// Is this error about the rows themselves (retrying the same rows cannot help)?
fn row_level(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => false,
        // Class 22 (data exception) and 23 (integrity constraint violation).
        Some(code) => code.code().starts_with("22") || code.code().starts_with("23"),
        None => false,
    }
}

fn unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

pub struct Writer {
    db: Db,
    /// Column types of `measurements` (the enums have database-assigned OIDs).
    types: Option<Vec<Type>>,
    staged_left: u32,
    backoff: Backoff,
    /// Payloads are stored exactly, but never more than this many bytes of one (a message over
    /// the size limit is kept up to the limit, with its real size in `payload_size`).
    payload_keep: usize,
}

impl Writer {
    pub fn new(db: Db, cfg: &crate::config::IngestConfig) -> Self {
        Self {
            db,
            types: None,
            staged_left: 0,
            backoff: Backoff::new(cfg.retry_min_ms, cfg.retry_max_ms),
            payload_keep: cfg.max_payload_bytes,
        }
    }

    /// Writes the batch, retrying transient failures until it commits or `abort` fires
    /// (then `None`: nothing is acked, the broker redelivers).
    pub async fn write(&mut self, batch: &Batch, abort: &CancellationToken) -> Option<Written> {
        let started = std::time::Instant::now();
        loop {
            match self.try_write(batch).await {
                Ok(written) => {
                    self.backoff.reset();
                    metrics::histogram!(names::FLUSH_DURATION)
                        .record(started.elapsed().as_secs_f64());
                    return Some(written);
                }
                Err(e) => {
                    // Types may be stale after the database was re-created; cheap to re-read.
                    self.types = None;
                    metrics::counter!(names::DB_ERRORS).increment(1);
                    let delay = self.backoff.next_delay();
                    tracing::warn!(
                        error = %e,
                        rows = batch.rows(),
                        retry_ms = delay.as_millis() as u64,
                        "batch not written; retrying"
                    );
                    tokio::select! {
                        _ = abort.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn try_write(&mut self, batch: &Batch) -> Result<Written, WriteError> {
        let mut client = self.db.get().await?;
        if self.types.is_none() {
            let stmt = client
                .prepare(&format!("SELECT {COLUMNS} FROM measurements LIMIT 0"))
                .await
                .map_err(|e| WriteError::from_pg(&e))?;
            self.types = Some(stmt.columns().iter().map(|c| c.type_().clone()).collect());
        }
        let types = self.types.clone().unwrap_or_default();
        let rows: Vec<&Accepted> = batch.accepted.iter().collect();

        if self.staged_left == 0 && !rows.is_empty() {
            let tx = client
                .transaction()
                .await
                .map_err(|e| WriteError::from_pg(&e))?;
            match copy_rows(&tx, "measurements", &types, &rows).await {
                Ok(n) => {
                    let rejected = insert_rejections(&tx, batch, &[], self.payload_keep).await?;
                    tx.commit().await.map_err(|e| WriteError::from_pg(&e))?;
                    return Ok(Written {
                        inserted: n,
                        rejected,
                        ..Written::default()
                    });
                }
                Err(e) if unique_violation(&e) => {
                    // Redelivery: the transaction is aborted; redo it through staging.
                    drop(tx);
                    self.staged_left = STAGED_RUN;
                }
                Err(e) if row_level(&e) => {
                    drop(tx);
                    // Isolation below works through staging too.
                }
                Err(e) => return Err(WriteError::from_pg(&e)),
            }
        }
        if rows.is_empty() {
            // Only rejections: no staging needed.
            let tx = client
                .transaction()
                .await
                .map_err(|e| WriteError::from_pg(&e))?;
            let rejected = insert_rejections(&tx, batch, &[], self.payload_keep).await?;
            tx.commit().await.map_err(|e| WriteError::from_pg(&e))?;
            return Ok(Written {
                rejected,
                ..Written::default()
            });
        }
        self.staged_left = self.staged_left.saturating_sub(1);

        let mut tx = client
            .transaction()
            .await
            .map_err(|e| WriteError::from_pg(&e))?;
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS measurements_staging (LIKE measurements) \
             ON COMMIT DELETE ROWS",
        )
        .await
        .map_err(|e| WriteError::from_pg(&e))?;
        let mut refused = Vec::new();
        let inserted = insert_isolating(&mut tx, &types, &rows, &mut refused).await?;
        let rejected = insert_rejections(&tx, batch, &refused, self.payload_keep).await?;
        tx.commit().await.map_err(|e| WriteError::from_pg(&e))?;
        let stored = rows.len() as u64 - refused.len() as u64;
        Ok(Written {
            inserted,
            duplicates: stored - inserted.min(stored),
            rejected,
            refused: refused.len() as u64,
        })
    }
}

/// Binary COPY of `rows` into `table`; returns the number of rows copied.
async fn copy_rows(
    tx: &tokio_postgres::Transaction<'_>,
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

/// Staging insert that skips duplicates; a chunk the database refuses is split in halves under
/// savepoints until the refused rows stand alone (then recorded in `refused` with the reason).
/// Returns how many rows were inserted.
async fn insert_isolating<'a>(
    tx: &mut tokio_postgres::Transaction<'_>,
    types: &[Type],
    rows: &[&'a Accepted],
    refused: &mut Vec<(&'a Accepted, String)>,
) -> Result<u64, WriteError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sp = tx
        .savepoint("chunk")
        .await
        .map_err(|e| WriteError::from_pg(&e))?;
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
            sp.commit().await.map_err(|e| WriteError::from_pg(&e))?;
            Ok(n)
        }
        Err(e) if row_level(&e) => {
            sp.rollback().await.map_err(|e| WriteError::from_pg(&e))?;
            if rows.len() == 1 {
                refused.push((rows[0], pg_error_message(&e)));
                return Ok(0);
            }
            let (left, right) = rows.split_at(rows.len() / 2);
            let a = Box::pin(insert_isolating(tx, types, left, refused)).await?;
            let b = Box::pin(insert_isolating(tx, types, right, refused)).await?;
            Ok(a + b)
        }
        Err(e) => Err(WriteError::from_pg(&e)),
    }
}

/// PostgreSQL text cannot hold NUL; anything echoed from outside is cleaned of it.
fn clean(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\\0")
    } else {
        s.to_string()
    }
}

/// The offset of seq numbers given to readings the database refused, above any position the
/// validator assigns, so they never collide with its rejections of the same message.
const REFUSED_SEQ_BASE: u32 = 1 << 30;

async fn insert_rejections(
    tx: &tokio_postgres::Transaction<'_>,
    batch: &Batch,
    refused: &[(&Accepted, String)],
    max_kept: usize,
) -> Result<u64, WriteError> {
    if batch.rejected.is_empty() && refused.is_empty() {
        return Ok(0);
    }
    let refused_rejections: Vec<(Rejection, u32)> = refused
        .iter()
        .map(|(a, msg)| {
            let r = &a.reading;
            let rejection = Rejection {
                reason: Reason::InvalidValue,
                detail: format!(
                    "value {} {} for {} was refused by the database: {msg}",
                    r.value, r.unit, r.metric
                ),
                seq: REFUSED_SEQ_BASE.saturating_add(a.index),
                entity_type: Some(r.entity_type),
                entity_id: Some(r.entity_id),
                metric: Some(r.metric.to_string()),
                ts: Some(r.ts),
            };
            (rejection, a.message)
        })
        .collect();
    let all = batch
        .rejected
        .iter()
        .map(|r| (&r.rejection, r.message))
        .chain(refused_rejections.iter().map(|(r, m)| (r, *m)));

    let n = batch.rejected.len() + refused.len();
    let mut received_at = Vec::with_capacity(n);
    let mut topic = Vec::with_capacity(n);
    let mut payload: Vec<&[u8]> = Vec::with_capacity(n);
    let mut payload_text: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut payload_size = Vec::with_capacity(n);
    let mut digest = Vec::with_capacity(n);
    let mut seq = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    let mut detail = Vec::with_capacity(n);
    let mut entity_type = Vec::with_capacity(n);
    let mut entity_id = Vec::with_capacity(n);
    let mut metric = Vec::with_capacity(n);
    let mut ts = Vec::with_capacity(n);
    let mut digests: Vec<Option<Vec<u8>>> = (0..batch.messages.len()).map(|_| None).collect();
    let mut topics: Vec<Option<String>> = (0..batch.messages.len()).map(|_| None).collect();
    for (_, m) in all.clone() {
        let i = m as usize;
        if digests[i].is_none() {
            digests[i] = Some(batch.messages[i].digest());
            topics[i] = Some(clean(&batch.messages[i].topic));
        }
    }
    for (r, m) in all {
        let i = m as usize;
        let msg = &batch.messages[i];
        received_at.push(msg.received_at);
        topic.push(topics[i].as_deref().unwrap_or(""));
        let kept = &msg.payload[..msg.payload.len().min(max_kept)];
        payload.push(kept);
        payload_text.push(std::str::from_utf8(kept).ok().filter(|s| !s.contains('\0')));
        payload_size.push(i32::try_from(msg.payload.len()).unwrap_or(i32::MAX));
        digest.push(digests[i].as_deref().unwrap_or(&[]));
        seq.push(i32::try_from(r.seq).unwrap_or(i32::MAX));
        reason.push(r.reason.as_str());
        detail.push(clean(&r.detail));
        entity_type.push(r.entity_type.map(|k| k.as_str()));
        entity_id.push(r.entity_id);
        metric.push(r.metric.as_deref().map(clean));
        ts.push(r.ts);
    }
    tx.execute(
        "INSERT INTO rejected_readings (received_at, topic, payload, payload_text, payload_size,
             message_digest, seq, reason, detail, entity_type, entity_id, metric, ts)
         SELECT r, t, p, pt, ps, d, s, reason::rejection_reason_enum, detail,
                et::entity_type_enum, eid, m, ts
         FROM unnest($1::timestamptz[], $2::text[], $3::bytea[], $4::text[], $5::int4[],
                     $6::bytea[], $7::int4[], $8::text[], $9::text[], $10::text[], $11::uuid[],
                     $12::text[], $13::timestamptz[])
              AS u(r, t, p, pt, ps, d, s, reason, detail, et, eid, m, ts)
         ON CONFLICT (message_digest, seq) DO NOTHING",
        &[
            &received_at,
            &topic,
            &payload,
            &payload_text,
            &payload_size,
            &digest,
            &seq,
            &reason,
            &detail,
            &entity_type,
            &entity_id,
            &metric,
            &ts,
        ],
    )
    .await
    .map_err(|e| WriteError::from_pg(&e))
}

/// The writer task: writes batches in order, acks each after its commit, and reports done.
pub async fn run(
    mut writer: Writer,
    mut batches: mpsc::Receiver<Batch>,
    acker: Acker,
    abort: CancellationToken,
    done: CancellationToken,
) {
    while let Some(batch) = batches.recv().await {
        let started = std::time::Instant::now();
        let Some(written) = writer.write(&batch, &abort).await else {
            tracing::warn!(
                messages = batch.acks.len(),
                "shutdown deadline reached with a batch unwritten; the broker will redeliver it"
            );
            return;
        };
        let acks = acker.ack_all(&batch.acks);
        metrics::counter!(names::READINGS_ACCEPTED).increment(written.inserted);
        metrics::counter!(names::READINGS_DUPLICATE).increment(written.duplicates);
        metrics::histogram!(names::BATCH_ROWS).record(batch.rows() as f64);
        if let Some(started) = batch.started {
            metrics::histogram!(names::END_TO_END_LATENCY).record(started.elapsed().as_secs_f64());
        }
        tracing::debug!(
            rows = batch.rows(),
            inserted = written.inserted,
            duplicates = written.duplicates,
            rejected = written.rejected,
            acked = acks.acked,
            stale_acks = acks.stale,
            duration_ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        if written.refused > 0 {
            tracing::warn!(
                rows = written.refused,
                "the database refused rows; stored as rejections"
            );
        }
    }
    done.cancel();
}
