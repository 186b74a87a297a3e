//! One client connection: reads requests, applies limits, and talks to the hub and broker.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, SplitStream};
use futures_util::{FutureExt, StreamExt};
use serde_json::value::RawValue;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use super::ratelimit::TokenBucket;
use super::writer;
use crate::hub::{ConnId, Group, GroupKey};
use crate::node::{ConnectionSlot, Node};
use crate::outbox::{CloseReason, Outbox, outbox};
use crate::plugins::Identity;
use crate::protocol::{self, Action, ErrorCode, Rejection};

/// Publishes one connection may have waiting for the broker; beyond it the session stops
/// reading until the oldest is accepted, which pushes back on the client through TCP.
const MAX_IN_FLIGHT: usize = 256;

/// A reply the session owes, in request order; `None` for a publish without an id.
type Reply = BoxFuture<'static, Option<protocol::Frame>>;

/// How long a closing session keeps reading, so the client's close reply is consumed and the
/// socket ends cleanly rather than with a reset that could swallow our close frame.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a session until the client leaves or the server closes it.
///
/// A plain function returning the future, with the socket split before it: an `async fn`
/// would keep the unsplit `WebSocket` (hundreds of bytes) in every connection's task for its
/// whole life.
pub fn run(
    socket: WebSocket,
    node: Arc<Node>,
    slot: ConnectionSlot,
    remote: SocketAddr,
    identity: Identity,
) -> impl Future<Output = ()> {
    let span = tracing::info_span!("conn", id = slot.id, %remote, user = identity.user.as_deref());
    let (sink, stream) = socket.split();
    async move {
        tracing::debug!("connected");
        let limits = &node.config.limits;
        let (outbox, rx) = outbox(limits.outbound_queue);
        // Not instrumented: the writer logs nothing, and entering the span on every poll cost
        // ~110 instructions per delivery.
        let writer = tokio::spawn(writer::run(sink, rx));
        let mut session = Session {
            conn: slot.id,
            bucket: TokenBucket::new(limits.publish_rate, limits.publish_burst),
            node: node.clone(),
            outbox,
            subscriptions: HashSet::new(),
            identity,
            pending: Owed::default(),
        };
        let since = crate::presence::now_ms();
        if let Some(user) = &session.identity.user {
            node.presence.connected(session.conn, user, since);
        }
        let ended = session.read(stream, writer).await;
        // Publishes the client sent before it left still reach the broker.
        session.settle_pending().await;
        session.leave_all();
        if let Some(user) = &session.identity.user {
            node.presence.disconnected(session.conn, user, since);
        }
        let closing = session.outbox.closing();
        drop(session);
        match closing {
            Some(CloseReason::ShuttingDown) | None => tracing::debug!(%ended, "disconnected"),
            Some(reason) => {
                if reason == CloseReason::SlowConsumer {
                    metrics::counter!("switchyard_slow_consumer_closes_total").increment(1);
                }
                tracing::info!(reason = reason.text(), "closed by server")
            }
        }
        drop(slot);
    }
    .instrument(span)
}

struct Session {
    node: Arc<Node>,
    conn: ConnId,
    outbox: Outbox,
    subscriptions: HashSet<Arc<str>>,
    bucket: TokenBucket,
    identity: Identity,
    /// Replies owed, oldest first: publishes in flight to the broker and the replies to later
    /// requests, which wait their turn so replies keep request order.
    pending: Owed,
}

/// Replies a session owes, oldest first. Allocates nothing until the first publish: a
/// `FuturesOrdered` costs ~150 bytes on creation, which most (subscribe-only) connections
/// would carry for their whole life.
#[derive(Default)]
struct Owed(Option<FuturesOrdered<Reply>>);

impl Owed {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesOrdered::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(&mut self, reply: Reply) {
        self.0
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(reply);
    }

    /// The oldest reply once it is ready; `None` when nothing is owed.
    async fn next(&mut self) -> Option<Option<protocol::Frame>> {
        match &mut self.0 {
            Some(replies) => replies.next().await,
            None => None,
        }
    }
}

impl Session {
    /// Reads frames until the connection ends; returns why it ended.
    async fn read(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        mut writer: JoinHandle<()>,
    ) -> &'static str {
        let limits = &self.node.config.limits;
        let idle = Duration::from_secs(limits.idle_timeout_secs);
        // The ping timer lives here, not in the writer: the writer wakes for every delivery
        // and polled its timer each time; this task wakes only for the client's frames.
        let ping_every = Duration::from_secs(limits.ping_interval_secs);
        let mut next_ping = (!ping_every.is_zero()).then(|| Instant::now() + ping_every);
        // The waits below live across iterations: re-creating them per frame cost a timer-wheel
        // insert and removal, and a lock on the node-wide shutdown token, for every request.
        // One timer serves the idle deadline and the pings, and it is not moved per frame:
        // when it fires it looks at the time of the last frame and re-arms.
        let wake_at = |next_ping: Option<Instant>, deadline: Instant| {
            next_ping.map_or(deadline, |p| p.min(deadline))
        };
        let mut last_read = Instant::now();
        let timer = sleep_until(wake_at(next_ping, last_read + idle));
        let close_signal = self.outbox.close_signal();
        let closed = close_signal.closed();
        let shutdown = self.node.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(timer, closed, cancelled);
        let ended = loop {
            // Frames and replies come before the shutdown and the timer, which are polled only
            // once nothing else is ready: they cost a lock and a timer poll each time.
            let msg = tokio::select! {
                biased;
                _ = &mut closed => break "closed by server",
                _ = &mut writer => return "write failed",
                Some(reply) = self.pending.next(), if !self.pending.is_empty() => {
                    if let Some(frame) = reply {
                        self.outbox.push(frame);
                    }
                    continue;
                }
                msg = stream.next(), if self.pending.len() < MAX_IN_FLIGHT => msg,
                _ = &mut cancelled => {
                    self.outbox.close(CloseReason::ShuttingDown);
                    break "shutdown";
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    let deadline = last_read + idle;
                    if deadline <= now {
                        self.outbox.close(CloseReason::IdleTimeout);
                        break "idle";
                    }
                    if let Some(at) = next_ping.as_mut().filter(|at| **at <= now) {
                        self.outbox.ping();
                        *at = now + ping_every;
                    }
                    timer.as_mut().reset(wake_at(next_ping, deadline));
                    continue;
                }
            };
            last_read = Instant::now();
            // `handle` is boxed: inline, its state (240 bytes) would be part of every
            // connection's task for its whole life; boxed, it costs an allocation per request.
            match msg {
                Some(Ok(Message::Text(text))) => Box::pin(self.handle(text.as_str())).await,
                Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                    Ok(text) => Box::pin(self.handle(text)).await,
                    Err(_) => self.reject(
                        &Rejection::new(ErrorCode::InvalidJson, "binary frame is not UTF-8 JSON"),
                        None,
                    ),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => return "client closed",
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "read failed");
                    match close_reason(e) {
                        Some(reason) => {
                            self.outbox.close(reason);
                            break "protocol violation";
                        }
                        None => return "read error",
                    }
                }
            }
        };
        // Consume the client's close reply (bounded) so the socket ends cleanly. The session's
        // timer bounds it: a second timer would add its size to every connection's task.
        timer.as_mut().reset(Instant::now() + DRAIN_TIMEOUT);
        let drain = async { while let Some(Ok(_)) = stream.next().await {} };
        tokio::select! {
            _ = drain => {}
            _ = &mut timer => {}
        }
        let _ = writer.await;
        ended
    }

    /// Sends a reply now, or queues it behind the replies still owed.
    fn send(&mut self, frame: protocol::Frame) {
        if self.pending.is_empty() {
            self.outbox.push(frame);
        } else {
            self.pending
                .push_back(futures_util::future::ready(Some(frame)).boxed());
        }
    }

    fn reject(&mut self, rejection: &Rejection, id: Option<&RawValue>) {
        tracing::debug!(code = %rejection.code, message = %rejection.message, "request refused");
        self.send(protocol::error(rejection, id));
    }

    /// Waits for every owed reply and sends it.
    async fn settle_pending(&mut self) {
        while let Some(reply) = self.pending.next().await {
            if let Some(frame) = reply {
                self.outbox.push(frame);
            }
        }
    }

    async fn handle(&mut self, text: &str) {
        let limits = &self.node.config.limits;
        if text.len() > limits.max_message_bytes {
            let rejection = Rejection::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "frame is {} bytes; the limit is {}",
                    text.len(),
                    limits.max_message_bytes
                ),
            );
            return self.reject(&rejection, None);
        }
        let request = match protocol::parse_request(text) {
            Ok(r) => r,
            Err(e) => return self.reject(&e.rejection, e.id),
        };
        let id = request.id;
        let result = match request.action {
            Action::Subscribe { channel } => {
                // Its reply waits for the broker too: keep it behind earlier publishes' replies.
                self.settle_pending().await;
                self.subscribe(&channel, id).await
            }
            Action::Unsubscribe { channel } => self.unsubscribe(&channel, id),
            Action::Publish { channel, data } => self.publish(&channel, data, id),
        };
        if let Err(rejection) = result {
            self.reject(&rejection, id);
        }
    }

    fn check_channel(&self, channel: &str) -> Result<(), Rejection> {
        self.node.check_channel(channel)
    }

    async fn subscribe(&mut self, channel: &str, id: Option<&RawValue>) -> Result<(), Rejection> {
        self.check_channel(channel)?;
        if self.subscriptions.contains(channel) {
            self.send(protocol::subscribed(channel, id));
            return Ok(());
        }
        let max = self.node.config.limits.max_subscriptions;
        if self.subscriptions.len() >= max {
            return Err(Rejection::new(
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {max} subscriptions"),
            ));
        }
        let key = self
            .node
            .plugins
            .current()
            .subscribe(&self.identity, channel)?
            .unwrap_or_default();
        let group: GroupKey = Arc::new(Group {
            tenant: self.identity.tenant.as_deref().map(Arc::from),
            key: Arc::from(key),
        });
        let ready = self
            .node
            .hub
            .subscribe(channel, self.conn, group, &self.outbox);
        if let Err(e) = ready.await {
            self.node.hub.unsubscribe(channel, self.conn);
            return Err(Rejection::new(ErrorCode::Unavailable, e.to_string()));
        }
        self.subscriptions.insert(Arc::from(channel));
        self.node
            .presence
            .joined(self.conn, channel, self.identity.user.as_deref());
        self.send(protocol::subscribed(channel, id));
        Ok(())
    }

    fn unsubscribe(&mut self, channel: &str, id: Option<&RawValue>) -> Result<(), Rejection> {
        self.check_channel(channel)?;
        if self.subscriptions.remove(channel) {
            self.node.hub.unsubscribe(channel, self.conn);
            self.node
                .presence
                .left(self.conn, channel, self.identity.user.as_deref());
        }
        self.send(protocol::unsubscribed(channel, id));
        Ok(())
    }

    /// Starts a publish; its reply is owed until the broker accepted it, and meanwhile the
    /// session reads on.
    fn publish(
        &mut self,
        channel: &str,
        data: &RawValue,
        id: Option<&RawValue>,
    ) -> Result<(), Rejection> {
        self.check_channel(channel)?;
        if !self.bucket.try_take() {
            return Err(Rejection::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} publishes per second",
                    self.node.config.limits.publish_rate
                ),
            ));
        }
        let ack = self
            .node
            .start_publish(&self.identity, channel, data.get())?;
        let id: Option<Box<RawValue>> = id.map(ToOwned::to_owned);
        self.pending.push_back(
            async move {
                match ack.await {
                    Ok(()) => id.map(|id| protocol::published(&id)),
                    Err(rejection) => {
                        tracing::debug!(code = %rejection.code, message = %rejection.message, "publish failed");
                        Some(protocol::error(&rejection, id.as_deref()))
                    }
                }
            }
            .boxed(),
        );
        Ok(())
    }

    fn leave_all(&mut self) {
        for channel in self.subscriptions.drain() {
            self.node.hub.unsubscribe(&channel, self.conn);
            self.node
                .presence
                .left(self.conn, &channel, self.identity.user.as_deref());
        }
    }
}

/// The close a read error calls for, if the connection can still carry one.
fn close_reason(e: axum::Error) -> Option<CloseReason> {
    use tungstenite::error::{Error, ProtocolError};
    match *e.into_inner().downcast::<Error>().ok()? {
        Error::Capacity(_) => Some(CloseReason::FrameTooBig),
        Error::Utf8(_) => Some(CloseReason::InvalidUtf8),
        // The peer is gone: there is nobody to send a close frame to.
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        Error::Protocol(_) => Some(CloseReason::ProtocolError),
        _ => None,
    }
}
