//! The command line (CONTRACT.md §1). Each command loads the configuration, does one job, and
//! turns any failure into one clear line (printed by `main`) and a non-zero exit.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::db::Db;
use crate::telemetry::{self, LogTarget};

#[derive(Debug, Parser)]
#[command(
    name = "enalysis-ingest",
    version,
    about = "Ingestion daemon for energy measurements: MQTT in, PostgreSQL out"
)]
pub struct Cli {
    /// Configuration file layered over the built-in defaults [default: config/default.toml,
    /// when it exists]. Environment variables override it (see config/default.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: subscribe, validate, batch, write; serve HTTP.
    Run,
    /// Apply pending SQL migrations (idempotent; safe with several instances).
    Migrate,
    /// Insert reference data (asset types CONS, PROD, C/I, INJ); idempotent.
    Seed,
    /// Declarative inventory (YAML or JSON): upsert portfolios → sites → meters → assets /
    /// energy sources / grid links / asset connections in one transaction; idempotent.
    Provision {
        /// The inventory (.yaml, .yml or .json); see config/inventory.example.yaml.
        file: PathBuf,
        /// Print the plan, then roll back: nothing is written.
        #[arg(long)]
        dry_run: bool,
    },
    /// Load and validate the configuration; print the effective values with secrets masked.
    CheckConfig,
    /// A gateway simulator and load generator: publishes readings for the active meters and
    /// energy sources in the database.
    Simulate(crate::simulate::SimulateArgs),
    /// A terminal view of a running daemon from its /metrics, refreshed every second:
    /// throughput, rejections by reason, latency, buffers, broker, database, memory.
    Top(crate::top::TopArgs),
}

pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref()).context("invalid configuration")?;
    match cli.command {
        Command::CheckConfig => {
            print!("{}", config.to_masked_toml());
            Ok(())
        }
        Command::Migrate => {
            telemetry::init_logs(&config.log, LogTarget::Stderr);
            let report = migrate(&config).await?;
            if report.applied.is_empty() {
                println!("schema is up to date (version {})", report.current);
            } else {
                println!(
                    "applied {} migration(s): {}; schema at version {}",
                    report.applied.len(),
                    report.applied.join(", "),
                    report.current
                );
            }
            Ok(())
        }
        Command::Seed => {
            telemetry::init_logs(&config.log, LogTarget::Stderr);
            let db = Db::new(&config.database)?;
            let client = db.get().await?;
            let inserted = crate::seed::run(&client)
                .await
                .map_err(crate::db::QueryError::from)
                .context("seeding asset types failed (has `migrate` run?)")?;
            println!(
                "seeded asset types: {inserted} inserted, {} already present",
                crate::seed::ASSET_TYPES.len() as u64 - inserted
            );
            Ok(())
        }
        Command::Provision { file, dry_run } => {
            telemetry::init_logs(&config.log, LogTarget::Stderr);
            let db = Db::new(&config.database)?;
            let plan = crate::admin::provision::run(&db, &file, dry_run).await?;
            println!("{plan}");
            Ok(())
        }
        Command::Simulate(args) => {
            telemetry::init_logs(&config.log, LogTarget::Stderr);
            crate::simulate::run(&config, args).await
        }
        // No logs: the terminal is the view (and `--once`'s stdout is the snapshot).
        Command::Top(args) => crate::top::run(&config, args).await,
        Command::Run => {
            telemetry::init_logs(&config.log, LogTarget::Stdout);
            run(config).await
        }
    }
}

/// Applies pending migrations with a dedicated connection from a fresh pool.
pub async fn migrate(config: &Config) -> anyhow::Result<crate::migrate::Report> {
    let db = Db::new(&config.database)?;
    let mut client = db.get().await?;
    let report = crate::migrate::run(&mut client).await?;
    Ok(report)
}

async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %serde_json::to_string(&config.masked()).unwrap_or_default(),
        "starting"
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    let metrics = crate::telemetry::install_metrics()?;
    match crate::daemon::run(config, Some(metrics), shutdown).await? {
        crate::daemon::Exit::Drained => {
            tracing::info!("stopped");
            Ok(())
        }
        crate::daemon::Exit::DeadlineExceeded => anyhow::bail!(
            "shutdown deadline passed before everything was written; unacknowledged messages will be redelivered"
        ),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
