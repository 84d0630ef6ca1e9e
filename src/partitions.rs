//! Keeps monthly `measurements` partitions ahead of the data, and drops expired ones.
//! The work is done by SQL functions of migration 0002, so it is also callable from psql.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::{Db, QueryError};
use crate::telemetry::names;

#[derive(Debug, Clone)]
pub struct Maintenance {
    /// Oldest readings accepted: partitions start there.
    back_days: i32,
    months_ahead: i32,
    /// 0 = keep everything.
    retention_days: i32,
}

impl Maintenance {
    pub fn new(config: &Config) -> Self {
        Self {
            back_days: i32::try_from(config.ingest.max_age_days).unwrap_or(i32::MAX),
            months_ahead: i32::try_from(config.partitions.months_ahead).unwrap_or(i32::MAX),
            retention_days: i32::try_from(config.partitions.retention_days).unwrap_or(i32::MAX),
        }
    }

    /// Creates missing partitions (and drops expired ones); returns (created, dropped).
    pub async fn run_once(&self, db: &Db) -> anyhow::Result<(i32, i32)> {
        let client = db.get().await?;
        let created: i32 = client
            .query_one(
                "SELECT ensure_measurement_partitions(
                     now() - make_interval(days => $1),
                     now() + make_interval(months => $2))",
                &[&self.back_days, &self.months_ahead],
            )
            .await
            .map_err(QueryError::from)?
            .get(0);
        let dropped: i32 = if self.retention_days > 0 {
            client
                .query_one(
                    "SELECT drop_measurement_partitions(now() - make_interval(days => $1))",
                    &[&self.retention_days],
                )
                .await
                .map_err(QueryError::from)?
                .get(0)
        } else {
            0
        };
        metrics::counter!(names::PARTITIONS_CREATED).increment(created.max(0) as u64);
        metrics::counter!(names::PARTITIONS_DROPPED).increment(dropped.max(0) as u64);
        if created > 0 || dropped > 0 {
            tracing::info!(created, dropped, "measurement partitions maintained");
        }
        Ok((created, dropped))
    }

    /// Every hour, until shutdown. Failures are logged and retried at the next round: the
    /// default partition catches readings meanwhile, so nothing is lost.
    pub async fn run_forever(self, db: Db, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
            if let Err(e) = self.run_once(&db).await {
                tracing::warn!(error = %format!("{e:#}"), "partition maintenance failed");
            }
        }
    }
}
