//! The node's inbox: every message the broker receives goes to the hub's fan-out, and the
//! messages of the reserved control channels (names starting with `$`) to the task that
//! handles them: connection commands ([`crate::commands`]) or plugin rollout.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::broker::Inbox;
use crate::history::Position;
use crate::hub::Hub;
use crate::metrics::Latency;

/// A control channel's message: the channel and the payload.
pub type Control = (String, Bytes);

/// Hands broker messages to the hub, in arrival order, on the broker's task.
pub struct Dispatcher {
    hub: Arc<Hub>,
    control: mpsc::UnboundedSender<Control>,
    commands: mpsc::UnboundedSender<Bytes>,
    delivered: metrics::Counter,
    dropped: metrics::Counter,
    fanout: Arc<Latency>,
}

impl Dispatcher {
    /// A dispatcher fanning out to `hub`, passing connection commands to `commands` and
    /// other control messages to `control`. Build it after the metrics recorder is
    /// installed: the handles it takes are the recorder's.
    pub fn new(
        hub: Arc<Hub>,
        control: mpsc::UnboundedSender<Control>,
        commands: mpsc::UnboundedSender<Bytes>,
    ) -> Self {
        Self {
            hub,
            control,
            commands,
            delivered: metrics::counter!("switchyard_messages_delivered_total"),
            dropped: metrics::counter!(
                "switchyard_messages_dropped_total",
                "reason" => "slow_consumer"
            ),
            fanout: Latency::get("switchyard_fanout_seconds", &[]),
        }
    }
}

impl Inbox for Dispatcher {
    fn deliver(&self, channel: &str, payload: &[u8], position: Option<&Position>) {
        // Client channels never start with '$' (protocol::validate_channel).
        if channel == crate::commands::CHANNEL {
            let _ = self.commands.send(Bytes::copy_from_slice(payload));
            return;
        }
        if channel.starts_with('$') {
            let _ = self
                .control
                .send((channel.to_owned(), Bytes::copy_from_slice(payload)));
            return;
        }
        let started = std::time::Instant::now();
        let stats = self.hub.dispatch(channel, payload, position);
        self.fanout.record(started.elapsed());
        self.delivered.increment(stats.delivered as u64);
        if stats.dropped > 0 {
            self.dropped.increment(stats.dropped as u64);
        }
    }
}
