//! Batching: judge each message (decode + validate, pure) and collect the results into batches
//! flushed by size or age. The batcher knows nothing of SQL or of MQTT beyond the ack token.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::ack::AckToken;
use crate::budget::Charge;
use crate::model::{Reading, Rejection};
use crate::mqtt::Inbound;
use crate::registry::Registry;
use crate::telemetry::{RejectionSummary, names};
use crate::validate::{self, Limits};

/// A message as the writer needs it to store rejections: exact bytes and where they came from.
#[derive(Debug)]
pub struct Message {
    pub topic: String,
    /// The payload as received, or its first `ingest.max_payload_bytes` when it was larger.
    pub payload: Bytes,
    /// The size of the payload as received.
    pub size: usize,
    pub received_at: DateTime<Utc>,
    /// See [`digest`]; computed once, from the whole payload.
    pub digest: Digest32,
}

pub type Digest32 = [u8; 32];

/// sha256 of topic, a NUL, and the payload: the same message redelivered has the same digest,
/// so its rejections map onto the rows already stored.
pub fn digest(topic: &[u8], payload: &[u8]) -> Digest32 {
    let mut h = Sha256::new();
    h.update(topic);
    h.update([0u8]);
    h.update(payload);
    h.finalize().into()
}

/// An accepted reading, with the message it came in.
#[derive(Debug)]
pub struct Accepted {
    pub reading: Reading,
    pub received_at: DateTime<Utc>,
    /// Index into [`Batch::messages`].
    pub message: u32,
    /// Position among the accepted readings of its message; used only if the database refuses
    /// the row and it has to become a rejection.
    pub index: u32,
}

#[derive(Debug)]
pub struct Rejected {
    pub rejection: Rejection,
    /// Index into [`Batch::messages`].
    pub message: u32,
}

/// Everything the writer commits in one transaction, and the messages to ack after it.
#[derive(Debug, Default)]
pub struct Batch {
    pub messages: Vec<Message>,
    pub accepted: Vec<Accepted>,
    pub rejected: Vec<Rejected>,
    /// In arrival order.
    pub acks: Vec<AckToken>,
    /// When the oldest message of the batch arrived (for the age limit and latency).
    pub started: Option<Instant>,
    /// The bytes of everything above against the budget, released when the batch is dropped
    /// (after its acks are handed to the MQTT client).
    pub charge: Option<Charge>,
}

impl Batch {
    pub fn rows(&self) -> usize {
        self.accepted.len() + self.rejected.len()
    }

    /// The whole batch as a [`Part`].
    pub fn whole(&self) -> Part<'_> {
        Part {
            messages: &self.messages,
            first: 0,
            accepted: &self.accepted,
            rejected: &self.rejected,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

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
        charge.reduce_to(charge.bytes().saturating_sub(size - message.payload.len()));
        charge.add(judged_bytes(&judged));
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
        self.push(message, judged);
    }

    /// Adds a message and what it was judged to be (the pure part of [`Batch::add`]).
    pub fn push(&mut self, message: Message, judged: crate::model::Outcome) {
        let index = u32::try_from(self.messages.len()).unwrap_or(u32::MAX);
        for (i, reading) in judged.accepted.into_iter().enumerate() {
            self.accepted.push(Accepted {
                reading,
                received_at: message.received_at,
                message: index,
                index: u32::try_from(i).unwrap_or(u32::MAX),
            });
        }
        for rejection in judged.rejected {
            self.rejected.push(Rejected {
                rejection,
                message: index,
            });
        }
        self.messages.push(message);
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

impl Message {
    /// The message as the writer keeps it: the payload cut at `keep` bytes, and the digest of
    /// the whole of it when it has rejections to store (an accepted-only message needs none).
    pub fn new(
        topic: String,
        raw_topic: &[u8],
        payload: Bytes,
        received_at: DateTime<Utc>,
        keep: usize,
        with_digest: bool,
    ) -> Self {
        let size = payload.len();
        let digest = if with_digest {
            digest(raw_topic, &payload)
        } else {
            [0; 32]
        };
        // A copy, so the memory of the rest is freed now (a slice would keep all of it).
        let payload = if size > keep {
            Bytes::copy_from_slice(&payload[..keep])
        } else {
            payload
        };
        Self {
            topic,
            payload,
            size,
            received_at,
            digest,
        }
    }
}

/// Some consecutive messages of a batch with their readings and rejections: what the writer
/// commits in one transaction. Normally the whole batch; a batch the database keeps refusing is
/// split into parts until the message that causes it stands alone.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    pub messages: &'a [Message],
    /// Index in the batch of `messages[0]` (what [`Accepted::message`] counts from).
    pub first: u32,
    /// Of these messages only (the batch keeps both lists in message order).
    pub accepted: &'a [Accepted],
    pub rejected: &'a [Rejected],
}

impl<'a> Part<'a> {
    /// The message with batch index `i`, if it is in this part.
    pub fn message(&self, i: u32) -> Option<&'a Message> {
        self.messages.get(i.checked_sub(self.first)? as usize)
    }

    pub fn rows(&self) -> usize {
        self.accepted.len() + self.rejected.len()
    }

    /// The two halves, by message; `None` for a single message.
    pub fn split(&self) -> Option<(Part<'a>, Part<'a>)> {
        if self.messages.len() < 2 {
            return None;
        }
        let mid = self.messages.len() / 2;
        let boundary = self.first + u32::try_from(mid).unwrap_or(u32::MAX);
        let (ma, mb) = self.messages.split_at(mid);
        let (aa, ab) = self
            .accepted
            .split_at(self.accepted.partition_point(|a| a.message < boundary));
        let (ra, rb) = self
            .rejected
            .split_at(self.rejected.partition_point(|r| r.message < boundary));
        Some((
            Part {
                messages: ma,
                first: self.first,
                accepted: aa,
                rejected: ra,
            },
            Part {
                messages: mb,
                first: boundary,
                accepted: ab,
                rejected: rb,
            },
        ))
    }
}

/// What the batcher needs to judge messages.
pub struct Judge {
    pub prefix: String,
    pub limits: Limits,
    pub registry: watch::Receiver<Arc<Registry>>,
}

impl Judge {
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
            let outcome = judge.judge(&registry, &topic, &m);
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
