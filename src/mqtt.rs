//! The MQTT edge: subscribe, forward each message into a bounded queue, send PUBACKs that the
//! writer asks for, reconnect with backoff.
//!
//! Invariants (see ARCHITECTURE.md):
//! - The task that polls the event loop awaits nothing but `poll()` (and, beside it, free space
//!   in the queue or the budget). It never holds a message while waiting: a full queue or a
//!   spent budget pauses *reads* (`EventLoop::pause_reads`, vendored rumqttc) while polling goes
//!   on, so PUBACKs and keep-alive pings still go out — the broker keeps the connection however
//!   long intake is paused — and nothing more is read (backpressure). It can never deadlock
//!   with the writer's acks.
//! - Acks go through the client's request channel with `try_ack`, which never waits: the
//!   channel is sized above the number of messages that can be awaiting an ack.
//! - An ack is only sent on the connection the message arrived on. After a reconnect the broker
//!   redelivers unacknowledged messages, so acks for the old connection are dropped (rumqttc
//!   drops the ones already queued itself) and the redelivered copies are acked instead.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ack::{AckToken, Acker, Link};
use crate::backoff::Backoff;
use crate::budget::{Budget, Charge, MESSAGE_OVERHEAD};
use crate::config::{Broker, IngestConfig, MqttConfig};

/// One message as received, on its way to the batcher.
#[derive(Debug)]
pub struct Inbound {
    pub topic: Bytes,
    pub payload: Bytes,
    pub received_at: DateTime<Utc>,
    pub ack: AckToken,
    /// Its bytes against `ingest.max_buffered_bytes`, held until it is acknowledged.
    pub charge: Charge,
}

/// The topic filter: everything under the prefix (CONTRACT.md §3): a topic that is not a contract topic reaches
/// the daemon, to be stored as `unknown_topic` (or ignored, `mqtt.ignore_topics`), never lost
/// unseen at the broker.
pub fn filters(cfg: &MqttConfig) -> Vec<String> {
    vec![in_group(
        cfg,
        format!("{}/#", cfg.topic_prefix.trim_end_matches('/')),
    )]
}

/// `filter` as subscribed: through `$share/{group}/` when `mqtt.shared_group` is set.
fn in_group(cfg: &MqttConfig, filter: String) -> String {
    if cfg.shared_group.is_empty() {
        filter
    } else {
        format!("$share/{}/{filter}", cfg.shared_group)
    }
}

/// The four filters of releases before `{prefix}/#` (one per contract topic). A persistent
/// session made by such a release still holds them, and with both in place the broker would
/// deliver every reading twice; so a resumed session drops them.
pub fn legacy_filters(cfg: &MqttConfig) -> Vec<String> {
    let prefix = cfg.topic_prefix.trim_end_matches('/');
    ["meters", "assets", "energy-sources", "gateways"]
        .iter()
        .map(|kind| in_group(cfg, format!("{prefix}/{kind}/+/readings")))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Builds the client options from the configuration.
pub fn options(
    cfg: &MqttConfig,
    ingest: &IngestConfig,
) -> Result<(MqttOptions, usize), MqttSetupError> {
    let Broker {
        url,
        tls,
        host,
        port,
        ..
    } = &cfg.url;
    let mut o = MqttOptions::new(cfg.client_id.clone(), host, *port);
    o.set_keep_alive(cfg.keep_alive);
    // A persistent session: the broker keeps our subscriptions and unacknowledged messages
    // across restarts. MQTT 5 needs both a non-clean start and a session expiry above 0.
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(cfg.session_expiry_secs));
    o.set_manual_acks(true);
    o.set_max_packet_size(Some(cfg.max_packet_bytes));
    // Ask for as many unacknowledged messages as the queue holds: flow control by the broker
    // where it enforces it (mosquitto does only loosely; the queue bounds memory regardless).
    let receive_max = u16::try_from(ingest.queue_messages.clamp(1, 65535)).unwrap_or(65535);
    o.set_receive_maximum(Some(receive_max));
    let user = if cfg.username.is_empty() {
        percent_decode(url.username())
    } else {
        cfg.username.clone()
    };
    let password = if cfg.password.is_empty() {
        url.password().map(percent_decode).unwrap_or_default()
    } else {
        cfg.password.clone()
    };
    if !user.is_empty() || !password.is_empty() {
        o.set_credentials(user, password);
    }
    if *tls {
        o.set_transport(Transport::Tls(tls_config(cfg)?));
    }
    // try_ack must always find room: every message in the pipeline may be waiting for its ack,
    // and acks of committed messages wait here until the MQTT task's next polls write them.
    // flume only allocates what is used, so a generous bound costs nothing.
    let request_capacity = ingest.queue_messages + 3 * ingest.batch_max_rows + 65_536;
    o.set_request_channel_capacity(request_capacity);
    Ok((o, request_capacity))
}

/// URL userinfo is percent-encoded (`p%40ss` is `p@ss`).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn tls_config(cfg: &MqttConfig) -> Result<TlsConfiguration, MqttSetupError> {
    let client = (!cfg.client_cert.is_empty()).then_some((
        "mqtt.client_cert",
        cfg.client_cert.as_str(),
        "mqtt.client_key",
        cfg.client_key.as_str(),
    ));
    let config = crate::tls::client_config("mqtt.ca_file", &cfg.ca_file, client)?;
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// The running MQTT side: the client (for acks) and the task driving the event loop.
pub struct Intake {
    pub acker: Acker,
    pub link: Arc<Link>,
}

/// Where received messages go: the queue to the batcher, and the byte budget each is charged
/// to on arrival.
pub struct Outlet {
    pub tx: mpsc::Sender<Inbound>,
    pub budget: Arc<Budget>,
}

/// Signals for the intake task's shutdown choreography.
pub struct IntakeControl {
    /// Stop forwarding messages (start of shutdown).
    pub stop_intake: CancellationToken,
    /// The writer has queued its last acks: flush them, disconnect, return.
    pub writer_done: CancellationToken,
    /// Give up waiting and return now (the shutdown deadline passed).
    pub abort: CancellationToken,
}

pub fn start(
    cfg: &MqttConfig,
    ingest: &IngestConfig,
    outlet: Outlet,
    link: Arc<Link>,
    control: IntakeControl,
) -> Result<(Intake, tokio::task::JoinHandle<()>), MqttSetupError> {
    let (opts, capacity) = options(cfg, ingest)?;
    let (client, eventloop) = AsyncClient::new(opts, capacity);
    let task = tokio::spawn(drive(
        eventloop,
        client.clone(),
        Subscription {
            filters: filters(cfg),
            legacy: legacy_filters(cfg),
        },
        Backoff::new(cfg.reconnect_min, cfg.reconnect_max),
        link.clone(),
        outlet,
        control,
    ));
    Ok((
        Intake {
            acker: Acker::new(client, link.clone()),
            link,
        },
        task,
    ))
}

/// What the daemon subscribes to, and what a resumed session of an older release may still hold.
struct Subscription {
    filters: Vec<String>,
    legacy: Vec<String>,
}

async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    Subscription { filters, legacy }: Subscription,
    mut backoff: Backoff,
    link: Arc<Link>,
    outlet: Outlet,
    control: IntakeControl,
) {
    let Outlet { tx, budget } = outlet;
    let mut tx = Some(tx);
    let mut subscribed_once = false;
    let mut disconnect_sent = false;
    // Messages received on this connection whose PUBACK has not been written yet.
    let mut unacked: i64 = 0;
    // One handle, not a registry lookup per message.
    let unacked_gauge = metrics::gauge!(crate::telemetry::names::MQTT_UNACKED);
    // Messages of one read beyond the queue's room: at most MQTT_READ_BATCH (see above).
    let mut overflow: VecDeque<Inbound> = VecDeque::new();
    let overflow_gauge = metrics::gauge!(crate::telemetry::names::MQTT_OVERFLOW);
    let overflow_peak = metrics::gauge!(crate::telemetry::names::MQTT_OVERFLOW_PEAK);
    let mut peak = 0;
    loop {
        if let Some(sender) = &tx {
            while let Some(m) = overflow.pop_front() {
                match sender.try_send(m) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(m)) => {
                        overflow.push_front(m);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            overflow_gauge.set(overflow.len() as f64);
        }
        // Read from the broker only while the queue has room and the byte budget is not spent
        // (or while draining, when what is read is dropped unacknowledged). Otherwise keep
        // polling with reads paused: rumqttc still writes the writer's PUBACKs and sends
        // keep-alive pings, so the broker keeps the connection however long intake is paused,
        // and nothing more is read — the broker holds the rest (backpressure). What one read
        // brought beyond the queue's room waits in `overflow`: at most one read's packets.
        let room = tx
            .as_ref()
            .is_some_and(|t| overflow.is_empty() && t.capacity() > 0);
        let spent = budget.is_spent();
        let reads = tx.is_none() || (!spent && room);
        eventloop.pause_reads(!reads);
        if tx.is_some() && control.stop_intake.is_cancelled() {
            // Closing the queue lets the batcher flush what it has. Messages still in
            // `overflow` are dropped unacknowledged: the broker redelivers them.
            tx = None;
            overflow.clear();
            overflow_gauge.set(0.0);
            tracing::info!("intake stopped; draining");
            continue;
        }
        let draining = tx.is_none();
        let sender = tx.clone();
        let event = tokio::select! {
            biased;
            _ = control.abort.cancelled() => return,
            _ = control.writer_done.cancelled(), if draining && !disconnect_sent => {
                // The request channel is FIFO: once the event loop reports this DISCONNECT
                // written, every ack queued before it was written too.
                if client.try_disconnect().is_err() {
                    return;
                }
                disconnect_sent = true;
                continue;
            }
            _ = control.stop_intake.cancelled(), if !draining => continue,
            // Paused: wake when reading may resume, to poll with reads on.
            _ = budget.freed(), if !reads && spent => continue,
            _ = queue_room(sender.as_ref()), if !reads && !spent => continue,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                backoff.reset();
                unacked = 0;
                link.set_connected(true);
                tracing::info!(
                    session_present = connack.session_present,
                    "connected to the MQTT broker"
                );
                // A fresh session has no subscriptions; an old one keeps them, but subscribe
                // once per process anyway in case the topic configuration changed.
                if (!connack.session_present || !subscribed_once) && tx.is_some() {
                    let topics = filters
                        .iter()
                        .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(topics) {
                        tracing::error!(error = %e, "could not queue the subscription");
                    }
                    // After the subscription, so no message falls between the two; dropping a
                    // filter the session does not hold is harmless.
                    if connack.session_present {
                        for legacy in &legacy {
                            if let Err(e) = client.try_unsubscribe(legacy.clone()) {
                                tracing::error!(error = %e, "could not queue an unsubscribe");
                            }
                        }
                    }
                    subscribed_once = true;
                }
            }
            Ok(Event::Outgoing(Outgoing::PubAck(_))) => {
                unacked -= 1;
                unacked_gauge.set(unacked as f64);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if publish.qos != QoS::AtMostOnce {
                    unacked += 1;
                    unacked_gauge.set(unacked as f64);
                }
                if let Some(sender) = &tx {
                    let charge = budget
                        .charge(publish.topic.len() + publish.payload.len() + MESSAGE_OVERHEAD);
                    let inbound = Inbound {
                        topic: publish.topic,
                        payload: publish.payload,
                        received_at: Utc::now(),
                        ack: AckToken::new(publish.pkid, publish.qos, link.current()),
                        charge,
                    };
                    if let Err(mpsc::error::TrySendError::Full(m)) = sender.try_send(inbound) {
                        overflow.push_back(m);
                        overflow_gauge.set(overflow.len() as f64);
                        if overflow.len() > peak {
                            peak = overflow.len();
                            overflow_peak.set(peak as f64);
                        }
                    }
                }
                // While draining, a message is neither forwarded nor acknowledged: the broker
                // keeps it for the next session.
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                tracing::info!(codes = ?suback.return_codes, "subscribed");
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                tracing::warn!(reason = ?d.reason_code, "the broker closed the session");
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                tracing::info!("disconnected from the MQTT broker");
                link.set_connected(false);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let was_connected = link.connection_lost();
                if tx.is_none() && control.writer_done.is_cancelled() {
                    // Draining and the connection is gone: nothing more can be acked.
                    return;
                }
                let delay = backoff.next_delay();
                if was_connected {
                    tracing::warn!(error = %e, retry_ms = delay.as_millis() as u64, "lost the MQTT connection; reconnecting");
                } else {
                    tracing::warn!(error = %e, retry_ms = delay.as_millis() as u64, "cannot connect to the MQTT broker; retrying");
                }
                tokio::select! {
                    _ = control.abort.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Resolves once the queue has room for a message (never, if it is closed or absent).
async fn queue_room(sender: Option<&mpsc::Sender<Inbound>>) {
    match sender {
        Some(s) => match s.reserve().await {
            Ok(permit) => drop(permit),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(prefix: &str, group: &str) -> MqttConfig {
        let mut c = crate::config::Config::load_from(None, Vec::new())
            .expect("defaults")
            .mqtt;
        c.topic_prefix = prefix.into();
        c.shared_group = group.into();
        c
    }

    #[test]
    fn the_filter_covers_everything_under_the_prefix() {
        assert_eq!(filters(&cfg("enalysis/v1", "")), ["enalysis/v1/#"]);
        assert_eq!(filters(&cfg("site/a/", "")), ["site/a/#"]);
    }

    #[test]
    fn a_shared_group_prefixes_every_filter() {
        for f in filters(&cfg("site/a", "ingest")) {
            assert!(f.starts_with("$share/ingest/site/a/"), "{f}");
        }
    }

    #[test]
    fn credentials_come_from_the_url_unless_configured() {
        let ingest = crate::config::Config::load_from(None, Vec::new())
            .expect("defaults")
            .ingest;
        let mut c = cfg("enalysis/v1", "");
        c.url = "mqtt://gw%40site:p%3Ass@broker:1884"
            .parse()
            .expect("a broker URL");
        let (o, capacity) = options(&c, &ingest).expect("options");
        assert_eq!(o.broker_address(), ("broker".to_string(), 1884));
        let login = o.credentials().expect("credentials");
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("gw@site", "p:ss")
        );
        assert!(capacity > ingest.queue_messages + ingest.batch_max_rows);
        c.username = "other".into();
        let (o, _) = options(&c, &ingest).expect("options");
        assert_eq!(o.credentials().expect("credentials").username, "other");
    }
}
