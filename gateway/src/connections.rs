//! The node's WebSocket connections: numbers, the count against `limits.max_connections`,
//! and the registry of open sessions' outboxes that a shutdown closes.
//!
//! One registry instead of a waiter on the shutdown token in each session: such a waiter is
//! 72 bytes in every connection's task (idle memory, docs/benchmarks.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::hub::{ConnId, Sink};
use crate::protocol::CloseReason;

/// Every connection of the node.
pub struct Connections {
    max: usize,
    count: AtomicUsize,
    next: AtomicU64,
    open: Mutex<HashMap<ConnId, Arc<dyn Sink>>>,
    /// [`Connections::close_all`] was called: sessions registering from now on are closed.
    closing: AtomicBool,
    gauge: metrics::Gauge,
    opened: metrics::Counter,
}

impl Connections {
    /// Room for `max` connections at once. Call after the metrics recorder is installed.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            count: AtomicUsize::new(0),
            next: AtomicU64::new(1),
            open: Mutex::default(),
            closing: AtomicBool::new(false),
            gauge: metrics::gauge!("switchyard_connections"),
            opened: metrics::counter!("switchyard_connections_total"),
        }
    }

    fn open_sessions(&self) -> MutexGuard<'_, HashMap<ConnId, Arc<dyn Sink>>> {
        // Inserts and removes cannot leave the map half-updated.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for a new connection and numbers it, or `None` at the limit. The place is
    /// given back with [`Connections::release`].
    pub fn try_open(&self) -> Option<ConnId> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        self.gauge.increment(1.0);
        self.opened.increment(1);
        Some(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers connection `id`'s outbound queue, so that [`Connections::close_all`] closes
    /// it with 1001; one registering after that is closed at once.
    pub fn register(&self, id: ConnId, sink: Arc<dyn Sink>) {
        self.open_sessions().insert(id, sink.clone());
        // After the insert: a close_all that began before it did not see this one.
        if self.closing.load(Ordering::Acquire) {
            sink.close(CloseReason::ShuttingDown);
        }
    }

    /// Gives connection `id`'s place back.
    pub fn release(&self, id: ConnId) {
        self.open_sessions().remove(&id);
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.gauge.decrement(1.0);
    }

    /// Asks every open session, and every one registering from now on, to close with 1001.
    pub fn close_all(&self) {
        self.closing.store(true, Ordering::Release);
        for sink in self.open_sessions().values() {
            sink.close(CloseReason::ShuttingDown);
        }
    }

    /// Open WebSocket connections.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}
