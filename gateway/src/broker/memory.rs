//! The embedded broker: one node, in-process, no external service.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::{Broker, BrokerError, Incoming, IncomingRx};

/// Messages buffered between publishers and the fan-out; publishers wait when it is full.
const BUFFER: usize = 8192;

/// Loops every publish straight back to this node's fan-out.
pub struct MemoryBroker {
    tx: mpsc::Sender<Incoming>,
}

impl MemoryBroker {
    /// Creates the broker and the stream of messages it delivers.
    pub fn new() -> (Self, IncomingRx) {
        let (tx, rx) = mpsc::channel(BUFFER);
        (Self { tx }, rx)
    }
}

impl Broker for MemoryBroker {
    fn publish(
        &self,
        channel: &str,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        let tx = self.tx.clone();
        let msg = Incoming {
            channel: Arc::from(channel),
            payload,
        };
        async move { tx.send(msg).await.map_err(|_| BrokerError::Closed) }.boxed()
    }

    fn subscribe(&self, _channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        futures_util::future::ready(Ok(())).boxed()
    }

    fn unsubscribe(&self, _channel: &str) {}

    fn is_ready(&self) -> bool {
        !self.tx.is_closed()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
