//! One task per node that sends publishes to Redis in the order they were made.
//!
//! Sessions keep many publishes in flight, so order cannot be left to the Redis client:
//! redis-rs does not promise that concurrent commands leave in the order they were issued (its
//! cluster client visibly reorders them). Here a publish is queued the moment it is made, and
//! the task sends everything queued as one batch (one pipeline per destination) while the
//! previous batch was in flight, then the next — so order holds and a busy node pays one
//! round trip per batch instead of one per message.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::{Accepted, Ack, BrokerError};
use crate::history::HistoryOptions;

/// Publishes sent in one batch at most.
const MAX_BATCH: usize = 1024;

/// One message to publish.
pub(super) struct Message {
    /// The Redis channel name.
    pub name: String,
    pub payload: Bytes,
    /// Set when the channel keeps history: the message is published by the history script.
    pub history: Option<HistoryOptions>,
}

/// Sends one batch, in order; returns one result per message.
pub(super) type SendBatch =
    Box<dyn FnMut(Vec<Message>) -> BoxFuture<'static, Vec<Accepted>> + Send>;

struct Queued {
    message: Message,
    ack: oneshot::Sender<Accepted>,
}

/// The queue in front of the publishing task.
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<Queued>,
}

impl Batcher {
    /// Starts the task; `send` performs one batch.
    pub(super) fn start(send: SendBatch) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, send));
        Self { tx }
    }

    /// Queues a publish to `channel` (the Redis channel `<prefix><channel>`) now; the future
    /// resolves once Redis accepted it.
    pub(super) fn publish_to(
        &self,
        prefix: &str,
        channel: &str,
        payload: Bytes,
        history: Option<HistoryOptions>,
    ) -> Ack {
        self.publish(Message {
            name: format!("{prefix}{channel}"),
            payload,
            history,
        })
    }

    /// Queues a publish now; the future resolves once Redis accepted it.
    pub(super) fn publish(&self, message: Message) -> Ack {
        let (ack, acked) = Ack::later();
        let queued = Queued { message, ack };
        match self.tx.send(queued) {
            Ok(()) => acked,
            Err(_) => Ack::now(Err(BrokerError::Closed)),
        }
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Queued>, mut send: SendBatch) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (messages, acks): (Vec<Message>, Vec<_>) =
            batch.drain(..).map(|q| (q.message, q.ack)).unzip();
        let results = send(messages).await;
        for (ack, result) in acks.into_iter().zip(results) {
            let _ = ack.send(result);
        }
    }
}
