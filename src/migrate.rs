//! A small migrator: the SQL files of `migrations/`, embedded at compile time, applied in order,
//! one transaction per file, under a PostgreSQL advisory lock, with checksums.
//!
//! Why not refinery: it takes no lock (two daemons starting at once race on the same DDL) and
//! adds ~40 crates for what is ~100 lines here. See ARCHITECTURE.md.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// One migration file. The list is checked against `migrations/` by a unit test, so a file
/// cannot be forgotten.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../migrations/", $name, ".sql")),
        }
    };
}

pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_hierarchy"),
    migration!(2, "0002_measurements"),
    migration!(3, "0003_registry_notify"),
    migration!(4, "0004_rejected_messages"),
    migration!(5, "0005_text_limits"),
    migration!(6, "0006_corrections"),
    migration!(7, "0007_completeness"),
    migration!(8, "0008_site_time_zones"),
];

/// Held for the whole run, so a second migrator waits instead of racing.
const LOCK_KEY: i64 = crate::locks::MIGRATIONS;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {version} ({name}) failed: {msg}")]
    Apply {
        version: i64,
        name: &'static str,
        msg: String,
    },
    #[error(
        "migration {version} ({name}) was changed after it was applied (checksum {applied} in the database, {embedded} in this binary); write a new migration instead"
    )]
    Checksum {
        version: i64,
        name: String,
        applied: String,
        embedded: String,
    },
    #[error("migration bookkeeping failed: {0}")]
    Db(String),
}

fn db_err(e: tokio_postgres::Error) -> MigrateError {
    MigrateError::Db(crate::db::pg_error_message(&e))
}

pub fn checksum(sql: &str) -> String {
    let digest = Sha256::digest(sql.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub applied: Vec<&'static str>,
    /// Versions recorded in the database that this binary does not know (a newer binary
    /// migrated it). Not an error: an older daemon can keep running during a rolling upgrade.
    pub unknown: Vec<i64>,
    pub current: i64,
}

/// Applies every pending migration. Idempotent; safe to call from several processes at once.
pub async fn run(client: &mut Client) -> Result<Report, MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(db_err)?;
    let result = apply_pending(client).await;
    // Released explicitly: the connection may go back to a pool rather than close.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await
        .map_err(db_err);
    let report = result?;
    unlock?;
    Ok(report)
}

async fn apply_pending(client: &mut Client) -> Result<Report, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version     bigint PRIMARY KEY,
                name        text NOT NULL,
                checksum    text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now(),
                duration_ms bigint NOT NULL
            )",
        )
        .await
        .map_err(db_err)?;
    let rows = client
        .query(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(db_err)?;
    let mut report = Report::default();
    let mut applied = std::collections::BTreeMap::new();
    for row in rows {
        let version: i64 = row.get(0);
        let name: String = row.get(1);
        let sum: String = row.get(2);
        applied.insert(version, (name, sum));
    }
    for (version, (name, sum)) in &applied {
        match MIGRATIONS.iter().find(|m| m.version == *version) {
            Some(m) if checksum(m.sql) != *sum => {
                return Err(MigrateError::Checksum {
                    version: *version,
                    name: name.clone(),
                    applied: sum.clone(),
                    embedded: checksum(m.sql),
                });
            }
            Some(_) => {}
            None => report.unknown.push(*version),
        }
    }
    for m in MIGRATIONS {
        if applied.contains_key(&m.version) {
            continue;
        }
        let started = std::time::Instant::now();
        let apply_err = |e: tokio_postgres::Error| MigrateError::Apply {
            version: m.version,
            name: m.name,
            msg: crate::db::pg_error_message(&e),
        };
        let tx = client.transaction().await.map_err(db_err)?;
        tx.batch_execute(m.sql).await.map_err(apply_err)?;
        let ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum, duration_ms)
             VALUES ($1, $2, $3, $4)",
            &[&m.version, &m.name, &checksum(m.sql), &ms],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(apply_err)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            duration_ms = ms,
            "migration applied"
        );
        report.applied.push(m.name);
    }
    report.current = MIGRATIONS
        .iter()
        .map(|m| m.version)
        .chain(report.unknown.iter().copied())
        .max()
        .unwrap_or(0);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_migrations_is_listed_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".sql"))
            .map(|n| n.trim_end_matches(".sql").to_string())
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|m| m.name.to_string()).collect();
        assert_eq!(files, listed);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.name);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn checksums_are_stable_hex_sha256() {
        assert_eq!(
            checksum("SELECT 1"),
            "e004ebd5b5532a4b85984a62f8ad48a81aa3460c1ca07701f386135d72cdecf5"
        );
    }
}
