//! Telemetry in one place: logs ([`logs`]), every metric name ([`names`]), the Prometheus
//! recorder with its buckets and descriptions ([`recorder`]), and process metrics sampled from
//! `/proc` ([`process`]). `http` only serves what is recorded here.

pub mod logs;
pub mod names;
pub mod process;
pub mod recorder;

pub use logs::{LogTarget, RejectionSummary, init_logs};
pub use recorder::install_metrics;
