//! Logs: tracing with a JSON formatter on stdout by default, `pretty` for a terminal; and the
//! rejection summary, so that rejections never flood them.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Where log lines go. The daemon logs to stdout (CONTRACT.md §6); one-shot commands log to
/// stderr so their stdout stays the command's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// Installs the global subscriber. `RUST_LOG` wins over `log.level`. tokio-postgres reports
/// server NOTICEs at INFO, which are noise for operators, so it is held at WARN unless
/// `RUST_LOG` says otherwise.
pub fn init_logs(cfg: &LogConfig, target: LogTarget) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new(format!("tokio_postgres=warn,{}", cfg.level)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let result = match (cfg.format, target) {
        (LogFormat::Json, LogTarget::Stdout) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stdout)
            .try_init(),
        (LogFormat::Json, LogTarget::Stderr) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .try_init(),
        (LogFormat::Pretty, LogTarget::Stdout) => builder.with_writer(std::io::stdout).try_init(),
        (LogFormat::Pretty, LogTarget::Stderr) => builder.with_writer(std::io::stderr).try_init(),
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = result;
}

/// Rejections are logged as a summary per interval, never one line each: a gateway sending
/// garbage thousands of times a second must not flood the log. One WARN line per interval with
/// the count per reason and one sample (topic, detail).
#[derive(Debug)]
pub struct RejectionSummary {
    every: std::time::Duration,
    started: std::time::Instant,
    counts: std::collections::BTreeMap<&'static str, u64>,
    sample: Option<(String, String)>,
}

impl RejectionSummary {
    pub fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            started: std::time::Instant::now(),
            counts: Default::default(),
            sample: None,
        }
    }

    pub fn record(&mut self, topic: &str, rejection: &crate::model::Rejection) {
        *self.counts.entry(rejection.reason.as_str()).or_default() += u64::from(rejection.count);
        if self.sample.is_none() {
            self.sample = Some((topic.to_string(), rejection.describe().into_owned()));
        }
    }

    /// When the summary is due (for a timer), if anything was recorded.
    pub fn due_at(&self) -> Option<std::time::Instant> {
        (!self.counts.is_empty()).then_some(self.started + self.every)
    }

    /// Logs and resets if the interval is over.
    pub fn maybe_log(&mut self) {
        if self.started.elapsed() >= self.every {
            self.log_now();
        }
    }

    /// Logs what was recorded (if anything) and starts a new interval: at shutdown, so the
    /// last rejections are not left out of the log.
    pub fn log_now(&mut self) {
        if !self.counts.is_empty() {
            let total: u64 = self.counts.values().sum();
            let (topic, detail) = self.sample.take().unwrap_or_default();
            let reasons = self
                .counts
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect::<Vec<_>>()
                .join(",");
            tracing::warn!(
                rejected = total,
                reasons = %reasons,
                interval_secs = self.every.as_secs(),
                topic = %topic,
                detail = %detail,
                "readings rejected"
            );
            self.counts.clear();
        }
        self.started = std::time::Instant::now();
    }
}
