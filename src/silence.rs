//! Silence (CONTRACT.md §7): the last accepted reading of every entity, kept in the database so
//! that every daemon of a shared group sees the same thing.
//!
//! ```text
//! writer (after commit) --record--> LastReadings (per entity: newest ts, latest receipt)
//!        every flush_interval_ms --upsert GREATEST, ordered by key--> entity_last_readings
//! GET /api/v1/silent, ingest_entities_silent <--query-- active_entities ⟕ entity_last_readings
//! ```
//!
//! Nothing here reads `measurements` except [`seed`], once at start-up, for the entities that have
//! no row yet, through the primary key (one backward probe per entity and metric, newest
//! partition first).
//!
//! Architecture Invariant: the silence view is derived from the database alone, never from a
//! daemon's memory. With `$share/…` each daemon sees every other message of a meter; what one
//! remembers is only what it has not flushed yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::batch::Accepted;
use crate::db::{Db, DbError, pg_error_message};
use crate::model::EntityKind;
use crate::telemetry::names;

/// Rows per upsert, so no statement grows with the number of entities.
const FLUSH_CHUNK: usize = 5000;

#[derive(Debug, thiserror::Error)]
pub enum SilenceError {
    #[error(transparent)]
    Connect(#[from] DbError),
    #[error("{0}")]
    Query(String),
}

impl From<tokio_postgres::Error> for SilenceError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Query(pg_error_message(&e))
    }
}

/// The newest reading time and the latest receipt seen for one entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Last {
    pub ts: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

impl Last {
    fn merge(&mut self, o: Last) {
        self.ts = self.ts.max(o.ts);
        self.received_at = self.received_at.max(o.received_at);
    }
}

pub type Key = (EntityKind, Uuid);

/// Folds committed readings into one [`Last`] per entity. Consecutive readings of one entity
/// (a message's readings are usually one entity's) cost a comparison, not a hash.
pub fn fold(into: &mut HashMap<Key, Last>, accepted: &[Accepted]) {
    let mut run: Option<(Key, Last)> = None;
    for a in accepted {
        let key = (a.reading.entity_type, a.reading.entity_id);
        let last = Last {
            ts: a.reading.ts,
            received_at: a.received_at,
        };
        match &mut run {
            Some((k, l)) if *k == key => l.merge(last),
            _ => {
                if let Some((k, l)) = run.replace((key, last)) {
                    into.entry(k).and_modify(|x| x.merge(l)).or_insert(l);
                }
            }
        }
    }
    if let Some((k, l)) = run {
        into.entry(k).and_modify(|x| x.merge(l)).or_insert(l);
    }
}

/// What the writer has committed and the flusher has not written yet: at most one entry per
/// entity, so bounded by the registry, whatever the traffic.
#[derive(Debug, Default)]
pub struct LastReadings {
    pending: Mutex<HashMap<Key, Last>>,
}

impl LastReadings {
    /// Called by the writer after a batch commits (and its acks are queued).
    pub fn record(&self, accepted: &[Accepted]) {
        if accepted.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        fold(&mut pending, accepted);
    }

    fn take(&self) -> HashMap<Key, Last> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts back what a failed flush took, merged with what came meanwhile.
    fn restore(&self, taken: HashMap<Key, Last>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for (k, l) in taken {
            pending.entry(k).and_modify(|x| x.merge(l)).or_insert(l);
        }
    }

    /// Writes everything pending; on failure keeps it for the next round.
    pub async fn flush(&self, db: &Db) -> Result<usize, SilenceError> {
        let taken = self.take();
        if taken.is_empty() {
            return Ok(0);
        }
        match upsert(db, &taken).await {
            Ok(()) => {
                metrics::counter!(names::LAST_READINGS_FLUSHED).increment(taken.len() as u64);
                Ok(taken.len())
            }
            Err(e) => {
                self.restore(taken);
                Err(e)
            }
        }
    }
}

/// GREATEST keeps the newest of what every daemon wrote, whatever the order of their flushes;
/// rows go in key order (and chunks too) so that two daemons upserting overlapping sets lock
/// rows in the same order and cannot deadlock. An unchanged row is not rewritten.
const UPSERT: &str = "
    INSERT INTO entity_last_readings AS l (entity_type, entity_id, last_ts, last_received_at)
    SELECT k::entity_type_enum, i, t, r
    FROM unnest($1::text[], $2::uuid[], $3::timestamptz[], $4::timestamptz[]) AS u(k, i, t, r)
    ORDER BY k::entity_type_enum, i
    ON CONFLICT (entity_type, entity_id) DO UPDATE SET
        last_ts = GREATEST(l.last_ts, EXCLUDED.last_ts),
        last_received_at = GREATEST(l.last_received_at, EXCLUDED.last_received_at)
    WHERE EXCLUDED.last_ts > l.last_ts OR EXCLUDED.last_received_at > l.last_received_at";

async fn upsert(db: &Db, taken: &HashMap<Key, Last>) -> Result<(), SilenceError> {
    let mut rows: Vec<(&Key, &Last)> = taken.iter().collect();
    rows.sort_unstable_by_key(|(k, _)| **k);
    let client = db.get().await?;
    let stmt = client.prepare(UPSERT).await?;
    for chunk in rows.chunks(FLUSH_CHUNK) {
        let kinds: Vec<&str> = chunk.iter().map(|((k, _), _)| k.as_str()).collect();
        let ids: Vec<Uuid> = chunk.iter().map(|((_, id), _)| *id).collect();
        let ts: Vec<DateTime<Utc>> = chunk.iter().map(|(_, l)| l.ts).collect();
        let received: Vec<DateTime<Utc>> = chunk.iter().map(|(_, l)| l.received_at).collect();
        client
            .execute(&stmt, &[&kinds, &ids, &ts, &received])
            .await?;
    }
    Ok(())
}

/// Flushes every `every` until `done` (the writer finished: one last flush) or `abort`.
pub async fn flush_loop(
    last: Arc<LastReadings>,
    db: Db,
    every: Duration,
    done: CancellationToken,
    abort: CancellationToken,
) {
    loop {
        let finished = tokio::select! {
            _ = abort.cancelled() => return,
            _ = done.cancelled() => true,
            _ = tokio::time::sleep(every) => false,
        };
        if let Err(e) = last.flush(&db).await {
            tracing::warn!(error = %e, "last readings not written; keeping them for the next round");
        }
        if finished {
            return;
        }
    }
}

/// Entities with no row yet get one from `measurements`: for each metric of the catalogue the
/// newest reading through the primary key (a backward index probe, no scan), its `ts` and
/// `received_at`. One partition at a time, newest month first, each for the entities still
/// without a row: an entity that reported this month costs 9 probes in one index, not 9 in
/// each of the ~17 monthly indexes (measured: 10x fewer buffers than probing `measurements`).
/// The default partition (any `ts`) comes last, for every entity, with GREATEST. In key order
/// and with GREATEST, like the flushes, so it can run beside them and beside another daemon's.
pub fn seed_sql(partition: &str, only_missing: bool) -> String {
    let missing = if only_missing {
        "AND NOT EXISTS (SELECT 1 FROM entity_last_readings x
                         WHERE x.entity_type = e.entity_type AND x.entity_id = e.id)"
    } else {
        ""
    };
    format!(
        "INSERT INTO entity_last_readings AS l (entity_type, entity_id, last_ts, last_received_at)
         SELECT e.entity_type, e.id, max(r.ts), max(r.received_at)
         FROM active_entities e
         CROSS JOIN unnest($1::text[]) AS k(metric)
         CROSS JOIN LATERAL (
             SELECT m.ts, m.received_at FROM \"{partition}\" m
             WHERE m.entity_type = e.entity_type AND m.entity_id = e.id AND m.metric = k.metric
             ORDER BY m.ts DESC LIMIT 1) r
         WHERE true {missing}
         GROUP BY e.entity_type, e.id
         ORDER BY e.entity_type, e.id
         ON CONFLICT (entity_type, entity_id) DO UPDATE SET
             last_ts = GREATEST(l.last_ts, EXCLUDED.last_ts),
             last_received_at = GREATEST(l.last_received_at, EXCLUDED.last_received_at)"
    )
}

/// The partitions of `measurements`, newest month first, the default one last.
const PARTITIONS: &str = "
    SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'measurements'::regclass
    ORDER BY c.relname = 'measurements_default', c.relname DESC";

/// What [`seed`] did.
#[derive(Debug, Clone, Copy)]
pub struct Seeded {
    pub entities: u64,
    /// Partitions holding rows, probed.
    pub partitions: u64,
    pub elapsed: Duration,
}

pub async fn seed(db: &Db) -> Result<Seeded, SilenceError> {
    let started = Instant::now();
    let client = db.get().await?;
    let metrics: Vec<&str> = crate::catalogue::ALL.iter().map(|m| m.name).collect();
    let mut seeded = Seeded {
        entities: 0,
        partitions: 0,
        elapsed: Duration::ZERO,
    };
    for row in client.query(PARTITIONS, &[]).await? {
        let name: String = row.try_get(0)?;
        // Catalogue names, quoted; anything but the daemon's own naming is left alone.
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        let empty = client
            .query_one(
                &format!("SELECT NOT EXISTS (SELECT 1 FROM \"{name}\")"),
                &[],
            )
            .await?
            .try_get::<_, bool>(0)?;
        if empty {
            continue;
        }
        let only_missing = name != "measurements_default";
        seeded.entities += client
            .execute(&seed_sql(&name, only_missing), &[&metrics])
            .await?;
        seeded.partitions += 1;
    }
    seeded.elapsed = started.elapsed();
    Ok(seeded)
}

/// The silent entities of CONTRACT.md §7, in one place for the list and the gauge: active
/// (all the way up), and last heard of — or, never heard of, created — longer ago than
/// `$1` × the frequency. Times are the database's (`now()`), receipts the daemons'.
const SILENT: &str = "
    SELECT e.entity_type, e.id, e.external_id, e.name, e.reading_frequency,
           l.last_ts, l.last_received_at,
           floor(extract(epoch FROM now() - coalesce(l.last_received_at, e.created_at)))::bigint
               AS silent_for_secs
    FROM active_entities e
    LEFT JOIN entity_last_readings l ON l.entity_type = e.entity_type AND l.entity_id = e.id
    WHERE coalesce(l.last_received_at, e.created_at)
          < now() - $1::float8 * reading_frequency_interval(e.reading_frequency)";

/// The silent entities as JSON objects, longest silent first; only `kind` when given.
pub async fn list(
    client: &Client,
    factor: f64,
    kind: Option<EntityKind>,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT jsonb_build_object('kind', entity_type, 'id', id, 'external_id', external_id,
             'name', name, 'reading_frequency', reading_frequency, 'last_ts', last_ts,
             'last_received_at', last_received_at, 'silent_for_secs', silent_for_secs)
         FROM ({SILENT}) s
         WHERE $2::entity_type_enum IS NULL OR entity_type = $2
         ORDER BY silent_for_secs DESC, entity_type, id"
    );
    client.query(&sql, &[&factor, &kind]).await
}

/// How many entities of each kind are silent.
pub async fn count(client: &Client, factor: f64) -> Result<[(EntityKind, i64); 3], SilenceError> {
    let rows = client
        .query(
            &format!("SELECT entity_type, count(*) FROM ({SILENT}) s GROUP BY entity_type"),
            &[&factor],
        )
        .await?;
    let mut counts = EntityKind::ALL.map(|k| (k, 0));
    for row in rows {
        let kind: EntityKind = row.try_get(0)?;
        let n: i64 = row.try_get(1)?;
        if let Some(c) = counts.iter_mut().find(|(k, _)| *k == kind) {
            c.1 = n;
        }
    }
    Ok(counts)
}

/// Recounts `ingest_entities_silent{kind}` every `every` until `shutdown`. Every daemon of a
/// group counts the same rows, so their gauges agree (take `max` across them, not `sum`).
pub async fn gauge_loop(db: Db, factor: f64, every: Duration, shutdown: CancellationToken) {
    loop {
        let counted = async {
            let client = db.get().await?;
            count(&client, factor).await
        };
        match counted.await {
            Ok(counts) => {
                for (kind, n) in counts {
                    metrics::gauge!(names::ENTITIES_SILENT, "kind" => kind.as_str()).set(n as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot count silent entities"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Quality, Reading};

    fn accepted(kind: EntityKind, id: u128, ts: i64, received: i64) -> Accepted {
        Accepted {
            reading: Reading {
                entity_type: kind,
                entity_id: Uuid::from_u128(id),
                metric: "power",
                ts: DateTime::from_timestamp(ts, 0).expect("ts"),
                value: 1.0,
                unit: "kW",
                quality: Quality::Good,
            },
            received_at: DateTime::from_timestamp(received, 0).expect("received"),
            message: 0,
            index: 0,
        }
    }

    #[test]
    fn a_batch_folds_into_the_newest_ts_and_latest_receipt_per_entity() {
        use EntityKind::*;
        let batch = [
            accepted(Meter, 1, 100, 200),
            accepted(Meter, 1, 90, 210),
            accepted(Asset, 1, 50, 205),
            accepted(Meter, 2, 10, 201),
            // The first entity again, after others: merged, not replaced.
            accepted(Meter, 1, 95, 199),
        ];
        let mut map = HashMap::new();
        fold(&mut map, &batch);
        let at = |s| DateTime::from_timestamp(s, 0).expect("t");
        let get = |map: &HashMap<Key, Last>, k, id| map.get(&(k, Uuid::from_u128(id))).copied();
        assert_eq!(map.len(), 3);
        assert_eq!(
            get(&map, Meter, 1),
            Some(Last {
                ts: at(100),
                received_at: at(210)
            })
        );
        assert_eq!(
            get(&map, Asset, 1),
            Some(Last {
                ts: at(50),
                received_at: at(205)
            })
        );
        // A later batch with older readings moves nothing back.
        fold(&mut map, &[accepted(Meter, 2, 5, 150)]);
        assert_eq!(
            get(&map, Meter, 2),
            Some(Last {
                ts: at(10),
                received_at: at(201)
            })
        );
        fold(&mut map, &[]);
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn what_a_failed_flush_took_is_merged_back_with_what_came_meanwhile() {
        let last = LastReadings::default();
        last.record(&[accepted(EntityKind::Meter, 1, 100, 200)]);
        let taken = last.take();
        last.record(&[accepted(EntityKind::Meter, 1, 50, 300)]);
        last.restore(taken);
        let pending = last.take();
        let l = pending[&(EntityKind::Meter, Uuid::from_u128(1))];
        assert_eq!(l.ts.timestamp(), 100);
        assert_eq!(l.received_at.timestamp(), 300);
    }
}
