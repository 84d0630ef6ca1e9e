//! The writer task: batches in arrival order, each acked after its commit, with one batch's
//! COMMIT on the wire while the next one's COPY runs on a second connection:
//!
//! ```text
//!   batch N     BEGIN COPY rejections COMMIT ──┐ ack N
//!   batch N+1                        BEGIN COPY rejections (N committed?) COMMIT ──┐ ack N+1
//! ```
//!
//! The commit's wait for the WAL flush, the acks and the hand-over of the next batch no longer
//! stand between two COPYs (measured: BENCHMARKS.md, "Throughput").
//!
//! Why it is safe:
//! - Commits and acks keep arrival order: N+1's COMMIT is sent only after N's succeeded, and
//!   N's acks are queued before it.
//! - No deadlock: N+1's statements start when N's have all run, so N never waits for a lock N+1
//!   holds. N+1 may wait for N's (a key in both): its COPY then meets the stored key once N
//!   commits, and N+1 goes the conflict path, judged after N, as if written after it.
//! - A failed COMMIT leaves N's outcome unknown: N+1's transaction is rolled back first, then
//!   N is written again on the sequential path (whose conflict path counts what did commit as
//!   duplicates), so N's retry never waits for N+1's locks.
//!
//! Only the fast path is pipelined. A batch for the conflict path, and any failure, goes the
//! sequential path ([`Writer::write`]) with its retries and isolation, after the commit before
//! it has ended.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Writer, Written};
use crate::ack::Acker;
use crate::batch::{Accepted, Batch};
use crate::db;
use crate::model::Reason;
use crate::silence::LastReadings;
use crate::telemetry::names;

/// Most bytes of kept payloads (rejected messages) in a batch that is pipelined. A statement
/// grows its connection's buffers to its size and the driver keeps them; large rejected
/// payloads (hostile input) go the sequential path, on the one most recently used connection,
/// so a second connection does not keep buffers of that size too (measured with the hostile
/// corpus of tests/it/hostile.rs: a peak of 79-81 MiB against a bound of 80 when both did).
const PIPELINED_PAYLOAD_BYTES: usize = 64 << 10;

/// A batch whose statements have run, its COMMIT sent from a task that owns the connection.
struct Committing {
    batch: Batch,
    written: Written,
    /// When its statements began (for the flush duration).
    started: Instant,
    commit: JoinHandle<Result<(), tokio_postgres::Error>>,
}

/// What [`Writer::prepare`] made of a batch.
enum Prepared {
    /// Nothing to commit (only ignored messages).
    Nothing,
    /// The fast path's statements ran in a transaction open on `client`.
    Open {
        // Boxed: a pooled connection is large beside the other variants.
        client: Box<db::Client>,
        written: Written,
        started: Instant,
    },
    /// For the sequential path: the conflict path, or something failed.
    Declined,
}

impl Writer {
    /// Runs the fast path's statements of `batch` in a transaction of its own, left open for a
    /// COMMIT sent later. Declines whatever is not plain: the conflict path, a failure (the
    /// sequential path meets it again, counts it and retries).
    async fn prepare(&mut self, batch: &Batch) -> Prepared {
        let part = batch.whole();
        if part.rows() == 0 {
            return Prepared::Nothing;
        }
        if self.staged_left > 0 || part.rejected_payload_bytes() > PIPELINED_PAYLOAD_BYTES {
            return Prepared::Declined;
        }
        let started = Instant::now();
        let Ok(client) = self.db.get().await else {
            return Prepared::Declined;
        };
        let Ok(types) = self.types(&client).await else {
            return Prepared::Declined;
        };
        if client.batch_execute("BEGIN").await.is_err() {
            return Prepared::Declined;
        }
        let accepted: Vec<&Accepted> = part.accepted.iter().collect();
        match self.fast(&client, &types, &part, &accepted).await {
            Ok(Some(written)) => Prepared::Open {
                client: Box::new(client),
                written,
                started,
            },
            Ok(None) | Err(_) => {
                rollback(client).await;
                Prepared::Declined
            }
        }
    }
}

/// Ends a transaction that will not commit; a connection that cannot is not reused.
async fn rollback(client: db::Client) {
    if client.batch_execute("ROLLBACK").await.is_err() {
        drop(deadpool_postgres::Object::take(client));
    }
}

/// What follows a commit: the acks, the silence fold, the counters.
struct Sink {
    acker: Acker,
    last: Arc<LastReadings>,
}

impl Sink {
    fn committed(&self, batch: Batch, written: Written, started: Instant) {
        let acks = self.acker.ack_all(&batch.acks);
        // Silence (crate::silence); a batch with refused rows (rare) is skipped, not guessed at.
        // A superseded reading counts: the entity was heard from.
        if written.refused == 0 {
            self.last.record(&batch.accepted);
        }
        // A correction is an accepted reading too: it is what the key holds now.
        metrics::counter!(names::READINGS_ACCEPTED).increment(written.inserted + written.corrected);
        metrics::counter!(names::READINGS_CORRECTED).increment(written.corrected);
        metrics::counter!(names::READINGS_DUPLICATE).increment(written.duplicates);
        metrics::histogram!(names::BATCH_ROWS).record(batch.rows() as f64);
        if let Some(started) = batch.started {
            metrics::histogram!(names::END_TO_END_LATENCY).record(started.elapsed().as_secs_f64());
        }
        tracing::debug!(
            rows = batch.rows(),
            inserted = written.inserted,
            corrected = written.corrected,
            duplicates = written.duplicates,
            superseded = written.superseded,
            rejected = written.rejected,
            acked = acks.acked,
            stale_acks = acks.stale,
            duration_ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        if written.refused > 0 {
            // Refused rows (isolated under savepoints, or every reading of an isolated message)
            // are rejections decided here, not by the validator: counted here.
            metrics::counter!(names::READINGS_REJECTED, "reason" => Reason::InvalidValue.as_str())
                .increment(written.refused);
            tracing::warn!(
                rows = written.refused,
                "the database refused rows; stored as rejections"
            );
        }
        if written.superseded > 0 {
            metrics::counter!(names::READINGS_REJECTED, "reason" => Reason::Superseded.as_str())
                .increment(written.superseded);
        }
        // The batch's memory goes back to the budget here, after its acks are queued.
        drop(batch);
    }
}

/// The outcome of a pipelined COMMIT.
type CommitResult = Result<Result<(), tokio_postgres::Error>, tokio::task::JoinError>;

/// Acks `c` if its COMMIT succeeded; gives it back otherwise (to be written again).
fn acked(c: Committing, r: CommitResult, sink: &Sink) -> Option<Committing> {
    let e = match r {
        Ok(Ok(())) => {
            metrics::histogram!(names::FLUSH_DURATION).record(c.started.elapsed().as_secs_f64());
            sink.committed(c.batch, c.written, c.started);
            return None;
        }
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    metrics::counter!(names::DB_ERRORS).increment(1);
    tracing::warn!(
        error = %e,
        rows = c.batch.rows(),
        "a batch's COMMIT failed; writing it again"
    );
    Some(c)
}

/// The sequential path: writes `batch` (retrying, isolating) and acks it. False when `abort`
/// fired first.
async fn sequential(
    writer: &mut Writer,
    batch: Batch,
    sink: &Sink,
    abort: &CancellationToken,
) -> bool {
    let started = Instant::now();
    let Some(written) = writer.write(&batch, abort).await else {
        unwritten(&batch);
        return false;
    };
    sink.committed(batch, written, started);
    true
}

fn unwritten(batch: &Batch) {
    tracing::warn!(
        messages = batch.acks.len(),
        "shutdown deadline reached with a batch unwritten; the broker will redeliver it"
    );
}

/// The writer task: writes batches in order, acks each after its commit, and reports done.
pub async fn run(
    mut writer: Writer,
    mut batches: mpsc::Receiver<Batch>,
    acker: Acker,
    last: Arc<LastReadings>,
    abort: CancellationToken,
    done: CancellationToken,
) {
    let sink = Sink { acker, last };
    let mut committing: Option<Committing> = None;
    loop {
        // The next batch; a commit that ends first is acked at once.
        let next = match committing.take() {
            None => batches.recv().await,
            Some(mut c) => tokio::select! {
                r = &mut c.commit => {
                    if let Some(failed) = acked(c, r, &sink)
                        && !sequential(&mut writer, failed.batch, &sink, &abort).await
                    {
                        return;
                    }
                    continue;
                }
                next = batches.recv() => {
                    committing = Some(c);
                    next
                }
                _ = abort.cancelled() => {
                    unwritten(&c.batch);
                    return;
                }
            },
        };
        let Some(batch) = next else { break };
        // This batch's statements run while the one before commits; that one is acked as soon
        // as its COMMIT returns.
        let before = committing.take();
        let (prepared, failed) = tokio::select! {
            both = async {
                tokio::join!(writer.prepare(&batch), async {
                    match before {
                        Some(mut c) => {
                            let r = (&mut c.commit).await;
                            acked(c, r, &sink)
                        }
                        None => None,
                    }
                })
            } => both,
            _ = abort.cancelled() => {
                unwritten(&batch);
                return;
            }
        };
        let prepared = match failed {
            None => prepared,
            Some(failed) => {
                // Not to wait on this batch's locks while the one before is written again.
                if let Prepared::Open { client, .. } = prepared {
                    rollback(*client).await;
                }
                if !sequential(&mut writer, failed.batch, &sink, &abort).await {
                    return;
                }
                Prepared::Declined
            }
        };
        match prepared {
            Prepared::Nothing => sink.committed(batch, Written::default(), Instant::now()),
            Prepared::Open {
                client,
                written,
                started,
            } => {
                let commit = tokio::spawn(async move { client.batch_execute("COMMIT").await });
                committing = Some(Committing {
                    batch,
                    written,
                    started,
                    commit,
                });
            }
            Prepared::Declined => {
                if !sequential(&mut writer, batch, &sink, &abort).await {
                    return;
                }
            }
        }
    }
    if let Some(mut c) = committing {
        let r = tokio::select! {
            r = &mut c.commit => r,
            _ = abort.cancelled() => {
                unwritten(&c.batch);
                return;
            }
        };
        if let Some(failed) = acked(c, r, &sink)
            && !sequential(&mut writer, failed.batch, &sink, &abort).await
        {
            return;
        }
    }
    done.cancel();
}
