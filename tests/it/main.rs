//! The one integration-test binary: real PostgreSQL, mosquitto and Prometheus, started by
//! `common`.

mod admin;
mod cli;
mod common;
mod completeness;
mod corrections;
mod dashboard;
mod deploy;
mod faults;
mod harness;
mod hostile;
mod ingest;
mod intervals;
mod properties;
mod provision;
mod recovery;
mod schema;
mod schemathesis;
mod support;
mod top;
mod transport;
