//! Acknowledgements: a message's PUBACK goes out only after its rows commit, in arrival order,
//! and only on the connection it arrived on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish;

/// What is needed to acknowledge a message later: its packet id on the connection it came on.
#[derive(Debug, Clone, Copy)]
pub struct AckToken {
    pkid: u16,
    qos: QoS,
    connection: u64,
}

impl AckToken {
    pub fn new(pkid: u16, qos: QoS, connection: u64) -> Self {
        Self {
            pkid,
            qos,
            connection,
        }
    }
}

/// Connection state shared with the writer (acks) and health checks.
#[derive(Debug, Default)]
pub struct Link {
    /// Incremented whenever a connection ends; tokens of older connections are not acked.
    connection: AtomicU64,
    connected: AtomicBool,
}

impl Link {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The current connection's number, stamped on the tokens of messages it delivers.
    pub fn current(&self) -> u64 {
        self.connection.load(Ordering::Acquire)
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
        metrics::gauge!(crate::telemetry::names::MQTT_CONNECTED).set(if up { 1.0 } else { 0.0 });
    }

    /// The connection ended: tokens issued so far become stale. Returns whether it was up.
    pub fn connection_lost(&self) -> bool {
        self.connection.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!(crate::telemetry::names::MQTT_CONNECTED).set(0.0);
        metrics::counter!(crate::telemetry::names::MQTT_RECONNECTS).increment(1);
        self.connected.swap(false, Ordering::AcqRel)
    }
}

/// Sends PUBACKs for committed messages.
#[derive(Clone)]
pub struct Acker {
    client: AsyncClient,
    link: Arc<Link>,
}

/// How acknowledging a batch of messages went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AckReport {
    pub acked: usize,
    /// Messages from a connection that has since ended: the broker redelivers them.
    pub stale: usize,
}

impl Acker {
    pub fn new(client: AsyncClient, link: Arc<Link>) -> Self {
        Self { client, link }
    }

    /// Acknowledges `tokens` in order (MQTT requires PUBACKs in arrival order).
    pub fn ack_all(&self, tokens: &[AckToken]) -> AckReport {
        let mut report = AckReport::default();
        for t in tokens {
            if t.qos == QoS::AtMostOnce {
                continue;
            }
            if t.connection != self.link.connection.load(Ordering::Acquire) {
                report.stale += 1;
                continue;
            }
            let mut p = Publish::new("", t.qos, Bytes::new(), None);
            p.pkid = t.pkid;
            match self.client.try_ack(&p) {
                Ok(()) => report.acked += 1,
                // Sized so this cannot happen; if it does, the message stays unacknowledged and
                // is redelivered after the next reconnect: a duplicate, never a loss.
                Err(e) => {
                    tracing::error!(error = %e, pkid = t.pkid, "could not queue a PUBACK");
                    report.stale += 1;
                }
            }
        }
        report
    }
}
