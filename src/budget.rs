//! The byte budget: how much memory may hold messages received and not yet acknowledged.
//!
//! A message is charged when the MQTT task receives it (topic, payload, bookkeeping), charged
//! again for what it was judged to be (its readings and rejections), and released when the
//! batch that holds it has been committed and acknowledged — or dropped unacknowledged at
//! shutdown. While the budget is spent the MQTT task stops reading from the broker, which holds
//! the rest. A count of messages bounds nothing when one message may be 4 MiB; bytes do.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::telemetry::names;

/// What one message costs besides its topic and payload: the `Inbound`, the batch's `Message`,
/// an ack token, queue slots. Measured as the order of magnitude, not to the byte.
pub const MESSAGE_OVERHEAD: usize = 256;

#[derive(Debug)]
pub struct Budget {
    limit: usize,
    /// Kept free for what one poll of the MQTT client may read before it is charged: the
    /// budget counts as spent `reserve` bytes early, so that read still fits under `limit`.
    reserve: usize,
    used: AtomicUsize,
    freed: Notify,
    gauge: metrics::Gauge,
}

impl Budget {
    pub fn new(limit: usize, reserve: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            reserve,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
            gauge: metrics::gauge!(names::BUFFERED_BYTES),
        })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget is spent (short of the reserve): stop taking messages in.
    pub fn is_spent(&self) -> bool {
        self.used().saturating_add(self.reserve) >= self.limit
    }

    /// Charges `bytes`; released when the returned [`Charge`] (and whatever it merged) drops.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        let mut c = Charge {
            budget: self.clone(),
            bytes: 0,
        };
        c.resize(bytes);
        c
    }

    /// Resolves after the next release (or at once, if one happened since the last wait).
    /// One task waits on this: the MQTT task.
    pub async fn freed(&self) {
        self.freed.notified().await
    }

    fn add(&self, bytes: usize) {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.gauge.set(used as f64);
    }

    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let used = self.used.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        self.gauge.set(used as f64);
        // notify_one keeps a permit when nobody waits yet: a release between the MQTT task's
        // check and its wait is not missed.
        self.freed.notify_one();
    }
}

/// Bytes charged to the budget, released on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    /// Makes the charge `bytes`: more for what a message turned into, less for memory freed
    /// early (an oversized payload cut).
    pub fn resize(&mut self, bytes: usize) {
        if bytes > self.bytes {
            self.budget.add(bytes - self.bytes);
        } else {
            self.budget.release(self.bytes - bytes);
        }
        self.bytes = bytes;
    }

    /// Takes over `other`'s bytes; they are released with this charge.
    pub fn absorb(&mut self, mut other: Charge) {
        if Arc::ptr_eq(&self.budget, &other.budget) {
            self.bytes += std::mem::take(&mut other.bytes);
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_released_when_they_drop_including_absorbed_ones() {
        let b = Budget::new(1100, 100);
        let mut batch = b.charge(0);
        let m1 = b.charge(600);
        let mut m2 = b.charge(300);
        m2.resize(500);
        assert_eq!(b.used(), 1100);
        assert!(b.is_spent());
        batch.absorb(m1);
        batch.absorb(m2);
        assert_eq!((b.used(), batch.bytes()), (1100, 1100));
        batch.resize(900);
        assert_eq!(b.used(), 900);
        assert!(!b.is_spent());
        drop(batch);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn a_release_before_the_wait_is_not_missed() {
        let b = Budget::new(10, 0);
        drop(b.charge(20));
        tokio::time::timeout(std::time::Duration::from_secs(1), b.freed())
            .await
            .expect("the earlier release wakes the waiter");
    }
}
