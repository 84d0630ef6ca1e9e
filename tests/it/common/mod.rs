//! Test harness: real PostgreSQL, mosquitto and Prometheus servers from the local install, started
//! in temp dirs on free loopback ports, cleaned up even when the test binary is killed.
//!
//! - [`shared_pg`] + [`fresh_db`]: one cluster per test binary, one database per test.
//! - [`PgServer::dedicated`]: a cluster of its own, for tests that stop and restart it.
//! - [`Broker::start`]: a mosquitto per test.
//! - [`Prometheus::start`]: a Prometheus per test, scraping the daemons it is given.
//! - [`PgPair::start`]: a primary and a streaming standby (synchronous or not), for failover.
//! - [`PgServer::dedicated_with_options`]: one with its own settings, files and TCP rules
//!   (e.g. TLS only).
//! - [`TestPki`]: a private CA and a server certificate for TLS tests.
//! - [`wait_until`]: poll, never sleep.
//!
//! Needs `apt-get install -y postgresql mosquitto prometheus`. Overrides: `PG_BINDIR`,
//! `MOSQUITTO_BIN`, `PROMETHEUS_BIN`.
#![allow(dead_code)] // every test module uses a different part

mod broker;
mod certs;
mod pg;
mod process;
mod prometheus;

use std::future::Future;
use std::time::{Duration, Instant};

#[allow(unused_imports)] // the completeness benchmark does not use it
pub use broker::Broker;
#[allow(unused_imports)] // re-exported for the test modules
pub use certs::{TestPki, run_checked};
#[allow(unused_imports)]
pub use pg::{
    Hba, PASSWORD_LOGIN_GROUP, PASSWORD_USER, PASSWORD_USER_PASSWORD, PgOptions, PgPair, PgServer,
    Replication, STANDBY_NAME, TestDb, fresh_db, shared_pg,
};
#[allow(unused_imports)] // the benchmark does not use them
pub use process::signal;
#[allow(unused_imports)] // the benchmark does not use it
pub use prometheus::Prometheus;

/// A loopback port that was free a moment ago (bind 127.0.0.1:0, read, close). Servers started
/// on it retry with a new one if somebody else took it in between.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .expect("bind 127.0.0.1:0 to find a free port")
        .local_addr()
        .expect("local address of a bound socket")
        .port()
}

/// Polls `f` every 25 ms until it returns true; panics with "timed out after …: `what`"
/// otherwise (a single call that hangs past the deadline counts as false). Tests wait for conditions with this, never with a fixed sleep.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // A condition that hangs counts as false rather than hanging the test.
        if let Ok(true) = tokio::time::timeout(remaining.max(Duration::from_millis(1)), f()).await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
