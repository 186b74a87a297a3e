//! Brokers carry published messages between nodes: the embedded in-process broker for a
//! single node, Redis or a Redis Cluster for many.
//!
//! A broker has two handles, made in two steps so that nothing is attached after it is built:
//! [`subscriptions`] makes the queue of subscribe and unsubscribe requests first (the hub
//! holds its sending end), then [`start`] starts the chosen backend with the receiving end and
//! the [`Inbox`] its messages go to (the node's dispatcher, which holds the hub). The hub asks
//! for a channel on every local subscribe (requests are idempotent; a subscribe resolves once
//! the node receives the channel) and releases it when the last local subscriber leaves,
//! always in the order the changes happened. Every backend keeps the same contract, checked
//! by one conformance suite (`tests/e2e/conformance.rs`).
//!
//! Channels with history ([`crate::history`]) are published differently: the backend stores
//! the message, numbers it and publishes it with its position in one atomic step, so that
//! positions follow the order of delivery, and a reader of the history that subscribed first
//! finds every message either in what it read or in what it receives.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

mod batcher;
pub mod memory;
pub mod redis;
pub mod redis_cluster;
mod scripts;

use std::sync::Arc;

use crate::history::{self, HistoryOptions, Position, Query, Read};
use crate::redis_link::RedisTarget;

/// Where a broker hands the messages it receives for this node: the node's fan-out.
///
/// Called on the broker's receiving task, in arrival order, and must not block (the fan-out
/// only queues frames). A call instead of a channel: a queue between the broker and the hub
/// cost a task hand-over per message, and when it filled up the broker had to either stall its
/// Redis connection or drop messages.
pub trait Inbox: Send + Sync + 'static {
    /// A message on `channel` (client-facing name, any prefix removed); `payload` as
    /// published: JSON text for gateway publishers, anything for external ones; `position`
    /// when the channel keeps history and the message was stored.
    fn deliver(&self, channel: &str, payload: &[u8], position: Option<&Position>);
}

/// Hands a Redis message push frame (`[channel, payload]`, from `message` or `smessage`) to
/// `inbox`, if its channel is one of ours: it starts with `prefix` and the rest is UTF-8.
/// A payload in the history envelope is delivered with its position.
pub(crate) fn deliver_push(prefix: &str, inbox: &dyn Inbox, data: &[::redis::Value]) {
    if let [
        ::redis::Value::BulkString(name),
        ::redis::Value::BulkString(payload),
    ] = data
        && let Some(rest) = name.strip_prefix(prefix.as_bytes())
        && let Ok(channel) = std::str::from_utf8(rest)
    {
        match history::open_envelope(payload) {
            Some((position, data)) => inbox.deliver(channel, data, Some(&position)),
            None => inbox.deliver(channel, payload, None),
        }
    }
}

/// A subscription request, in the order the hub made it.
pub enum Request {
    /// Receive this channel (client name); answered once the node receives it, or failed.
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    /// Stop receiving this channel.
    Unsubscribe(String),
}

/// The sending end of a broker's subscription queue: cheap to clone, requests keep their
/// order.
#[derive(Clone)]
pub struct Subscriptions(mpsc::UnboundedSender<Request>);

/// The receiving end, for the backend [`start`] chooses.
pub type Requests = mpsc::UnboundedReceiver<Request>;

/// A new subscription queue.
pub fn subscriptions() -> (Subscriptions, Requests) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Subscriptions(tx), rx)
}

impl Subscriptions {
    /// Makes sure this node receives `channel` (idempotent); resolves once it does. Called in
    /// order with [`Subscriptions::unsubscribe`].
    pub fn subscribe(&self, channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        let (reply, done) = oneshot::channel();
        if self
            .0
            .send(Request::Subscribe(channel.to_owned(), reply))
            .is_err()
        {
            return futures_util::future::ready(Err(BrokerError::Closed)).boxed();
        }
        async move { done.await.unwrap_or(Err(BrokerError::Closed)) }.boxed()
    }

    /// This node no longer needs `channel`.
    pub fn unsubscribe(&self, channel: &str) {
        let _ = self.0.send(Request::Unsubscribe(channel.to_owned()));
    }
}

/// Starts the broker `target` names (none: the embedded one) with the subscription requests
/// of [`subscriptions`]; messages on subscribed channels go to `inbox`. Must be called within
/// a tokio runtime.
pub fn start(
    target: Option<&RedisTarget>,
    prefix: &str,
    node: &str,
    requests: Requests,
    inbox: Arc<dyn Inbox>,
) -> Result<Arc<dyn Broker>, BrokerError> {
    Ok(match target {
        None => Arc::new(memory::MemoryBroker::start(requests, inbox)),
        Some(RedisTarget::Single(url)) => Arc::new(redis::RedisBroker::start(
            url, prefix, node, requests, inbox,
        )?),
        Some(RedisTarget::Cluster(seeds)) => Arc::new(redis_cluster::RedisClusterBroker::start(
            seeds, prefix, node, requests, inbox,
        )?),
    })
}

/// What a broker answers for one publish: the message's position on a channel with
/// history, nothing on one without.
pub type Accepted = Result<Option<Position>, BrokerError>;

/// A publish's acknowledgement: resolves once the broker accepted the message.
///
/// A concrete future rather than a boxed one: a busy connection keeps hundreds of publishes in
/// flight, and boxing each acknowledgement cost an allocation per message.
pub struct Ack(Acked);

enum Acked {
    /// Known when the publish was made (taken on the first poll that returns it).
    Now(Option<Accepted>),
    /// Sent by the broker's task once the message is accepted.
    Later(oneshot::Receiver<Accepted>),
}

impl Ack {
    /// An acknowledgement known at once.
    pub fn now(result: Accepted) -> Self {
        Self(Acked::Now(Some(result)))
    }

    /// An acknowledgement a broker task will send through the returned slot; a dropped slot
    /// reads as [`BrokerError::Closed`].
    pub(crate) fn later() -> (oneshot::Sender<Accepted>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self(Acked::Later(rx)))
    }
}

impl Future for Ack {
    type Output = Accepted;

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

/// A pub/sub backend: where publishes go. Subscriptions go through [`Subscriptions`].
pub trait Broker: Send + Sync + 'static {
    /// Publishes `payload` on `channel`; the [`Ack`] resolves once the broker has accepted it,
    /// or with [`BrokerError::Unavailable`] (within the backend's command timeout, never
    /// acknowledged) when it cannot. Publishes reach the broker in the order of these calls
    /// (the message is handed over before this returns), which is what keeps one connection's
    /// pipelined publishes in order.
    ///
    /// With `history`, the message is stored and numbered in the same atomic step that
    /// publishes it, and the [`Ack`] carries its position.
    fn publish(&self, channel: &str, payload: Bytes, history: Option<HistoryOptions>) -> Ack;

    /// Reads `channel`'s stored messages (at most `limit`, which callers keep to
    /// [`history::MAX_READ`]) with the channel's current position. A channel without stored
    /// history gets its epoch now, so a reader can tell later whether what it saw was lost.
    fn history(
        &self,
        channel: &str,
        query: Query,
        limit: usize,
        history: HistoryOptions,
    ) -> BoxFuture<'static, Result<Read, BrokerError>>;

    /// Whether the broker is connected and every channel the node needs is subscribed.
    fn is_ready(&self) -> bool;

    /// Short backend name for logs and metrics.
    fn kind(&self) -> &'static str;
}
