//! `enalysis-ingest provision FILE`: the declarative inventory.
//!
//! An operator describes portfolios → sites → meters → assets / energy sources, plus grid links
//! and asset connections, in one YAML or JSON file (`config/inventory.example.yaml` shows every
//! key; keys are the schema's column names). This module reads the file, checks all of it, and
//! makes the database agree with it in one transaction.
//!
//! - **Keys**: portfolios by `name`, sites by (portfolio, `name`), meters / assets / energy
//!   sources by `external_id`, grid links by (site, `name`), asset connections by (`source`,
//!   `target`, `relationship`). A meter, asset or energy source found under another parent (a
//!   meter under another site) is moved under the one the file names, and the plan says so.
//! - **Idempotent**: a row whose columns already hold the file's values is not updated at all,
//!   so its `updated_at` (and its tuple) stays as it was; running a file twice changes nothing.
//! - **Declarative for what the file names**: an optional key left out means the schema's
//!   default (NULL, `{}`, `UTC`, `15min`, `out`), so deleting a line from the file clears that
//!   column. `active` is the exception: left out, it is not touched (a meter an operator
//!   deactivated is not revived by a re-run); `active: true` revives it.
//! - **Additive**: rows the file does not name are never deleted or deactivated; the plan lists
//!   them as "left" (other portfolios; the sites of the file's portfolios it does not name; and
//!   so on down).
//! - **All or nothing**: every problem of the file, and of its references into the database
//!   (asset types, parents, connection ends, time zones), is reported, one line each with its
//!   path, before anything is written. `--dry-run` applies the plan inside the transaction and
//!   rolls it back.
//!
//! Architecture invariant: every value from the file reaches SQL as a bind parameter; the only
//! text spliced into statements is the static table and column names of
//! [`schema`](crate::admin::schema).
//!
//! - [`plan`]: what a run reports (the plan, the problems).
//! - [`file`]: the file into typed specs, each value checked by its column's rules.
//! - [`check`]: the checks across the file and against the database.
//! - [`apply`]: the rows, written in one loop.

mod apply;
mod check;
mod file;
mod plan;

use std::path::Path;

use anyhow::{Context, anyhow};

use crate::db::{Db, pg_error_message};
use crate::locks;

pub use plan::{Action, Entry, Invalid, Kind, Plan, Problem};

use check::{check_database, check_file};
use file::{Format, decode, parse};

/// Reads the inventory at `path` (YAML for `.yaml` / `.yml`, JSON for `.json`), checks it, and
/// upserts it in one transaction, committed unless `dry_run` (then rolled back).
///
/// Errors: an [`Invalid`] (every problem, each with its path; nothing written) when the file or
/// its references are wrong; otherwise an I/O or database error with context.
pub async fn run(db: &Db, path: &Path, dry_run: bool) -> anyhow::Result<Plan> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {file}"))?;
    let format = Format::of(path)?;
    let value = parse(&text, format).with_context(|| format!("cannot parse {file}"))?;
    let mut problems = Vec::new();
    let inventory = decode(&value, &mut problems);
    check_file(&inventory, &mut problems);

    let mut client = match db.get().await {
        Ok(c) => c,
        // The file's own problems are worth reporting even when the database is away.
        Err(e) if !problems.is_empty() => {
            problems.push(Problem::new(
                "",
                format!("the checks against the database were skipped: {e}"),
            ));
            return Err(Invalid::new(file, problems).into());
        }
        Err(e) => return Err(e.into()),
    };
    let tx = client
        .transaction()
        .await
        .map_err(pg)
        .context("cannot start a transaction")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&locks::PROVISION])
        .await
        .map_err(pg)
        .context("cannot take the provisioning lock")?;
    // Before the checks, so that the cycle check sees every committed parent change and none
    // can come between it and the writes (the API's PATCH takes the same lock).
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&locks::ASSET_PARENTS])
        .await
        .map_err(pg)
        .context("cannot take the asset-parent lock")?;
    let known = check_database(&tx, &inventory, &mut problems).await?;
    if !problems.is_empty() {
        drop(tx); // rolls back
        return Err(Invalid::new(file, problems).into());
    }
    let mut plan = apply::apply(&tx, &inventory, &known).await?;
    plan.dry_run = dry_run;
    if dry_run {
        tx.rollback()
            .await
            .map_err(pg)
            .context("cannot roll back the dry run")?;
    } else {
        tx.commit()
            .await
            .map_err(pg)
            .context("cannot commit the inventory")?;
    }
    Ok(plan)
}

fn pg(e: tokio_postgres::Error) -> anyhow::Error {
    anyhow!(pg_error_message(&e))
}
