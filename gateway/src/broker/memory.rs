//! The embedded broker: one node, in-process, no external service.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;

use super::{Ack, Broker, Inbox, Request, Requests};

/// Loops every publish on a subscribed channel straight back to this node's fan-out.
pub struct MemoryBroker {
    inbox: Arc<dyn Inbox>,
    /// Channels the node receives, as the hub asked for them.
    subscribed: Arc<RwLock<HashSet<String>>>,
}

impl MemoryBroker {
    /// Starts the broker: a task applies `requests` in order; a publish on a subscribed
    /// channel is delivered to `inbox` before `publish` returns.
    pub fn start(requests: Requests, inbox: Arc<dyn Inbox>) -> Self {
        let subscribed = Arc::new(RwLock::new(HashSet::new()));
        tokio::spawn(serve(requests, subscribed.clone()));
        Self { inbox, subscribed }
    }
}

/// Applies subscription requests until the broker is dropped.
async fn serve(mut requests: Requests, subscribed: Arc<RwLock<HashSet<String>>>) {
    while let Some(request) = requests.recv().await {
        let mut set = subscribed.write().unwrap_or_else(PoisonError::into_inner);
        match request {
            Request::Subscribe(channel, ack) => {
                set.insert(channel);
                let _ = ack.send(Ok(()));
            }
            Request::Unsubscribe(channel) => {
                set.remove(&channel);
            }
        }
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, channel: &str, payload: Bytes) -> Ack {
        let subscribed = self
            .subscribed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(channel);
        if subscribed {
            // The publisher pays for its own fan-out: that is the embedded broker's
            // back-pressure.
            self.inbox.deliver(channel, &payload);
        }
        Ack::now(Ok(()))
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
