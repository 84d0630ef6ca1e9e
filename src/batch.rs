//! Batching: judge each message (decode + validate, pure) and collect the results into batches
//! flushed by size or age. The batcher knows nothing of SQL or of MQTT beyond the ack token.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::ack::AckToken;
use crate::budget::Charge;
use crate::mqtt::Inbound;
use crate::registry::Registry;
use crate::telemetry::{RejectionSummary, names};
use crate::validate::{self, Limits};

// The pure data types of a batch live in the core crate, with the rejection encoding that reads
// them (and is fuzzed with them); re-exported so the daemon reads the same.
pub use enalysis_core::batch::{Accepted, Contents, Digest32, Message, Part, Rejected, digest};

/// Everything the writer commits in one transaction, and the messages to ack after it.
#[derive(Debug, Default)]
pub struct Batch {
    /// The messages, readings and rejections the writer commits.
    pub contents: Contents,
    /// One per message of `contents`, in arrival order.
    pub acks: Vec<AckToken>,
    /// When the oldest message of the batch arrived (for the age limit and latency).
    pub started: Option<Instant>,
    /// The bytes of everything above against the budget, released when the batch is dropped
    /// (after its acks are handed to the MQTT client).
    pub charge: Option<Charge>,
}

/// A batch reads as its contents (`batch.accepted`, `batch.rows()`, `batch.whole()`): the
/// writer needs those and the acks, and need not know which of the two crates holds what.
impl std::ops::Deref for Batch {
    type Target = Contents;

    fn deref(&self) -> &Contents {
        &self.contents
    }
}

impl Batch {
    /// Adds what one message was judged to be; `topic` is its topic as text. A payload over
    /// `keep` bytes is cut to them (the rest is never stored) and its memory given back.
    pub fn add(
        &mut self,
        inbound: Inbound,
        topic: String,
        judged: crate::model::Outcome,
        keep: usize,
        summary: &mut RejectionSummary,
    ) {
        if self.started.is_none() {
            self.started = Some(Instant::now());
        }
        let Inbound {
            topic: raw_topic,
            payload,
            received_at,
            ack,
            mut charge,
        } = inbound;
        let size = payload.len();
        let message = Message::new(
            topic,
            &raw_topic,
            payload,
            received_at,
            keep,
            !judged.rejected.is_empty(),
        );
        // One adjustment: the part of the payload not kept is freed, what it turned into added.
        charge.resize(
            charge.bytes().saturating_sub(size - message.payload.len()) + judged_bytes(&judged),
        );
        match &mut self.charge {
            Some(total) => total.absorb(charge),
            None => self.charge = Some(charge),
        }
        for rejection in &judged.rejected {
            metrics::counter!(names::READINGS_REJECTED, "reason" => rejection.reason.as_str())
                .increment(u64::from(rejection.count));
            summary.record(&message.topic, rejection);
        }
        self.acks.push(ack);
        self.contents.push(message, judged);
    }
}

/// What a judged message holds in memory besides its payload, for the byte budget.
fn judged_bytes(judged: &crate::model::Outcome) -> usize {
    judged.accepted.len() * std::mem::size_of::<Accepted>()
        + judged
            .rejected
            .iter()
            .map(|r| {
                std::mem::size_of::<Rejected>()
                    + r.detail.len()
                    + r.metric.as_ref().map_or(0, String::len)
            })
            .sum::<usize>()
}

/// What the batcher needs to judge messages.
pub struct Judge {
    pub prefix: String,
    /// `mqtt.ignore_topics`: topic filters whose messages are acknowledged and not stored.
    pub ignore: Vec<String>,
    pub limits: Limits,
    pub registry: watch::Receiver<Arc<Registry>>,
}

impl Judge {
    pub fn ignores(&self, topic: &str) -> bool {
        self.ignore
            .iter()
            .any(|f| crate::decode::topic_matches(f, topic))
    }

    pub fn judge(
        &self,
        registry: &Registry,
        topic: &str,
        inbound: &Inbound,
    ) -> crate::model::Outcome {
        let ctx = validate::Context {
            prefix: &self.prefix,
            registry,
            limits: &self.limits,
            now: inbound.received_at,
        };
        validate::judge(topic, &inbound.payload, &ctx)
    }
}

/// Limits of a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_rows: usize,
    pub max_age: Duration,
    /// How often rejections are summarised in the log.
    pub log_every: Duration,
}

/// Pulls messages from the queue, judges them, and hands full or old batches to the writer.
/// Sending to the writer waits while it is busy, which stops this loop pulling from the queue:
/// that is how a slow or absent database pauses intake. Returns when the queue is closed and
/// the last batch is handed over.
pub async fn run(
    mut rx: mpsc::Receiver<Inbound>,
    out: mpsc::Sender<Batch>,
    judge: Judge,
    limits: BatchLimits,
) {
    let mut batch = Batch::default();
    let mut summary = RejectionSummary::new(limits.log_every);
    loop {
        let deadline = batch.started.map(|s| s + limits.max_age);
        let log_due = summary.due_at().map(Instant::from_std);
        let next = tokio::select! {
            biased;
            m = rx.recv() => m,
            _ = sleep_until(deadline) => {
                if !flush(&mut batch, &out).await { return; }
                continue;
            }
            _ = sleep_until(log_due) => {
                summary.maybe_log();
                continue;
            }
        };
        let Some(first) = next else {
            flush(&mut batch, &out).await;
            summary.log_now();
            return;
        };
        // Judge everything that is already queued with one registry snapshot.
        let registry = judge.registry.borrow().clone();
        let mut inbound = Some(first);
        let mut received = 0;
        while let Some(m) = inbound.take() {
            received += 1;
            // Topics are UTF-8 by the MQTT spec; anything else is judged (and stored) lossily.
            let topic = String::from_utf8_lossy(&m.topic).into_owned();
            // An ignored message (a gateway's status) has nothing to store, but its ack still
            // waits for the messages before it: it goes through the batch with no rows.
            let outcome = if judge.ignores(&topic) {
                metrics::counter!(names::MESSAGES_IGNORED).increment(1);
                crate::model::Outcome::default()
            } else {
                judge.judge(&registry, &topic, &m)
            };
            batch.add(
                m,
                topic,
                outcome,
                judge.limits.max_payload_bytes,
                &mut summary,
            );
            if batch.rows() >= limits.max_rows {
                break;
            }
            inbound = rx.try_recv().ok();
        }
        metrics::counter!(names::MESSAGES_RECEIVED).increment(received);
        // Under a steady stream the queue is never empty and the timer branch above never
        // wins: the summary is checked here too, like the batch's age below.
        summary.maybe_log();
        metrics::gauge!(names::BUFFERED_READINGS).set(batch.rows() as f64);
        // The age limit is checked here too: under a steady stream the queue is never empty,
        // so the timer branch above would never win and batches would only close by size.
        let aged = batch.started.is_some_and(|s| s.elapsed() >= limits.max_age);
        if (batch.rows() >= limits.max_rows || aged) && !flush(&mut batch, &out).await {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Hands the batch to the writer. False when the writer is gone (it only stops on abort).
async fn flush(batch: &mut Batch, out: &mpsc::Sender<Batch>) -> bool {
    if batch.is_empty() {
        return true;
    }
    let sent = out.send(std::mem::take(batch)).await.is_ok();
    metrics::gauge!(names::BUFFERED_READINGS).set(0.0);
    sent
}
