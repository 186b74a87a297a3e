//! One client connection: reads requests, applies limits, and talks to the hub and broker.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
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

/// How long a closing session keeps reading, so the client's close reply is consumed and the
/// socket ends cleanly rather than with a reset that could swallow our close frame.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a session until the client leaves or the server closes it.
pub async fn run(
    socket: WebSocket,
    node: Arc<Node>,
    slot: ConnectionSlot,
    remote: SocketAddr,
    identity: Identity,
) {
    let span = tracing::info_span!("conn", id = slot.id, %remote, user = identity.user.as_deref());
    async move {
        tracing::debug!("connected");
        let limits = &node.config.limits;
        let (sink, stream) = socket.split();
        let (outbox, rx) = outbox(limits.outbound_queue);
        let ping =
            (limits.ping_interval_secs > 0).then(|| Duration::from_secs(limits.ping_interval_secs));
        let writer = tokio::spawn(writer::run(sink, rx, ping).in_current_span());
        let mut session = Session {
            conn: slot.id,
            bucket: TokenBucket::new(limits.publish_rate, limits.publish_burst),
            node: node.clone(),
            outbox,
            subscriptions: HashSet::new(),
            identity,
        };
        let since = crate::presence::now_ms();
        if let Some(user) = &session.identity.user {
            node.presence.connected(session.conn, user, since);
        }
        let ended = session.read(stream, writer).await;
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
    .await;
}

struct Session {
    node: Arc<Node>,
    conn: ConnId,
    outbox: Outbox,
    subscriptions: HashSet<Arc<str>>,
    bucket: TokenBucket,
    identity: Identity,
}

impl Session {
    /// Reads frames until the connection ends; returns why it ended.
    async fn read(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        mut writer: JoinHandle<()>,
    ) -> &'static str {
        let idle = Duration::from_secs(self.node.config.limits.idle_timeout_secs);
        let mut deadline = Instant::now() + idle;
        let shutdown = self.node.shutdown.clone();
        let ended = loop {
            let msg = tokio::select! {
                biased;
                _ = self.outbox.closed() => break "closed by server",
                _ = &mut writer => return "write failed",
                _ = shutdown.cancelled() => {
                    self.outbox.close(CloseReason::ShuttingDown);
                    break "shutdown";
                }
                _ = sleep_until(deadline) => {
                    self.outbox.close(CloseReason::IdleTimeout);
                    break "idle";
                }
                msg = stream.next() => msg,
            };
            deadline = Instant::now() + idle;
            match msg {
                Some(Ok(Message::Text(text))) => self.handle(text.as_str()).await,
                Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                    Ok(text) => self.handle(text).await,
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
        // Consume the client's close reply (bounded) so the socket ends cleanly.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
        let _ = writer.await;
        ended
    }

    fn send(&self, frame: protocol::Frame) {
        self.outbox.push(frame);
    }

    fn reject(&self, rejection: &Rejection, id: Option<&RawValue>) {
        tracing::debug!(code = %rejection.code, message = %rejection.message, "request refused");
        self.send(protocol::error(rejection, id));
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
            Action::Subscribe { channel } => self.subscribe(&channel, id).await,
            Action::Unsubscribe { channel } => self.unsubscribe(&channel, id),
            Action::Publish { channel, data } => self.publish(&channel, data, id).await,
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

    async fn publish(
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
        self.node
            .publish(&self.identity, channel, data.get())
            .await?;
        if let Some(id) = id {
            self.send(protocol::published(id));
        }
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
