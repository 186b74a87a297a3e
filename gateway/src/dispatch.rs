//! The node's inbox: every message the broker receives goes to the hub's fan-out, and plugin
//! announcements on the control channel go to the node.

use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;

use crate::broker::Inbox;
use crate::metrics::Latency;
use crate::node::Node;
use crate::plugins::cluster::CONTROL_CHANNEL;

/// Hands broker messages to a node's hub, in arrival order, on the broker's task.
pub struct Dispatcher {
    /// Set once the node exists (the broker is built before it). Weak: the node owns the
    /// broker, whose tasks hold this dispatcher.
    node: OnceLock<Weak<Node>>,
    delivered: metrics::Counter,
    dropped: metrics::Counter,
    fanout: Arc<Latency>,
}

impl Dispatcher {
    /// A dispatcher that ignores messages until [`Dispatcher::attach`]; none can arrive before
    /// then, as nothing is subscribed before the node exists.
    pub fn new() -> Self {
        Self {
            node: OnceLock::new(),
            delivered: metrics::counter!("switchyard_messages_delivered_total"),
            dropped: metrics::counter!(
                "switchyard_messages_dropped_total",
                "reason" => "slow_consumer"
            ),
            fanout: Latency::get("switchyard_fanout_seconds", &[]),
        }
    }

    /// Starts delivering to `node`.
    pub fn attach(&self, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
    }
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Inbox for Dispatcher {
    fn deliver(&self, channel: &str, payload: &[u8]) {
        let Some(node) = self.node.get().and_then(Weak::upgrade) else {
            return;
        };
        // Client channels never start with '$' (protocol::validate_channel).
        if channel.starts_with('$') {
            if channel == CONTROL_CHANNEL {
                tokio::spawn(node.on_control(Bytes::copy_from_slice(payload)));
            }
            return;
        }
        let started = std::time::Instant::now();
        let stats = node.hub.dispatch(channel, payload);
        self.fanout.record(started.elapsed());
        self.delivered.increment(stats.delivered as u64);
        if stats.dropped > 0 {
            self.dropped.increment(stats.dropped as u64);
        }
    }
}
