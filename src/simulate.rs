//! `enalysis-ingest simulate`: a gateway simulator and load generator. Publishes readings for the
//! active meters and energy sources in the database: daily load curves, solar production, a
//! battery that charges at noon and discharges in the evening, and energy registers that go up,
//! roll over at a meter's `metadata.register_max` and restart from 0 at an occasional meter
//! exchange (CONTRACT §7 intervals go through both). Optionally a share of invalid readings, one
//! contract reason after another.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Timelike, Utc};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use uuid::Uuid;

use crate::config::Config;
use crate::db::Db;

#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Messages per second, across all connections.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// How long to publish, in seconds.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Publish exactly this many messages instead of rate × duration (with a very high --rate:
    /// as fast as the broker takes them).
    #[arg(long)]
    pub count: Option<u64>,
    /// MQTT connections to publish over.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// QoS of the publishes: 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Share of messages (0 to 1) made invalid on purpose, cycling through the reasons.
    #[arg(long, default_value_t = 0.0)]
    pub invalid_share: f64,
    /// Share of messages (0 to 1) sent first as an estimate (`"quality": "estimated"`, values 3%
    /// low) and again, a few seconds later, with the real values: corrections (CONTRACT.md §4).
    /// The second sending counts as a message of its own.
    #[arg(long, default_value_t = 0.0)]
    pub corrections: f64,
    /// One reading per message (`power` only) instead of a `values` map of several metrics.
    #[arg(long)]
    pub single: bool,
    /// Readings objects per message: above 1, each message is a JSON array of that many
    /// successive readings of one device (a gateway that buffers).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub per_message: u16,
    /// Share of meters (0 to 1) left quiet, with their energy sources: they publish nothing, so
    /// they turn up in `GET /api/v1/silent` once completeness.silence_factor x their frequency
    /// has passed. The same meters every run (the first ones by external id, then id: in the
    /// demo inventory, `demo-battery`, so the register near its maximum keeps publishing).
    #[arg(long, default_value_t = 0.0)]
    pub silent: f64,
}

/// The meters `--silent` keeps quiet: the first `share` of them by (external id, id), so a
/// demo is repeatable whatever ids the database gave.
fn quiet_meters(meters: &[(Option<String>, Uuid)], share: f64) -> std::collections::HashSet<Uuid> {
    let mut sorted = meters.to_vec();
    sorted.sort_unstable();
    let n = (share * sorted.len() as f64).round() as usize;
    sorted.into_iter().take(n).map(|(_, id)| id).collect()
}

/// One simulated device.
#[derive(Debug, Clone)]
struct Device {
    topic: String,
    category: String,
    battery: bool,
    /// Nominal power in kW, varied per device so curves differ.
    scale: f64,
    energy_kwh: f64,
    /// The meter's `metadata.register_max`: the register rolls over to 0 there.
    register_max: Option<f64>,
    /// Readings until this device's meter is exchanged (its register restarts from 0).
    exchange_in: u64,
    soc: f64,
    /// Simulated time of this device's next reading.
    next_ts: DateTime<Utc>,
}

/// A device's meter is exchanged (its energy register restarts from 0) once every this many of
/// its readings: at `scripts/dev run`'s rate about every 25 minutes per device.
const EXCHANGE_EVERY: u64 = 5_000;

/// The reasons cycled through by `--invalid-share`; each payload triggers exactly that reason.
const INVALID: &[crate::model::Reason] = &crate::model::Reason::ALL;

pub async fn run(config: &Config, args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0, "--rate must be above 0");
    anyhow::ensure!(args.connections > 0, "--connections must be above 0");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.invalid_share),
        "--invalid-share must be between 0 and 1"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.corrections),
        "--corrections must be between 0 and 1"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.silent),
        "--silent must be between 0 and 1"
    );
    let db = Db::new(&config.database)?;
    let client = db.get().await?;
    let rows = client
        .query(
            // Active all the way up; with each device's last stored energy reading, so that a
            // restarted simulator continues its registers instead of making them jump.
            "SELECT CASE a.entity_type WHEN 'meter' THEN 'meters' ELSE 'energy-sources' END,
                    a.id, a.category::text, a.is_battery, a.meter_id,
                    CASE WHEN a.entity_type = 'meter' THEN m.metadata->>'register_max' END,
                    (SELECT value FROM measurements WHERE entity_type = a.entity_type
                       AND entity_id = a.id AND metric = 'energy' ORDER BY ts DESC LIMIT 1),
                    a.external_id
             FROM active_entities a JOIN meters m ON m.id = a.meter_id
             WHERE a.entity_type <> 'asset'
             ORDER BY 2",
            &[],
        )
        .await
        .map_err(crate::db::QueryError::from)
        .context("reading the inventory (has `migrate` run, and `provision`?)")?;
    drop(client);
    anyhow::ensure!(
        !rows.is_empty(),
        "no active meters or energy sources in the database: provision an inventory first"
    );
    let meters: Vec<(Option<String>, Uuid)> = rows
        .iter()
        .filter(|r| r.get::<_, &str>(0) == "meters")
        .map(|r| (r.get(7), r.get(1)))
        .collect();
    let quiet = quiet_meters(&meters, args.silent);
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| !quiet.contains(&r.get::<_, Uuid>(4)))
        .collect();
    if !quiet.is_empty() {
        println!(
            "leaving {} of {} meters quiet (--silent)",
            quiet.len(),
            meters.len()
        );
    }
    anyhow::ensure!(
        !rows.is_empty(),
        "--silent {} leaves nothing to publish",
        args.silent
    );
    let prefix = &config.mqtt.topic_prefix;
    // Simulated time runs at real time, or faster when a device gets more than one message per
    // millisecond; then it starts far enough back that the last reading is still in the past
    // (future readings would be rejected).
    let total = args.count.unwrap_or(args.rate * args.duration);
    let per_message = f64::from(args.per_message);
    let per_device_rate = args.rate as f64 * per_message / rows.len() as f64;
    let step_ms = (1000.0 / per_device_rate).clamp(1.0, 60_000.0) as i64;
    let per_device_readings = (total as f64 * per_message / rows.len() as f64).ceil() as i64;
    let span_ms = per_device_readings * step_ms;
    let ahead_ms = (span_ms - (total as f64 / args.rate as f64 * 1000.0) as i64).max(0);
    let start = Utc::now() - chrono::Duration::milliseconds(ahead_ms + 1000);
    let mut devices: Vec<Device> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let kind: &str = r.get(0);
            let id: Uuid = r.get(1);
            let scale = 50.0 + (i % 7) as f64 * 25.0;
            let register_max = r
                .get::<_, Option<&str>>(5)
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|m| m.is_finite() && *m > 0.0);
            // A new register starts a quarter of an hour of its nominal power below its maximum:
            // it rolls over soon, yet after the first complete 15-minute interval (one needs a
            // reading at or before its start).
            let fresh =
                register_max.map_or(1000.0 * (i + 1) as f64, |m| (m - scale / 4.0).max(0.0));
            Device {
                topic: format!("{prefix}/{kind}/{id}/readings"),
                category: r.get(2),
                battery: r.get(3),
                scale,
                energy_kwh: r.get::<_, Option<f64>>(6).unwrap_or(fresh),
                register_max,
                // Staggered, so devices are not all exchanged at once, and the first one a fifth
                // of the period in, not at the start.
                exchange_in: EXCHANGE_EVERY / 5 + (i as u64 * 1_237) % EXCHANGE_EVERY,
                soc: 50.0,
                next_ts: start,
            }
        })
        .collect();

    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let acked = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..args.connections {
        let mut mqtt = config.mqtt.clone();
        mqtt.client_id = format!(
            "{}-sim-{c}-{}",
            config.mqtt.client_id,
            Uuid::new_v4().simple()
        );
        let (mut opts, _) = crate::mqtt::options(&mqtt, &config.ingest)?;
        publisher_options(&mut opts);
        let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
        let acked = acked.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "simulator connection error; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        clients.push(client);
    }

    // On stdout, for whoever times the run (scripts/bench): connections made, inventory read.
    println!(
        "publishing {total} messages for {} devices over {} connection(s)",
        devices.len(),
        clients.len()
    );
    let started = Instant::now();
    let tick = Duration::from_millis(10);
    let mut interval = tokio::time::interval(tick);
    let mut sent: u64 = 0;
    let mut readings: u64 = 0;
    let mut invalid_sent: u64 = 0;
    // The real values of estimates sent, due once `sent` reaches the first field.
    let mut pending: std::collections::VecDeque<(u64, String, Vec<u8>, u64)> = Default::default();
    let mut corrections_sent: u64 = 0;
    // A correction follows its estimate after about two seconds of publishing (at most 10,000
    // messages later: flat out, two seconds' worth would hold most corrections to the end).
    let correction_lag = (args.rate * 2).clamp(1, 10_000);
    let mut next_report = Instant::now() + Duration::from_secs(5);
    while sent < total {
        interval.tick().await;
        // Catch up to where the schedule says we should be.
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while sent < due {
            let d = sent as usize % devices.len();
            let want_invalid = share_hits(sent, args.invalid_share);
            let due_correction = pending.front().is_some_and(|p| p.0 <= sent)
                // The last messages: every estimate gets its correction.
                || total - sent <= pending.len() as u64;
            let (topic, payload, n) = if due_correction
                && let Some((_, topic, payload, n)) = pending.pop_front()
            {
                corrections_sent += 1;
                (topic, payload, n)
            } else if want_invalid {
                let reason = INVALID[invalid_sent as usize % INVALID.len()];
                invalid_sent += 1;
                // A one-way meter, where one exists, for the category rule.
                let device = if reason == crate::model::Reason::CategoryViolation {
                    devices
                        .iter()
                        .find(|d| d.category != "STOR" && !d.battery)
                        .unwrap_or(&devices[d])
                } else {
                    &devices[d]
                };
                invalid_message(device, reason, prefix, &config.ingest)
            } else {
                let device = &mut devices[d];
                let (payload, n) = if args.per_message == 1 {
                    reading_message(device, step_ms, args.single)
                } else {
                    let mut payload = b"[".to_vec();
                    let mut n = 0;
                    for i in 0..args.per_message {
                        if i > 0 {
                            payload.push(b',');
                        }
                        let (one, k) = reading_message(device, step_ms, args.single);
                        payload.extend_from_slice(&one);
                        n += k;
                    }
                    payload.push(b']');
                    (payload, n)
                };
                if share_hits(sent, args.corrections) && total - sent > pending.len() as u64 + 1 {
                    let estimate = estimated(&payload);
                    pending.push_back((sent + correction_lag, device.topic.clone(), payload, n));
                    (device.topic.clone(), estimate, n)
                } else {
                    (device.topic.clone(), payload, n)
                }
            };
            let client = &clients[sent as usize % clients.len()];
            client
                .publish(topic, qos, false, payload)
                .await
                .context("publishing")?;
            readings += n;
            sent += 1;
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(5);
            tracing::info!(
                sent,
                readings,
                invalid = invalid_sent,
                corrections = corrections_sent,
                rate = (sent as f64 / started.elapsed().as_secs_f64()) as u64,
                "publishing"
            );
        }
    }
    if qos == QoS::AtLeastOnce {
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for c in &clients {
        let _ = c.disconnect().await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {sent} messages ({readings} readings, {invalid_sent} invalid, {corrections_sent} corrections) in {secs:.1} s: {:.0} messages/s, broker acked {}",
        sent as f64 / secs,
        acked.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Does message `n` fall in the share (spread evenly: every 1/share-th message)?
fn share_hits(n: u64, share: f64) -> bool {
    share > 0.0 && ((n + 1) as f64 * share).floor() > (n as f64 * share).floor()
}

/// The estimate a gateway would have sent for `payload` while the meter could not be read:
/// every value 3% low, quality `estimated`. (Lower, not higher: an energy register must not
/// run ahead of its next real reading.)
fn estimated(payload: &[u8]) -> Vec<u8> {
    fn estimate(v: &mut serde_json::Value) {
        let low = |x: &mut serde_json::Value| {
            if let Some(f) = x.as_f64() {
                *x = ((f * 0.97 * 1000.0).round() / 1000.0).into();
            }
        };
        match v {
            serde_json::Value::Array(items) => items.iter_mut().for_each(estimate),
            serde_json::Value::Object(o) => {
                if let Some(x) = o.get_mut("value") {
                    low(x);
                }
                if let Some(serde_json::Value::Object(values)) = o.get_mut("values") {
                    values.values_mut().for_each(low);
                }
                o.insert("quality".into(), "estimated".into());
            }
            _ => {}
        }
    }
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(mut v) => {
            estimate(&mut v);
            v.to_string().into_bytes()
        }
        Err(_) => payload.to_vec(),
    }
}

fn publisher_options(opts: &mut MqttOptions) {
    // A persistent session, as a gateway needs one: after a broker restart rumqttc re-sends the
    // QoS 1 publishes the broker had not acknowledged only if the session survived (with a
    // clean start it drops them, and those readings would be lost before the broker owned
    // them). Up to 1000 publishes in flight.
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(600));
    opts.set_manual_acks(false);
    opts.set_outgoing_inflight_upper_limit(1000);
}

/// The next reading of a device, its curves evaluated at its simulated time.
fn reading_message(d: &mut Device, step_ms: i64, single: bool) -> (Vec<u8>, u64) {
    let ts = d.next_ts;
    d.next_ts += chrono::Duration::milliseconds(step_ms);
    let hour = ts.hour() as f64 + ts.minute() as f64 / 60.0;
    let day = std::f64::consts::TAU * (hour - 6.0) / 24.0;
    let power = match (d.category.as_str(), d.battery) {
        // Storage: charge (negative) around noon, discharge in the evening.
        ("STOR", _) | (_, true) => -d.scale * (std::f64::consts::TAU * (hour - 9.0) / 24.0).sin(),
        // Solar: a bell over the day, nothing at night.
        ("PROD", _) => d.scale * (std::f64::consts::PI * (hour - 6.0) / 12.0).sin().max(0.0),
        // Export: what is left at midday.
        ("INJ", _) => (d.scale * 0.3 * day.sin()).max(0.0),
        // Consumption: a base load with a daytime hump.
        _ => d.scale * (0.6 + 0.3 * day.sin()),
    };
    let dt_h = step_ms as f64 / 3_600_000.0;
    d.energy_kwh += power.abs() * dt_h;
    if let Some(max) = d.register_max
        && d.energy_kwh >= max
    {
        d.energy_kwh -= max;
    }
    d.exchange_in -= 1;
    // A register with a maximum is there to roll over: never exchanged, since a fall from near
    // its maximum to 0 would read as a rollover anyway (CONTRACT §7).
    if d.exchange_in == 0 {
        d.exchange_in = EXCHANGE_EVERY;
        if d.register_max.is_none() {
            d.energy_kwh = 0.0;
        }
    }
    d.soc = (d.soc - power * dt_h / d.scale * 10.0).clamp(0.0, 100.0);
    let ts_ms = ts.timestamp_millis();
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    if single {
        let v = serde_json::json!({"ts": ts_ms, "metric": "power", "value": round(power), "unit": "kW"});
        return (v.to_string().into_bytes(), 1);
    }
    let mut values = serde_json::Map::new();
    values.insert("power".into(), round(power).into());
    values.insert("energy".into(), round(d.energy_kwh).into());
    values.insert("voltage".into(), round(230.0 + 3.0 * day.cos()).into());
    if d.category == "STOR" || d.battery {
        values.insert("state_of_charge".into(), round(d.soc).into());
    }
    let n = values.len() as u64;
    let v = serde_json::json!({"ts": ts_ms, "values": values});
    (v.to_string().into_bytes(), n)
}

/// A message that the daemon must reject with `reason` (category_violation needs a device of a
/// one-way meter).
fn invalid_message(
    d: &Device,
    reason: crate::model::Reason,
    prefix: &str,
    limits: &crate::config::IngestConfig,
) -> (String, Vec<u8>, u64) {
    use crate::model::Reason::*;
    let ts = (d.next_ts - chrono::Duration::seconds(1)).timestamp_millis();
    let body = match reason {
        MalformedPayload => return (d.topic.clone(), b"{\"ts\": oops".to_vec(), 1),
        PayloadTooLarge => return (d.topic.clone(), vec![b' '; limits.max_payload_bytes + 1], 1),
        UnknownTopic => {
            let v = serde_json::json!({"ts": ts, "metric": "power", "value": 1.0});
            return (
                format!("{prefix}/meters//readings"),
                v.to_string().into_bytes(),
                1,
            );
        }
        UnknownEntity => {
            let topic = format!("{prefix}/meters/{}/readings", Uuid::new_v4());
            let v = serde_json::json!({"ts": ts, "metric": "power", "value": 1.0});
            return (topic, v.to_string().into_bytes(), 1);
        }
        InvalidTimestamp => serde_json::json!({"ts": "yesterday", "metric": "power", "value": 1.0}),
        FutureTimestamp => serde_json::json!({
            "ts": (Utc::now() + chrono::Duration::days(1)).timestamp_millis(),
            "metric": "power", "value": 1.0
        }),
        StaleTimestamp => serde_json::json!({
            "ts": (Utc::now() - chrono::Duration::days(limits.max_age_days as i64 + 30))
                .timestamp_millis(),
            "metric": "power", "value": 1.0
        }),
        UnknownMetric => serde_json::json!({"ts": ts, "metric": "vibes", "value": 1.0}),
        InvalidUnit => serde_json::json!({"ts": ts, "metric": "power", "value": 1.0, "unit": "Hz"}),
        InvalidValue => serde_json::json!({"ts": ts, "metric": "power", "value": "lots"}),
        InvalidQuality => {
            serde_json::json!({"ts": ts, "metric": "power", "value": 1.0, "quality": "great"})
        }
        OutOfRange => serde_json::json!({"ts": ts, "metric": "voltage", "value": -5.0}),
        CategoryViolation => serde_json::json!({"ts": ts, "metric": "power", "value": -1.0}),
        // Two readings for one key: the first is stored, the second (different, and no better)
        // is not applied under any policy.
        Superseded => serde_json::json!([
            {"ts": ts, "metric": "power", "value": 1.0},
            {"ts": ts, "metric": "power", "value": 2.0, "quality": "bad"},
        ]),
    };
    (d.topic.clone(), body.to_string().into_bytes(), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quiet_share_is_rounded_and_the_same_meters_every_time() {
        let ids: Vec<(Option<String>, Uuid)> = (1..=10u128)
            .rev()
            .map(|i| (None, Uuid::from_u128(i)))
            .collect();
        assert!(quiet_meters(&ids, 0.0).is_empty());
        assert_eq!(quiet_meters(&ids, 1.0).len(), 10);
        let q = quiet_meters(&ids, 0.25);
        // 2.5 rounds to 3: the three smallest ids, whatever the order they came in.
        assert_eq!(q.len(), 3);
        for i in 1..=3u128 {
            assert!(q.contains(&Uuid::from_u128(i)));
        }
        // By external id first.
        let named = [
            (Some("b".into()), Uuid::from_u128(1)),
            (Some("a".into()), Uuid::from_u128(2)),
        ];
        assert_eq!(quiet_meters(&named, 0.5), [Uuid::from_u128(2)].into());
    }
}
