//! Brokers carry published messages between nodes: the embedded in-process broker for a
//! single node, Redis for many.
//!
//! The hub owns reference counts: it calls [`Broker::subscribe`] when a channel gets its
//! first local subscriber and [`Broker::unsubscribe`] when its last one leaves, always in
//! the order the changes happened. Messages come back through the node's [`Inbox`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

pub mod memory;
mod publisher;
pub mod redis;
pub mod redis_cluster;

/// Where a broker hands the messages it receives for this node: the node's fan-out.
///
/// Called on the broker's receiving task, in arrival order, and must not block (the fan-out
/// only queues frames). A call instead of a channel: a queue between the broker and the hub
/// cost a task hand-over per message, and when it filled up the broker had to either stall its
/// Redis connection or drop messages.
pub trait Inbox: Send + Sync + 'static {
    /// A message on `channel` (client-facing name, any prefix removed); `payload` as
    /// published: JSON text for gateway publishers, anything for external ones.
    fn deliver(&self, channel: &str, payload: &[u8]);
}

/// Hands a Redis message push frame (`[channel, payload]`, from `message` or `smessage`) to
/// `inbox`, if its channel is one of ours: it starts with `prefix` and the rest is UTF-8.
pub(crate) fn deliver_push(prefix: &str, inbox: &dyn Inbox, data: &[::redis::Value]) {
    if let [
        ::redis::Value::BulkString(name),
        ::redis::Value::BulkString(payload),
    ] = data
        && let Some(rest) = name.strip_prefix(prefix.as_bytes())
        && let Ok(channel) = std::str::from_utf8(rest)
    {
        inbox.deliver(channel, payload);
    }
}

/// Sends a request built around a reply slot to a broker task; resolves with the task's
/// reply, or `Closed` when the task is gone.
pub(crate) fn ask<T>(
    tx: &mpsc::UnboundedSender<T>,
    request: impl FnOnce(oneshot::Sender<Result<(), BrokerError>>) -> T,
) -> BoxFuture<'static, Result<(), BrokerError>> {
    let (reply, done) = oneshot::channel();
    if tx.send(request(reply)).is_err() {
        return futures_util::future::ready(Err(BrokerError::Closed)).boxed();
    }
    async move { done.await.unwrap_or(Err(BrokerError::Closed)) }.boxed()
}

/// A publish's acknowledgement: resolves once the broker accepted the message.
///
/// A concrete future rather than a boxed one: a busy connection keeps hundreds of publishes in
/// flight, and boxing each acknowledgement cost an allocation per message.
pub struct Ack(Acked);

enum Acked {
    /// Known when the publish was made (taken on the first poll that returns it).
    Now(Option<Result<(), BrokerError>>),
    /// Sent by the broker's task once the message is accepted.
    Later(oneshot::Receiver<Result<(), BrokerError>>),
}

impl Ack {
    /// An acknowledgement known at once.
    pub fn now(result: Result<(), BrokerError>) -> Self {
        Self(Acked::Now(Some(result)))
    }

    /// An acknowledgement a broker task will send through the returned slot; a dropped slot
    /// reads as [`BrokerError::Closed`].
    pub(crate) fn later() -> (oneshot::Sender<Result<(), BrokerError>>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self(Acked::Later(rx)))
    }
}

impl Future for Ack {
    type Output = Result<(), BrokerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Acked::Now(result) => Poll::Ready(result.take().unwrap_or(Err(BrokerError::Closed))),
            Acked::Later(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(BrokerError::Closed))),
        }
    }
}

/// Why a broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker is unreachable right now; the operation was not performed.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker has shut down.
    #[error("broker closed")]
    Closed,
}

/// A pub/sub backend.
pub trait Broker: Send + Sync + 'static {
    /// Publishes `payload` on `channel`; the [`Ack`] resolves once the broker has accepted it.
    /// Publishes reach the broker in the order of these calls (the message is handed over
    /// before this returns), which is what keeps one connection's pipelined publishes in order.
    fn publish(&self, channel: &str, payload: Bytes) -> Ack;

    /// Makes sure this node receives `channel`; resolves once it does. Called in order with
    /// [`Broker::unsubscribe`], for every local subscribe (idempotent).
    fn subscribe(&self, channel: &str) -> BoxFuture<'static, Result<(), BrokerError>>;

    /// This node no longer needs `channel`.
    fn unsubscribe(&self, channel: &str);

    /// Whether the broker is connected and serving.
    fn is_ready(&self) -> bool;

    /// Short backend name for logs and metrics.
    fn kind(&self) -> &'static str;
}
