//! enalysis-ingest: MQTT readings in, PostgreSQL rows out, nothing lost and nothing stored twice.
//!
//! The path of a reading follows the module list: [`mqtt`] → [`decode`] / [`validate`] →
//! [`batch`] → [`write`] → [`ack`]. See ARCHITECTURE.md for the map and its invariants.

// The path of a reading, in the order it travels (one module a step, hence one per group):
// received and charged to the byte budget,
pub mod budget;
pub mod mqtt;

// judged against the registry snapshot by the pure core (its own crate, `crates/core`),
pub use enalysis_core::{catalogue, model, registry};
pub use enalysis_core::{decode, intervals, validate};

pub mod registry_sync;

// batched,
pub mod batch;

// written (a key's readings decided by the correction policy),
pub use enalysis_core::corrections;
pub mod write;

// and acknowledged.
pub mod ack;

// What the path leans on: retries, the database, TLS, telemetry.
pub mod backoff;
pub mod db;
pub mod telemetry;
pub mod tls;

// Beside the path: the HTTP listener and the admin API, schema and reference data, partitions,
// the simulator.
pub mod admin;
pub mod http;
pub mod locks;
pub mod migrate;
pub mod partitions;
pub mod seed;
pub mod silence;
pub mod simulate;

// Wiring: the configuration, the daemon, the command line, and `top` beside it.
pub mod cli;
pub mod config;
pub mod daemon;
pub mod top;
