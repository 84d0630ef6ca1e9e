//! The one integration-test binary: real PostgreSQL and mosquitto, started by `common`.

mod cli;
mod common;
mod faults;
mod harness;
mod ingest;
mod schema;
mod support;
