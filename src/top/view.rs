//! What `top` shows, computed from two scrapes (pure): rates and latency quantiles over the
//! time between them, gauges as of the later one.

use std::time::{Duration, Instant};

use super::exposition::Exposition;
use crate::telemetry::names;

/// One `/metrics` response and when it was read.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub at: Instant,
    pub metrics: Exposition,
}

/// A counter: its total now, and its rate over the interval when there was an earlier scrape.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Counter {
    pub total: Option<f64>,
    pub per_sec: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Between the two scrapes; None on the first scrape (no rates yet).
    pub interval: Option<Duration>,
    pub messages_in: Counter,
    pub stored: Counter,
    pub duplicate: Counter,
    /// Readings that replaced a stored one (also in `stored`).
    pub corrected: Counter,
    pub rejected: Counter,
    /// Reasons with any rejection since the daemon started, busiest first.
    pub rejections: Vec<(String, Counter)>,
    pub isolated: Counter,
    /// Receipt to commit, over the interval; None when no batch committed in it.
    pub latency_p50: Option<f64>,
    pub latency_p99: Option<f64>,
    pub buffered_readings: Option<f64>,
    pub buffered_bytes: Option<f64>,
    pub unacked: Option<f64>,
    pub connected: Option<bool>,
    pub reconnects: Counter,
    pub db_errors: Counter,
    pub rss_bytes: Option<f64>,
}

impl View {
    pub fn new(previous: Option<&Scrape>, current: &Scrape) -> View {
        let interval = previous.map(|p| current.at.saturating_duration_since(p.at));
        let before = previous.map(|p| &p.metrics);
        let now = &current.metrics;
        let named = |name: &str| counter(before.map(|b| b.sum(name)), now.sum(name), interval);

        let earlier_reasons = before.map(|b| b.by_label(names::READINGS_REJECTED, "reason"));
        let mut rejections: Vec<(String, Counter)> = now
            .by_label(names::READINGS_REJECTED, "reason")
            .into_iter()
            .filter(|(_, total)| *total > 0.0)
            .map(|(reason, total)| {
                let prev = earlier_reasons
                    .as_ref()
                    .map(|m| m.get(&reason).copied().or(Some(0.0)));
                let c = counter(prev, Some(total), interval);
                (reason, c)
            })
            .collect();
        rejections.sort_by(|(ra, a), (rb, b)| {
            let rate = |c: &Counter| c.per_sec.unwrap_or(0.0);
            rate(b)
                .total_cmp(&rate(a))
                .then(b.total.unwrap_or(0.0).total_cmp(&a.total.unwrap_or(0.0)))
                .then(ra.cmp(rb))
        });

        let latency = before.and_then(|b| {
            let earlier = b.buckets(names::END_TO_END_LATENCY).ok()?;
            let later = now.buckets(names::END_TO_END_LATENCY).ok()?;
            Some(bucket_delta(&earlier, &later))
        });
        let quantile = |q| latency.as_deref().and_then(|d| histogram_quantile(q, d));

        View {
            interval,
            messages_in: named(names::MESSAGES_RECEIVED),
            stored: named(names::READINGS_ACCEPTED),
            duplicate: named(names::READINGS_DUPLICATE),
            corrected: named(names::READINGS_CORRECTED),
            rejected: named(names::READINGS_REJECTED),
            rejections,
            isolated: named(names::MESSAGES_ISOLATED),
            latency_p50: quantile(0.5),
            latency_p99: quantile(0.99),
            buffered_readings: now.sum(names::BUFFERED_READINGS),
            buffered_bytes: now.sum(names::BUFFERED_BYTES),
            unacked: now.sum(names::MQTT_UNACKED),
            connected: now.sum(names::MQTT_CONNECTED).map(|v| v >= 1.0),
            reconnects: named(names::MQTT_RECONNECTS),
            db_errors: named(names::DB_ERRORS),
            rss_bytes: now.sum(names::PROCESS_RESIDENT_MEMORY),
        }
    }
}

fn counter(before: Option<Option<f64>>, now: Option<f64>, interval: Option<Duration>) -> Counter {
    counter_from(before.flatten(), now, interval)
}

/// A counter that went down was reset (the daemon restarted): everything it counts now came
/// after the restart, as Prometheus's rate() assumes.
fn counter_from(before: Option<f64>, now: Option<f64>, interval: Option<Duration>) -> Counter {
    let per_sec = match (before, now, interval) {
        (Some(b), Some(n), Some(i)) if i > Duration::ZERO => {
            let delta = if n >= b { n - b } else { n };
            Some(delta / i.as_secs_f64())
        }
        _ => None,
    };
    Counter {
        total: now,
        per_sec,
    }
}

/// Observations per bucket between two scrapes of one cumulative histogram. A bucket that went
/// down means a reset: then the later counts are all since the restart.
fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let b = before
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0.0, |(_, c)| *c);
            (le, n - b)
        })
        .collect();
    if delta.iter().any(|(_, n)| *n < 0.0) {
        after.to_vec()
    } else {
        delta
    }
}

/// Prometheus's `histogram_quantile` over cumulative buckets sorted by upper bound, the last
/// one `+Inf`: linear interpolation inside the bucket the rank falls in; the highest finite
/// bound when it falls in `+Inf`. None without observations or without a `+Inf` bucket.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let &(last_le, total) = buckets.last()?;
    if last_le != f64::INFINITY || buckets.len() < 2 || total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let b = buckets.iter().position(|&(_, n)| n >= rank)?;
    if b == buckets.len() - 1 {
        return Some(buckets[b - 1].0);
    }
    let (upper, count) = buckets[b];
    let (lower, below) = match b {
        0 if upper <= 0.0 => return Some(upper),
        0 => (0.0, 0.0),
        _ => buckets[b - 1],
    };
    let inside = count - below;
    if inside <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * ((rank - below) / inside))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::exposition::parse;

    const INF: f64 = f64::INFINITY;

    #[test]
    fn quantiles_interpolate_inside_buckets_as_prometheus_does() {
        let b = [(0.1, 10.0), (0.2, 20.0), (0.5, 40.0), (INF, 40.0)];
        for (q, expected) in [
            (0.0, Some(0.0)),
            (0.25, Some(0.1)),
            (0.5, Some(0.2)),
            (0.75, Some(0.35)),
            (1.0, Some(0.5)),
        ] {
            let got = histogram_quantile(q, &b);
            assert!(
                matches!((got, expected), (Some(g), Some(e)) if (g - e).abs() < 1e-9),
                "q={q}: {got:?}"
            );
        }
        // Past the highest finite bound: that bound.
        assert_eq!(
            histogram_quantile(0.99, &[(1.0, 1.0), (INF, 10.0)]),
            Some(1.0)
        );
        // No observations, no +Inf, one bucket, a q out of range: nothing to say.
        assert_eq!(histogram_quantile(0.5, &[(1.0, 0.0), (INF, 0.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[(1.0, 3.0), (2.0, 4.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[(INF, 4.0)]), None);
        assert_eq!(histogram_quantile(1.5, &b), None);
        assert_eq!(histogram_quantile(0.5, &[]), None);
    }

    fn scrape(at: Instant, text: &str) -> Scrape {
        Scrape {
            at,
            metrics: parse(text).expect("test exposition parses"),
        }
    }

    #[test]
    fn rates_and_latency_cover_the_interval_between_two_scrapes() {
        let t0 = Instant::now();
        let before = scrape(
            t0,
            r#"
ingest_messages_received_total 100
ingest_readings_accepted_total 180
ingest_readings_rejected_total{reason="malformed_payload"} 10
ingest_readings_rejected_total{reason="unknown_entity"} 0
ingest_readings_rejected_total{reason="out_of_range"} 4
ingest_end_to_end_latency_seconds_bucket{le="0.1"} 5
ingest_end_to_end_latency_seconds_bucket{le="0.2"} 5
ingest_end_to_end_latency_seconds_bucket{le="+Inf"} 5
ingest_mqtt_connected 1
"#,
        );
        let after = scrape(
            t0 + Duration::from_secs(2),
            r#"
ingest_messages_received_total 120
ingest_readings_accepted_total 220
ingest_readings_rejected_total{reason="malformed_payload"} 10
ingest_readings_rejected_total{reason="unknown_entity"} 6
ingest_readings_rejected_total{reason="out_of_range"} 4
ingest_end_to_end_latency_seconds_bucket{le="0.1"} 5
ingest_end_to_end_latency_seconds_bucket{le="0.2"} 15
ingest_end_to_end_latency_seconds_bucket{le="+Inf"} 15
ingest_buffered_bytes 2048
ingest_mqtt_connected 0
"#,
        );
        let v = View::new(Some(&before), &after);
        assert_eq!(v.interval, Some(Duration::from_secs(2)));
        assert_eq!(
            v.messages_in,
            Counter {
                total: Some(120.0),
                per_sec: Some(10.0)
            }
        );
        assert_eq!(v.stored.per_sec, Some(20.0));
        assert_eq!(v.rejected.total, Some(20.0));
        assert_eq!(v.rejected.per_sec, Some(3.0));
        // Busiest first; a reason never seen is left out.
        let reasons: Vec<(&str, Option<f64>)> = v
            .rejections
            .iter()
            .map(|(r, c)| (r.as_str(), c.per_sec))
            .collect();
        assert_eq!(
            reasons,
            [
                ("unknown_entity", Some(3.0)),
                ("malformed_payload", Some(0.0)),
                ("out_of_range", Some(0.0))
            ]
        );
        // The 10 observations of the interval all fell in (0.1, 0.2]; the 5 before are not
        // counted.
        let p50 = v.latency_p50.expect("p50");
        assert!((p50 - 0.15).abs() < 1e-9, "{p50}");
        assert_eq!(v.buffered_bytes, Some(2048.0));
        assert_eq!(v.buffered_readings, None);
        assert_eq!(v.connected, Some(false));
        assert_eq!(v.duplicate, Counter::default());
    }

    #[test]
    fn the_first_scrape_has_totals_and_no_rates() {
        let only = scrape(
            Instant::now(),
            "ingest_messages_received_total 7\ningest_end_to_end_latency_seconds_bucket{le=\"+Inf\"} 3\n",
        );
        let v = View::new(None, &only);
        assert_eq!(v.interval, None);
        assert_eq!(v.messages_in.total, Some(7.0));
        assert_eq!(v.messages_in.per_sec, None);
        assert_eq!(v.latency_p99, None);
    }

    #[test]
    fn a_restarted_daemon_counts_from_zero_again() {
        let t0 = Instant::now();
        let before = scrape(
            t0,
            "ingest_readings_accepted_total 500\ningest_end_to_end_latency_seconds_bucket{le=\"1\"} 50\ningest_end_to_end_latency_seconds_bucket{le=\"+Inf\"} 50\n",
        );
        let after = scrape(
            t0 + Duration::from_secs(1),
            "ingest_readings_accepted_total 30\ningest_end_to_end_latency_seconds_bucket{le=\"1\"} 2\ningest_end_to_end_latency_seconds_bucket{le=\"+Inf\"} 2\n",
        );
        let v = View::new(Some(&before), &after);
        assert_eq!(v.stored.per_sec, Some(30.0));
        let p50 = v.latency_p50.expect("latency after the restart");
        assert!((p50 - 0.5).abs() < 1e-9, "{p50}");
    }
}
