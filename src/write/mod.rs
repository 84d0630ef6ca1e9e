//! The writer: one batch, one transaction, binary COPY; then the acks, in arrival order (the task
//! in `pipeline`, which sends one batch's COMMIT while the next one's COPY runs).
//!
//! Fast path: COPY straight into `measurements`. The unique key makes a reading for a key that
//! holds one (a redelivery, a correction) fail the COPY; then (and for the next few batches,
//! since those come in runs) the batch goes the conflict path (`rows::settle_isolating`): the
//! stored versions of its keys are read and locked, each key's readings decided by the
//! correction policy, and what that changes written, a few statements a chunk and none per row.
//! A row the database refuses for a reason of its own (a check constraint, a bad value) is
//! isolated by bisection under savepoints and stored as a rejection,
//! so it never poisons the batch. Every statement is bounded (`rows`, `rejections`): a batch
//! goes in chunks, all in its one transaction.
//!
//! Failures are of two kinds. The database being away (connection refused, server shutting
//! down, out of resources) is retried with backoff, keeping the batch, for as long as it takes.
//! A failure that is about the batch — the server refuses the statement, or drops the
//! connection while it still answers a fresh one — is retried a few times too; if it repeats,
//! the batch is split by message until the message that causes it stands alone, and that
//! message is stored as rejections (`invalid_value`, the error in the detail), or, if even
//! that is refused, as one row without its payload. So no message can stop ingestion.

mod pipeline;
mod rows;

pub use pipeline::run;

// The encoding of rejections as rows is pure, so it lives (and is fuzzed) in the core crate.
use enalysis_core::rejections;

pub use rejections::{
    CHUNK_BYTES, CHUNK_ROWS, Form, MessageRow, REFUSED_SEQ_BASE, Rows, RunRow, UNSTORABLE_SEQ,
    chunks, encode,
};

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::batch::{Accepted, Batch, Part};
use crate::corrections::Policy;
use crate::db::{Db, DbError, pg_error_message};
use crate::model::{Reason, Rejection};
use crate::telemetry::names;

/// After a batch met a stored key, this many following batches take the conflict path directly.
const STAGED_RUN: u32 = 8;

/// Failures about the batch itself, in a row, before it is split (or a lone message isolated).
const ISOLATE_AFTER: u32 = 3;

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database is away, restarting, out of resources, or busy: retry the same thing.
    Unavailable,
    /// The server refused the statement: may be caused by the rows.
    Refused,
    /// The connection broke mid-statement: the database restarting, or our statement (the
    /// server drops a connection on a protocol message it cannot take). A probe tells which.
    Lost,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Connect(#[from] DbError),
    #[error("{msg}")]
    Db { msg: String, failure: Failure },
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db {
            msg: pg_error_message(&e),
            failure: classify(&e),
        }
    }
}

/// Classes of SQLSTATE that say the database, not the statement, is the trouble: connection
/// exception, transaction rollback (serialization, deadlock), insufficient resources, object
/// not in prerequisite state (lock not available), operator intervention (shutdown, cannot
/// connect now), system error. `57014` (query cancelled, e.g. by `statement_timeout`) is left
/// out: a statement that always times out is about its rows. `25006` (read-only transaction)
/// is a server in recovery or a standby (after a failover, a connection to the old primary
/// come back as a standby): never the rows' fault, never acked against.
fn classify(e: &tokio_postgres::Error) -> Failure {
    match e.code() {
        None => Failure::Lost,
        Some(code) if *code == SqlState::QUERY_CANCELED => Failure::Refused,
        Some(code) if *code == SqlState::READ_ONLY_SQL_TRANSACTION => Failure::Unavailable,
        Some(code) => match &code.code()[..2] {
            "08" | "40" | "53" | "55" | "57" | "58" => Failure::Unavailable,
            _ => Failure::Refused,
        },
    }
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Readings stored under keys that held none.
    pub inserted: u64,
    /// Readings stored in place of another (CONTRACT.md §4, corrections).
    pub corrected: u64,
    pub duplicates: u64,
    /// Rejection rows (runs) stored.
    pub rejected: u64,
    /// Rows the database refused, stored as rejections instead.
    pub refused: u64,
    /// Readings the correction policy did not apply, stored as rejections instead.
    pub superseded: u64,
    /// Messages the database kept refusing, stored as rejections instead.
    pub isolated: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, o: Self) {
        self.inserted += o.inserted;
        self.corrected += o.corrected;
        self.duplicates += o.duplicates;
        self.rejected += o.rejected;
        self.refused += o.refused;
        self.superseded += o.superseded;
        self.isolated += o.isolated;
    }
}

/// How a part is to be written.
#[derive(Debug, Clone, Copy)]
enum Attempt<'e> {
    /// As judged: accepted readings to `measurements`, rejections to their tables.
    AsIs,
    /// One message the database keeps refusing: everything in it becomes a rejection.
    Refused(&'e str),
    /// Not even that was taken: one row without the payload.
    Unstorable(&'e str),
}

pub struct Writer {
    db: Db,
    /// Column types of `measurements` (the enums have database-assigned OIDs).
    types: Option<Vec<Type>>,
    staged_left: u32,
    backoff: Backoff,
    policy: Policy,
}

impl Writer {
    pub fn new(db: Db, cfg: &crate::config::IngestConfig) -> Self {
        Self {
            db,
            types: None,
            staged_left: 0,
            backoff: Backoff::new(cfg.retry_min, cfg.retry_max),
            policy: cfg.corrections,
        }
    }

    /// Writes the batch, retrying transient failures until it commits or `abort` fires
    /// (then `None`: nothing is acked, the broker redelivers).
    pub async fn write(&mut self, batch: &Batch, abort: &CancellationToken) -> Option<Written> {
        let started = std::time::Instant::now();
        let written = self.write_part(batch.whole(), abort).await?;
        metrics::histogram!(names::FLUSH_DURATION).record(started.elapsed().as_secs_f64());
        Some(written)
    }

    /// Writes a part; if it keeps failing for a reason of its own, writes its halves, down to
    /// the one message that causes it, which is stored as rejections.
    async fn write_part(&mut self, part: Part<'_>, abort: &CancellationToken) -> Option<Written> {
        match self.retry(part, Attempt::AsIs, abort).await? {
            Ok(written) => Some(written),
            Err(why) => match part.split() {
                Some((a, b)) => {
                    tracing::warn!(
                        messages = part.messages.len(),
                        error = %why,
                        "a batch keeps failing; writing it in halves to find the cause"
                    );
                    let mut written = Box::pin(self.write_part(a, abort)).await?;
                    written += Box::pin(self.write_part(b, abort)).await?;
                    Some(written)
                }
                None => self.isolate(part, &why, abort).await,
            },
        }
    }

    /// One message the database keeps refusing: store it as rejections, or as one row.
    async fn isolate(
        &mut self,
        part: Part<'_>,
        why: &str,
        abort: &CancellationToken,
    ) -> Option<Written> {
        let topic = part
            .messages
            .first()
            .map(|m| m.topic.as_str())
            .unwrap_or("");
        tracing::error!(
            topic,
            rows = part.rows(),
            error = why,
            "the database keeps refusing one message; storing it as rejections"
        );
        metrics::counter!(names::MESSAGES_ISOLATED).increment(1);
        let mut written = match self.retry(part, Attempt::Refused(why), abort).await? {
            Ok(written) => written,
            Err(again) => {
                tracing::error!(
                    topic,
                    error = %again,
                    "the database refuses this message's rejections too; keeping one row without the payload"
                );
                // Past this only the database itself can be at fault: retried for good.
                loop {
                    match self.retry(part, Attempt::Unstorable(&again), abort).await? {
                        Ok(written) => break written,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot store even a one-row rejection; retrying")
                        }
                    }
                }
            }
        };
        written.isolated = 1;
        Some(written)
    }

    /// Tries `attempt` until it commits (`Ok`), or fails [`ISOLATE_AFTER`] times for a reason
    /// of its own (`Err` with the last error), or `abort` fires (`None`). The database being
    /// away is waited out, however long.
    async fn retry(
        &mut self,
        part: Part<'_>,
        attempt: Attempt<'_>,
        abort: &CancellationToken,
    ) -> Option<Result<Written, String>> {
        let mut own_failures = 0;
        let mut failures = 0u32;
        let started = std::time::Instant::now();
        // A new attempt (a half, an isolated message) starts from the shortest delay.
        self.backoff.reset();
        loop {
            let e = match self.try_write(part, attempt).await {
                Ok(written) => {
                    self.backoff.reset();
                    if failures > 0 {
                        // The other half of the "retrying" warnings: the database is back.
                        tracing::info!(
                            rows = part.rows(),
                            failed_attempts = failures,
                            waited_ms = started.elapsed().as_millis() as u64,
                            "batch written after retries"
                        );
                    }
                    return Some(Ok(written));
                }
                Err(e) => e,
            };
            failures += 1;
            // Types may be stale after the database was re-created; cheap to re-read.
            self.types = None;
            metrics::counter!(names::DB_ERRORS).increment(1);
            let refused = matches!(
                &e,
                WriteError::Db {
                    failure: Failure::Refused,
                    ..
                }
            );
            if !refused {
                // The database failed us, not the rows: no idle connection is trusted again
                // (one to a server that died, or that answered read-only after a failover);
                // new ones choose their server by `target_session_attrs`.
                self.db.forget_idle();
            }
            let own = match &e {
                WriteError::Connect(_) => false,
                WriteError::Db { failure, .. } => match failure {
                    Failure::Unavailable => false,
                    Failure::Refused => true,
                    // The statement broke the connection if a fresh one still answers.
                    Failure::Lost => self.db.check().await.is_ok(),
                },
            };
            if own {
                own_failures += 1;
                if own_failures >= ISOLATE_AFTER {
                    return Some(Err(e.to_string()));
                }
            }
            let delay = self.backoff.next_delay();
            tracing::warn!(
                error = %e,
                rows = part.rows(),
                retry_ms = delay.as_millis() as u64,
                "batch not written; retrying"
            );
            tokio::select! {
                _ = abort.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// The column types of `measurements`, read once (the enums have database-assigned OIDs).
    async fn types(&mut self, client: &Client) -> Result<Vec<Type>, WriteError> {
        if let Some(types) = &self.types {
            return Ok(types.clone());
        }
        let stmt = client
            .prepare(&format!(
                "SELECT {} FROM measurements LIMIT 0",
                rows::COLUMNS
            ))
            .await?;
        let types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
        self.types = Some(types.clone());
        Ok(types)
    }

    /// The fast path's statements inside the transaction open on `client`: COPY of the
    /// accepted readings, then the rejection rows. `None` when the COPY met a stored key (then
    /// the next [`STAGED_RUN`] batches take the conflict path directly) or a row the database
    /// refuses: the transaction is aborted, the batch is for the conflict path.
    async fn fast(
        &mut self,
        client: &Client,
        types: &[Type],
        part: &Part<'_>,
        accepted: &[&Accepted],
    ) -> Result<Option<Written>, WriteError> {
        match rows::copy_chunked(client, types, accepted).await {
            Ok(inserted) => {
                let rejected =
                    rows::insert_rejections(client, &encode(part, &[], Form::Judged)).await?;
                Ok(Some(Written {
                    inserted,
                    rejected,
                    ..Written::default()
                }))
            }
            Err(e) if rows::unique_violation(&e) => {
                self.staged_left = STAGED_RUN;
                Ok(None)
            }
            Err(e) if rows::row_level(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn try_write(
        &mut self,
        part: Part<'_>,
        attempt: Attempt<'_>,
    ) -> Result<Written, WriteError> {
        if part.rows() == 0 {
            // Only ignored messages: nothing to commit before their acks.
            return Ok(Written::default());
        }
        let mut client = self.db.get().await?;
        let accepted: Vec<&Accepted> = match attempt {
            Attempt::AsIs => part.accepted.iter().collect(),
            Attempt::Refused(_) | Attempt::Unstorable(_) => Vec::new(),
        };
        let form = match attempt {
            Attempt::Unstorable(why) => Form::Unstorable(why),
            _ => Form::Judged,
        };
        let refused_by_attempt: Vec<(&Accepted, Rejection)> = match attempt {
            Attempt::Refused(why) => part
                .accepted
                .iter()
                .map(|a| (a, rejections::refused(a, why)))
                .collect(),
            _ => Vec::new(),
        };
        if accepted.is_empty() {
            // Only rejections: no conflict path needed. In an isolated message every accepted reading
            // is refused, whether stored as its own rejection or within the one-row record.
            let tx = client.transaction().await?;
            let rejected =
                rows::insert_rejections(tx.client(), &encode(&part, &refused_by_attempt, form))
                    .await?;
            tx.commit().await?;
            let refused = match attempt {
                Attempt::AsIs => 0,
                Attempt::Refused(_) | Attempt::Unstorable(_) => part.accepted.len() as u64,
            };
            return Ok(Written {
                rejected,
                refused,
                ..Written::default()
            });
        }
        let types = self.types(&client).await?;
        if self.staged_left == 0 {
            let tx = client.transaction().await?;
            match self.fast(tx.client(), &types, &part, &accepted).await? {
                Some(written) => {
                    tx.commit().await?;
                    return Ok(written);
                }
                // The transaction is aborted; redo the batch on the conflict path (which also
                // isolates refused rows).
                None => drop(tx),
            }
        }
        self.staged_left = self.staged_left.saturating_sub(1);

        let mut tx = client.transaction().await?;
        let mut settled = rows::Settlement::default();
        for chunk in accepted.chunks(CHUNK_ROWS) {
            rows::settle_isolating(&mut tx, chunk, self.policy, &mut settled).await?;
        }
        let rejected =
            rows::insert_rejections(tx.client(), &encode(&part, &settled.rejected, Form::Judged))
                .await?;
        tx.commit().await?;
        let superseded = settled
            .rejected
            .iter()
            .filter(|(_, j)| j.reason == Reason::Superseded)
            .count() as u64;
        Ok(Written {
            inserted: settled.inserted,
            corrected: settled.corrected,
            duplicates: settled.duplicates,
            rejected,
            refused: settled.rejected.len() as u64 - superseded,
            superseded,
            isolated: 0,
        })
    }
}
