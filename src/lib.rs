//! enalysis-ingest: MQTT readings in, PostgreSQL rows out, nothing lost and nothing stored twice.
//!
//! The path of a reading follows the module list: [`mqtt`] → [`decode`] / [`validate`] →
//! [`batch`] → [`write`] → [`ack`]. See ARCHITECTURE.md for the map and its invariants.

pub use enalysis_core::{catalogue, decode, model, registry, validate};

pub mod ack;
pub mod admin;
pub mod backoff;
pub mod batch;
pub mod budget;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod http;
pub mod migrate;
pub mod mqtt;
pub mod partitions;
pub mod registry_sync;
pub mod seed;
pub mod simulate;
pub mod telemetry;
pub mod tls;
pub mod write;
