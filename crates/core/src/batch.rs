//! The pure data of a batch, as the writer's rejection encoding reads it: each message's exact
//! bytes and digest, the readings accepted and the rejections, [`Contents`], what a batch
//! collects from judged messages, and [`Part`], a run of a batch's messages. The daemon's
//! `Batch` wraps a [`Contents`] with its ack tokens and budget charge; the fuzz target fills one
//! the same way.

use std::sync::OnceLock;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::model::{Outcome, Reading, Rejection};

/// A message as the writer needs it to store rejections: exact bytes and where they came from.
#[derive(Debug)]
pub struct Message {
    pub topic: String,
    /// The payload as received, or its first `ingest.max_payload_bytes` when it was larger.
    pub payload: Bytes,
    /// The size of the payload as received.
    pub size: usize,
    pub received_at: DateTime<Utc>,
    /// See [`digest`] and [`Message::digest`].
    digest: OnceLock<Digest32>,
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
    /// Index into the batch's messages.
    pub message: u32,
    /// Position among the accepted readings of its message; used only if the database refuses
    /// the row and it has to become a rejection.
    pub index: u32,
}

#[derive(Debug)]
pub struct Rejected {
    pub rejection: Rejection,
    /// Index into the batch's messages.
    pub message: u32,
}

impl Message {
    /// The message as the writer keeps it: the payload cut at `keep` bytes, and the digest of
    /// the whole of it when it has rejections to store (an accepted-only message needs one only
    /// if the writer rejects a reading of it after all; [`Message::digest`] makes it then).
    pub fn new(
        topic: String,
        raw_topic: &[u8],
        payload: Bytes,
        received_at: DateTime<Utc>,
        keep: usize,
        with_digest: bool,
    ) -> Self {
        let size = payload.len();
        let digest = OnceLock::new();
        if with_digest {
            let _ = digest.set(self::digest(raw_topic, &payload));
        }
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

    /// The message's digest. Made on first use for a message judged without rejections: its
    /// topic matched a contract pattern, so it is the raw topic, and its payload is whole (it
    /// was not over the size limit), so this is the digest of exactly what was received.
    pub fn digest(&self) -> &Digest32 {
        self.digest
            .get_or_init(|| digest(self.topic.as_bytes(), &self.payload))
    }
}

/// What a batch collects: its messages, the readings accepted and the rejections, both lists in
/// message order.
#[derive(Debug, Default)]
pub struct Contents {
    pub messages: Vec<Message>,
    pub accepted: Vec<Accepted>,
    pub rejected: Vec<Rejected>,
}

impl Contents {
    /// Adds a message and what it was judged to be.
    pub fn push(&mut self, message: Message, judged: Outcome) {
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

    /// Readings accepted plus rejections.
    pub fn rows(&self) -> usize {
        self.accepted.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Everything collected as one [`Part`].
    pub fn whole(&self) -> Part<'_> {
        Part {
            messages: &self.messages,
            first: 0,
            accepted: &self.accepted,
            rejected: &self.rejected,
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

    /// The bytes of the payloads this part's rejection rows store: each message with
    /// rejections once (every message keeps its payload, most only until their batch is
    /// written).
    pub fn rejected_payload_bytes(&self) -> usize {
        let mut last = None;
        let mut bytes = 0;
        for r in self.rejected {
            // In message order: a message's rejections are next to each other.
            if last != Some(r.message) {
                last = Some(r.message);
                bytes += self.message(r.message).map_or(0, |m| m.payload.len());
            }
        }
        bytes
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{Context, Limits, judge};

    fn push(contents: &mut Contents, topic: &str, payload: &str) {
        let registry = crate::fixture::registry();
        let now = DateTime::parse_from_rfc3339("2026-11-24T15:00:00Z")
            .expect("now")
            .with_timezone(&Utc);
        let limits = Limits {
            max_payload_bytes: 1024,
            max_clock_skew: chrono::Duration::minutes(5),
            max_age: chrono::Duration::days(400),
        };
        let ctx = Context {
            prefix: crate::decode::DEFAULT_PREFIX,
            registry: &registry,
            limits: &limits,
            now,
        };
        let judged = judge(topic, payload.as_bytes(), &ctx);
        let message = Message::new(
            topic.into(),
            topic.as_bytes(),
            Bytes::copy_from_slice(payload.as_bytes()),
            now,
            limits.max_payload_bytes,
            !judged.rejected.is_empty(),
        );
        contents.push(message, judged);
    }

    #[test]
    fn pushed_messages_number_their_readings_and_rejections_and_split_by_message() {
        let mut c = Contents::default();
        assert!(c.is_empty());
        let cons = "enalysis/v1/meters/EAN-CONS/readings";
        let at = "\"2026-11-24T14:59:00Z\"";
        push(
            &mut c,
            cons,
            &format!(
                r#"[{{"ts": {at}, "metric": "power", "value": 1.0, "unit": "kW"}},
                    {{"ts": {at}, "metric": "nonsense", "value": 1.0}},
                    {{"ts": {at}, "metric": "current", "value": 2.0, "unit": "A"}}]"#
            ),
        );
        push(&mut c, "enalysis/v1/elsewhere", "{}");
        push(
            &mut c,
            cons,
            &format!(r#"{{"ts": {at}, "metric": "power", "value": 3.0, "unit": "kW"}}"#),
        );
        let accepted: Vec<(u32, u32)> = c.accepted.iter().map(|a| (a.message, a.index)).collect();
        assert_eq!(accepted, [(0, 0), (0, 1), (2, 0)]);
        let rejected: Vec<u32> = c.rejected.iter().map(|r| r.message).collect();
        assert_eq!(rejected, [0, 1]);
        assert_eq!(c.rows(), 5);
        // Messages 0 and 1 have rejections (1 twice over: its one rejection), 2 has none.
        assert_eq!(
            c.whole().rejected_payload_bytes(),
            c.messages[0].payload.len() + c.messages[1].payload.len()
        );

        let whole = c.whole();
        assert_eq!((whole.messages.len(), whole.first, whole.rows()), (3, 0, 5));
        let (a, b) = whole.split().expect("three messages split");
        assert_eq!(
            (
                a.messages.len(),
                a.first,
                a.accepted.len(),
                a.rejected.len()
            ),
            (1, 0, 2, 1)
        );
        assert_eq!(
            (
                b.messages.len(),
                b.first,
                b.accepted.len(),
                b.rejected.len()
            ),
            (2, 1, 1, 1)
        );
        assert!(b.message(0).is_none() && b.message(2).is_some());
    }
}
