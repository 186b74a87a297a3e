//! The embedded broker: one node, in-process, no external service.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{Ack, Broker, BrokerError, Inbox};

/// Loops every publish straight back to this node's fan-out.
pub struct MemoryBroker {
    inbox: Arc<dyn Inbox>,
}

impl MemoryBroker {
    /// Creates the broker; every publish is delivered to `inbox` before `publish` returns.
    pub fn new(inbox: Arc<dyn Inbox>) -> Self {
        Self { inbox }
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, channel: &str, payload: Bytes) -> Ack {
        // The publisher pays for its own fan-out: that is the embedded broker's back-pressure.
        self.inbox.deliver(channel, &payload);
        Ack::now(Ok(()))
    }

    fn subscribe(&self, _channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        futures_util::future::ready(Ok(())).boxed()
    }

    fn unsubscribe(&self, _channel: &str) {}

    fn is_ready(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
