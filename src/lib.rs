//! enalysis-ingest: MQTT readings in, PostgreSQL rows out, nothing lost and nothing stored twice.
//!
//! The path of a reading follows the module list: [`mqtt`] → [`decode`] / [`validate`] →
//! [`batch`] → [`write`] → [`ack`]. See ARCHITECTURE.md for the map and its invariants.

pub mod catalogue;
pub mod cli;
pub mod config;
pub mod db;
pub mod decode;
pub mod migrate;
pub mod model;
pub mod registry;
pub mod seed;
pub mod telemetry;
pub mod validate;
