//! One client connection: reads requests, applies limits, and talks to the hub and broker.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use tokio::time::{Instant, Sleep, sleep_until};
use tracing::Span;
use tungstenite::Message;

use super::handshake::WebSocket;
use super::lanes::Lane;
use super::link::{Link, Stop};
use super::outbox::Outbox;
use super::ratelimit::TokenBucket;
use super::recovery::{self, CatchUp};
use super::socket::Peer;
use crate::auth::Grant;
use crate::broker::BrokerError;
use crate::commands::Command;
use crate::history::Position;
use crate::hub::{ConnId, Sink};
use crate::identity::Identity;
use crate::membership::{self, Change};
use crate::node::ConnectionSlot;
use crate::protocol::CloseReason;
use crate::protocol::{self, Action, ErrorCode, Rejection};
use crate::publish::PublishAck;

/// Publishes one connection may have waiting for the broker; beyond it the session stops
/// reading until the oldest is accepted, which pushes back on the client through TCP.
const MAX_IN_FLIGHT: usize = 256;
/// Owed-reply slots a session keeps allocated once all are sent: a burst of publishes grows
/// the queue to up to [`MAX_IN_FLIGHT`] replies (~20 KiB), which should not stay with the
/// connection for its whole life.
const KEEP_OWED: usize = 16;

/// How long a close frame may take to leave before the socket is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a closing session keeps reading, so the client's close reply is consumed and the
/// socket ends cleanly rather than with a reset that could swallow our close frame.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a session until the client leaves or the server closes it.
///
/// A plain function returning the future, with the session and its link built before it:
/// what an `async fn` takes as arguments stays in its task for the task's whole life, and
/// moving it into a local there would hold it twice. The future is not instrumented with
/// the connection's span: it is polled for every delivery, and entering the span costs ~110
/// instructions each time; requests and the session's own log lines enter it.
pub fn run(
    socket: WebSocket,
    slot: ConnectionSlot,
    peer: Peer,
    identity: Arc<Identity>,
    grant: Option<Arc<Grant>>,
    lane: Arc<Lane>,
) -> impl Future<Output = ()> {
    let remote = peer.remote;
    let span = tracing::info_span!("conn", id = slot.id, %remote, user = identity.user.as_deref());
    let limits = &slot.node.config.limits;
    let (outbox, rx) = Outbox::new(peer.socket, lane);
    let bucket = TokenBucket::new(limits.publish_burst);
    slot.node
        .connections
        .register(slot.id, outbox.sink(), identity.clone(), grant.clone());
    let mut link = Link::new(socket, rx);
    let mut session = Session {
        bucket,
        outbox,
        subscriptions: Subscriptions::default(),
        resyncs: None,
        identity,
        grant,
        pending: Owed::default(),
        span,
        slot,
    };
    async move {
        session.span.in_scope(|| tracing::debug!("connected"));
        let since = crate::clock::now_ms();
        if let Some(user) = &session.identity.user {
            session
                .slot
                .node
                .presence
                .connected(session.conn(), user, since);
        }
        let ended = session.serve(&mut link).await;
        // Frames pushed from now on are refused rather than queued for nobody.
        drop(link);
        // Publishes the client sent before it left still reach the broker.
        session.settle_pending().await;
        session.leave_all();
        if let Some(user) = &session.identity.user {
            session
                .slot
                .node
                .presence
                .disconnected(session.conn(), user, since);
        }
        let closing = session.outbox.closing();
        session.span.in_scope(|| match closing {
            Some(CloseReason::ShuttingDown) | None => tracing::debug!(%ended, "disconnected"),
            Some(reason) => {
                if reason == CloseReason::SlowConsumer {
                    metrics::counter!("switchyard_slow_consumer_closes_total").increment(1);
                }
                tracing::info!(reason = reason.text(), "closed by server")
            }
        });
        // Releases the connection's slot last.
        drop(session);
    }
}

struct Session {
    outbox: Outbox,
    subscriptions: Subscriptions,
    bucket: TokenBucket,
    /// Shared by every anonymous connection (see [`Identity::shared`]).
    identity: Arc<Identity>,
    /// What the connection's token grants (`None` without a token): the session closes it at
    /// `exp` unless the client refreshes.
    grant: Option<Arc<Grant>>,
    /// Replies owed, oldest first: publishes in flight to the broker and the replies to later
    /// requests, which wait their turn so replies keep request order.
    pending: Owed,
    /// Subscriptions with history waiting to catch up after a deliver hook failed
    /// (`ws::recovery`); created with the first such subscription.
    resyncs: Option<Arc<recovery::Pending>>,
    /// The connection's span, entered around requests and log lines.
    span: Span,
    /// The connection's node, id and place in the node's count; last, so it is released last.
    slot: ConnectionSlot,
}

/// Replies a session owes, oldest first. Only the oldest is polled: replies leave in request
/// order anyway, and the broker acknowledges a batch of publishes at once, so the session is
/// woken once per batch rather than once per publish. Allocates nothing until the first
/// publish, and boxed: most connections only subscribe, and their tasks then hold one pointer
/// instead of a `VecDeque`'s 32 bytes.
#[derive(Default)]
#[expect(
    clippy::box_collection,
    reason = "one pointer in every connection's task instead of 32 bytes"
)]
struct Owed(Option<Box<VecDeque<Reply>>>);

/// A reply the session owes.
enum Reply {
    /// A reply that is ready but must wait for the publishes before it (taken when sent).
    Ready(Option<protocol::Frame>),
    /// A publish in flight to the broker, with the request's id if it had one.
    Publish(PublishAck, Option<Box<RawValue>>),
}

impl Reply {
    /// The frame to send once this reply is settled; `None` when there is nothing to send
    /// (a publish without an id).
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<protocol::Frame>> {
        match self {
            Reply::Ready(frame) => Poll::Ready(frame.take()),
            Reply::Publish(ack, id) => Pin::new(ack).poll(cx).map(|result| match result {
                Ok(position) => id
                    .as_deref()
                    .map(|id| protocol::published(id, position.as_ref())),
                Err(rejection) => {
                    tracing::debug!(code = %rejection.code, message = %rejection.message, "publish failed");
                    Some(protocol::error(&rejection, id.as_deref()))
                }
            }),
        }
    }
}

impl Owed {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |replies| replies.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(&mut self, reply: Reply) {
        self.0.get_or_insert_default().push_back(reply);
    }

    /// Sends every reply that is ready, oldest first, up to the first one that is not (whose
    /// waker is then registered); returns whether it sent any.
    fn send_ready(&mut self, cx: &mut Context<'_>, outbox: &Outbox) -> bool {
        let Some(replies) = &mut self.0 else {
            return false;
        };
        let mut sent = false;
        while let Some(oldest) = replies.front_mut() {
            let Poll::Ready(frame) = oldest.poll_frame(cx) else {
                break;
            };
            replies.pop_front();
            if let Some(frame) = frame {
                outbox.push_reply(frame);
            }
            sent = true;
        }
        if replies.is_empty() && replies.capacity() > KEEP_OWED {
            replies.shrink_to(KEEP_OWED);
        }
        sent
    }
}

/// The channels a connection is subscribed to, sorted: a `HashSet` held 48 bytes in the
/// task and ~84 on the heap for a single channel. `limits.max_subscriptions` bounds the list.
#[derive(Default)]
struct Subscriptions(Vec<Arc<str>>);

impl Subscriptions {
    fn find(&self, channel: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|c| (**c).cmp(channel))
    }

    fn contains(&self, channel: &str) -> bool {
        self.find(channel).is_ok()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn insert(&mut self, channel: &str) {
        if let Err(at) = self.find(channel) {
            // Room for exactly one at first: most connections hold one channel.
            if self.0.capacity() == 0 {
                self.0.reserve_exact(1);
            }
            self.0.insert(at, Arc::from(channel));
        }
    }

    /// Whether `channel` was there.
    fn remove(&mut self, channel: &str) -> bool {
        self.find(channel).map(|at| self.0.remove(at)).is_ok()
    }
}

/// Who asked for a subscription.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// The client.
    Client,
    /// The backend API, through the subscribe hook.
    Server,
    /// The backend API, without the subscribe hook.
    ServerWithoutHook,
}

/// What a connection's token calls for next.
#[derive(Clone, Copy)]
struct Expiry {
    /// The `expiring` frame (else the close).
    warn: bool,
    at: Instant,
}

/// What woke the session.
enum Event {
    /// The link stopped writing.
    Stop(Stop),
    /// Owed replies were sent (the link has frames to write).
    Replied,
    /// A frame from the client, or the end of the stream.
    Frame(Option<Result<Message, tungstenite::Error>>),
    /// Commands wait in the node's registry.
    Mail,
    Timer,
}

impl Session {
    /// Serves the connection until it ends; returns why it ended.
    async fn serve(&mut self, link: &mut Link) -> &'static str {
        let mut next_ping = self.ping_every().map(|every| Instant::now() + every);
        // The `expiring` frame was sent for the token the connection holds now.
        let mut warned = false;
        let wake_at = |next_ping: Option<Instant>, deadline: Instant, expiry: Option<Expiry>| {
            let at = next_ping.map_or(deadline, |p| p.min(deadline));
            expiry.map_or(at, |e| at.min(e.at))
        };
        let mut last_read = Instant::now();
        // The timer lives across iterations: re-creating it per frame cost a timer-wheel
        // insert and removal for every request. It serves the idle deadline, the pings and
        // the close; it is not moved per frame: when it fires it looks at the time of the last
        // frame and re-arms. (Shutdown reaches the session through its outbox: see
        // `ConnectionSlot::register`.)
        let timer = sleep_until(wake_at(
            next_ping,
            last_read + self.idle_timeout(),
            self.expiry(warned, Instant::now()),
        ));
        tokio::pin!(timer);
        let ended = loop {
            let event = std::future::poll_fn(|cx| self.poll_event(cx, link, timer.as_mut())).await;
            let msg = match event {
                Event::Stop(Stop::Close(_)) => break "closed by server",
                Event::Stop(Stop::Failed) => return "write failed",
                Event::Replied => continue,
                Event::Mail => {
                    if let Err(reason) = Box::pin(self.resync()).await {
                        self.outbox.close(reason);
                        continue;
                    }
                    let Some((code, text)) = Box::pin(self.read_mail()).await else {
                        continue;
                    };
                    // The backend's reason is sent unless another close came first.
                    let ours = CloseReason::Disconnected(code);
                    self.outbox.close(ours);
                    let reason = self.outbox.closing().unwrap_or(ours);
                    let text = (reason == ours).then_some(text);
                    Box::pin(close(link, timer.as_mut(), reason, text.as_deref())).await;
                    return "disconnected by server";
                }
                Event::Frame(msg) => msg,
                Event::Timer => {
                    let now = Instant::now();
                    let deadline = last_read + self.idle_timeout();
                    if deadline <= now {
                        self.outbox.close(CloseReason::IdleTimeout);
                        break "idle";
                    }
                    match self.expiry(warned, now) {
                        Some(e) if e.at > now => {}
                        Some(Expiry { warn: false, .. }) => {
                            self.outbox.close(CloseReason::TokenExpired);
                            break "token expired";
                        }
                        Some(Expiry { warn: true, .. }) => {
                            self.warn_expiry();
                            warned = true;
                        }
                        None => {}
                    }
                    if let Some(at) = next_ping.as_mut().filter(|at| **at <= now) {
                        link.ping();
                        *at = now + self.ping_every().unwrap_or_default();
                    }
                    timer
                        .as_mut()
                        .reset(wake_at(next_ping, deadline, self.expiry(warned, now)));
                    continue;
                }
            };
            last_read = Instant::now();
            let expires = self.grant.as_ref().map(|g| g.expires);
            // Requests and the close paths below are boxed: inline, their state would be part
            // of every connection's task for its whole life (serve's future: 776 -> 448
            // bytes); boxed, a request costs one allocation.
            match msg {
                Some(Ok(Message::Text(text))) => {
                    Box::pin(self.handle_while_writing(text.as_str(), link)).await;
                }
                Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                    Ok(text) => Box::pin(self.handle_while_writing(text, link)).await,
                    Err(_) => {
                        let rejection = Rejection::new(
                            ErrorCode::InvalidJson,
                            "binary frame is not UTF-8 JSON",
                        );
                        self.reject(&rejection, None);
                    }
                },
                // Raw frames are never read back; only sending produces them.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    // Sends tungstenite's reply to the client's close frame.
                    Box::pin(bounded(timer.as_mut(), CLOSE_TIMEOUT, link.flush())).await;
                    return "client closed";
                }
                Some(Err(e)) => {
                    self.span
                        .in_scope(|| tracing::debug!(error = %e, "read failed"));
                    match close_reason(e) {
                        Some(reason) => {
                            self.outbox.close(reason);
                            break "protocol violation";
                        }
                        None => return "read error",
                    }
                }
            }
            if self.grant.as_ref().map(|g| g.expires) != expires {
                // Refreshed: a new deadline, and a new warning before it.
                warned = false;
                let deadline = last_read + self.idle_timeout();
                timer
                    .as_mut()
                    .reset(wake_at(next_ping, deadline, self.expiry(warned, last_read)));
            }
        };
        if let Some(reason) = self.outbox.closing() {
            // Boxed, as requests are (see above).
            Box::pin(close(link, timer.as_mut(), reason, None)).await;
        }
        ended
    }

    /// What woke the session, in order: the link (it writes whatever the outbox holds on every
    /// wake-up), then, if one of them fired, the owed replies, the client's frames and the
    /// timer.
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        link: &mut Link,
        mut timer: Pin<&mut Sleep>,
    ) -> Poll<Event> {
        if let Poll::Ready(stop) = link.poll_write(cx) {
            return Poll::Ready(Event::Stop(stop));
        }
        // Woken through the outbox, as for a close.
        if self.outbox.take_mail() {
            return Poll::Ready(Event::Mail);
        }
        let (pending, outbox) = (&mut self.pending, &self.outbox);
        link.poll_others(cx, |ws, room, cx| {
            if pending.send_ready(cx, outbox) {
                return Poll::Ready(Event::Replied);
            }
            // Requests are read only while their replies fit: a client that pipelines more
            // than it reads is slowed down through TCP rather than closed.
            if room
                && pending.len() < MAX_IN_FLIGHT
                && let Poll::Ready(msg) = ws.poll_next_unpin(cx)
            {
                return Poll::Ready(Event::Frame(msg));
            }
            timer.as_mut().poll(cx).map(|()| Event::Timer)
        })
    }

    /// Handles one request while the link goes on writing: a subscribe waits for the broker,
    /// and deliveries on other channels must not wait with it. If the link stops meanwhile,
    /// the request is still finished (a half-done subscribe would leave the hub holding a
    /// connection the session does not know it has); the main loop sees the stop next.
    async fn handle_while_writing(&mut self, text: &str, link: &mut Link) {
        let span = self.span.clone();
        let handling = self.handle(text);
        tokio::pin!(handling);
        std::future::poll_fn(|cx| {
            let _ = link.poll_write(cx);
            span.in_scope(|| handling.as_mut().poll(cx))
        })
        .await;
        link.request_handled();
    }

    fn conn(&self) -> ConnId {
        self.slot.id
    }

    /// `limits.idle_timeout_secs`; read when needed rather than kept in every task.
    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.slot.node.config.limits.idle_timeout_secs)
    }

    /// What the connection's token calls for next, and when (`now` at the earliest): the
    /// `expiring` frame (unless `warned`, or warnings are off), then the close at `exp` plus
    /// the leeway.
    fn expiry(&self, warned: bool, now: Instant) -> Option<Expiry> {
        let grant = self.grant.as_ref()?;
        let auth = &self.slot.node.auth;
        let warn_before = auth.warning_secs();
        let (warn, at_secs) = if !warned && warn_before > 0 {
            (true, grant.expires.saturating_sub(warn_before))
        } else {
            (false, grant.expires.saturating_add(auth.leeway_secs()))
        };
        let wait = at_secs
            .saturating_mul(1000)
            .saturating_sub(crate::clock::now_ms());
        Some(Expiry {
            warn,
            at: now + Duration::from_millis(wait),
        })
    }

    /// Sends the `expiring` frame for the connection's token.
    fn warn_expiry(&mut self) {
        if let Some(grant) = &self.grant {
            let left = (grant.expires.saturating_mul(1000))
                .saturating_sub(crate::clock::now_ms())
                .div_ceil(1000);
            let frame = protocol::expiring(grant.expires, left);
            self.send(frame);
        }
    }

    /// Applies the commands waiting for this connection, in order; a disconnect ends it (its
    /// code and reason are returned) and what follows it is dropped.
    async fn read_mail(&mut self) -> Option<(u16, String)> {
        let node = self.slot.node.clone();
        for command in node.connections.take_mail(self.conn()) {
            match command {
                Command::Disconnect { code, reason, .. } => return Some((code, reason)),
                Command::Unsubscribe { channel, .. } => {
                    if self.subscriptions.contains(&channel) {
                        self.leave(&channel);
                        self.send(protocol::unsubscribed_by_server(&channel));
                    }
                }
                Command::Subscribe { channel, hook, .. } => {
                    let asked = match hook {
                        true => Asked::Server,
                        false => Asked::ServerWithoutHook,
                    };
                    self.settle_pending().await;
                    if let Err(r) = self.subscribe(&channel, None, None, asked).await {
                        self.span.in_scope(|| {
                            tracing::debug!(%channel, code = %r.code, message = %r.message, "server-side subscribe refused")
                        });
                    }
                }
                Command::Revoke(_) => {}
            }
        }
        None
    }

    /// Catches up the subscriptions whose deliver hook failed on a live message: from
    /// history, after the last message before it, as a recovery does but without a reply.
    /// When history cannot give it (gone, or the hook fails again), the connection is closed
    /// for the client to reconnect and recover, which reports what could not be recovered.
    async fn resync(&mut self) -> Result<(), CloseReason> {
        let Some(pending) = self.resyncs.clone() else {
            return Ok(());
        };
        let node = self.slot.node.clone();
        for held in pending.take() {
            let Some(after) = held.take_resume() else {
                continue;
            };
            let sub = held.subscription();
            let started = recovery::catch_up(
                &node.replay,
                &self.outbox,
                &held,
                &sub.channel,
                &sub.group,
                Some(&after),
                sub.options,
                |_| None,
            )
            .await;
            let channel = &*sub.channel;
            match started {
                Ok(start) if start.recovered != Some(false) => {
                    metrics::counter!("switchyard_resyncs_total", "result" => "caught_up")
                        .increment(1);
                }
                Ok(_) => {
                    metrics::counter!("switchyard_resyncs_total", "result" => "lost").increment(1);
                    self.span.in_scope(|| tracing::info!(%channel, "history no longer holds what a failed deliver hook withheld; closing for the client to recover"));
                    return Err(CloseReason::Behind);
                }
                Err(r) => {
                    metrics::counter!("switchyard_resyncs_total", "result" => "failed")
                        .increment(1);
                    self.span.in_scope(|| tracing::info!(%channel, code = %r.code, message = %r.message, "catch-up after a failed deliver hook failed; closing for the client to recover"));
                    return Err(CloseReason::Behind);
                }
            }
        }
        Ok(())
    }

    /// Answers a `refresh` request: a token that passes moves the connection's deadline; a
    /// refused one leaves it where it was.
    fn refresh(&mut self, token: &str, id: Option<&RawValue>) -> Result<(), Rejection> {
        if self.grant.is_none() {
            return Err(Rejection::new(
                ErrorCode::Unauthorized,
                "the connection was not opened with a token; there is nothing to refresh",
            ));
        }
        let grant = self
            .slot
            .node
            .auth
            .refresh(token, &self.identity)
            .and_then(
                |grant| match self.slot.node.allows(&self.identity, &grant) {
                    true => Ok(grant),
                    false => Err(crate::auth::AuthError::Revoked),
                },
            )
            .map_err(|e| Rejection::new(ErrorCode::Unauthorized, e.to_string()))?;
        let expires = grant.expires;
        let grant = Arc::new(grant);
        self.slot
            .node
            .connections
            .set_grant(self.conn(), grant.clone());
        self.grant = Some(grant);
        self.span
            .in_scope(|| tracing::debug!(expires, "token refreshed"));
        self.send(protocol::refreshed(id, expires));
        Ok(())
    }

    /// `limits.ping_interval_secs`, `None` when pings are off.
    fn ping_every(&self) -> Option<Duration> {
        let every = Duration::from_secs(self.slot.node.config.limits.ping_interval_secs);
        (!every.is_zero()).then_some(every)
    }

    /// Sends a reply now, or queues it behind the replies still owed.
    fn send(&mut self, frame: protocol::Frame) {
        if self.pending.is_empty() {
            self.outbox.push_reply(frame);
        } else {
            self.pending.push_back(Reply::Ready(Some(frame)));
        }
    }

    fn reject(&mut self, rejection: &Rejection, id: Option<&RawValue>) {
        tracing::debug!(code = %rejection.code, message = %rejection.message, "request refused");
        self.send(protocol::error(rejection, id));
    }

    /// Waits for every owed reply and sends it.
    async fn settle_pending(&mut self) {
        std::future::poll_fn(|cx| {
            self.pending.send_ready(cx, &self.outbox);
            if self.pending.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    async fn handle(&mut self, text: &str) {
        let limits = &self.slot.node.config.limits;
        if text.len() > limits.max_message_bytes {
            let rejection = Rejection::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "frame is {} bytes; the limit is {}",
                    text.len(),
                    limits.max_message_bytes
                ),
            );
            return self.reject(&rejection, protocol::request_id(text));
        }
        let request = match protocol::parse_request(text) {
            Ok(r) => r,
            Err(e) => return self.reject(&e.rejection, e.id),
        };
        let id = request.id;
        let result = match request.action {
            Action::Subscribe { channel, since } => {
                // Its reply waits for the broker too: keep it behind earlier publishes' replies.
                self.settle_pending().await;
                self.subscribe(&channel, since.as_ref(), id, Asked::Client)
                    .await
            }
            Action::Unsubscribe { channel } => self.unsubscribe(&channel, id),
            Action::Publish { channel, data } => self.publish(&channel, data, id),
            Action::History {
                channel,
                limit,
                since,
            } => {
                self.settle_pending().await;
                self.history(&channel, limit, since.as_ref(), id).await
            }
            Action::Refresh { token } => self.refresh(&token, id),
        };
        if let Err(rejection) = result {
            self.reject(&rejection, id);
        }
    }

    fn check_channel(&self, channel: &str) -> Result<(), Rejection> {
        self.slot.node.publisher.check_channel(channel)
    }

    async fn subscribe(
        &mut self,
        channel: &str,
        since: Option<&Position>,
        id: Option<&RawValue>,
        asked: Asked,
    ) -> Result<(), Rejection> {
        self.check_channel(channel)?;
        let node = self.slot.node.clone();
        let history = node.replay.options(channel);
        let by_server = asked != Asked::Client;
        if self.subscriptions.contains(channel) && since.is_none() && history.is_none() {
            self.send(match by_server {
                true => protocol::subscribed_by_server(channel, None),
                false => protocol::subscribed(channel, id),
            });
            return Ok(());
        }
        let max = node.config.limits.max_subscriptions;
        let new = !self.subscriptions.contains(channel);
        if new && self.subscriptions.len() >= max {
            return Err(Rejection::new(
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {max} subscriptions"),
            ));
        }
        let plugins = node.plugins.current();
        let group = match asked {
            Asked::ServerWithoutHook => plugins.group_of(&self.identity),
            Asked::Client | Asked::Server => plugins.subscribe(&self.identity, channel)?,
        };
        drop(plugins);
        let Some(options) = history else {
            let ready = node
                .hub
                .subscribe(channel, self.conn(), group, &self.outbox.sink());
            self.went_live(channel, ready).await?;
            let reply = match since {
                _ if by_server => protocol::subscribed_by_server(channel, None),
                // Nothing to recover from: the channel keeps no history.
                Some(_) => protocol::subscribed_without_history(channel, id),
                None => protocol::subscribed(channel, id),
            };
            self.send(reply);
            if new {
                self.announce(channel, Change::Join);
            }
            return Ok(());
        };
        // Live deliveries go to a sink that holds them while history is read and sent, then
        // releases them without the ones history already covered (ws::recovery).
        let pending = self.resyncs.get_or_insert_with(Default::default).clone();
        let resync = recovery::Resync {
            channel: Arc::from(channel),
            group: group.clone(),
            options,
            pending,
        };
        let held = CatchUp::new(self.outbox.sink(), self.outbox.capacity(), resync);
        let sink: Arc<dyn Sink> = held.clone();
        let ready = node
            .hub
            .subscribe(channel, self.conn(), group.clone(), &sink);
        self.went_live(channel, ready).await?;
        let start = recovery::catch_up(
            &node.replay,
            &self.outbox,
            &held,
            channel,
            &group,
            since,
            options,
            // Queued by the catch-up before it releases live deliveries; no reply is owed
            // before it (they were settled before the subscribe).
            |start| {
                Some(match by_server {
                    true => protocol::subscribed_by_server(channel, Some(&start.position)),
                    false => protocol::subscribed_at(channel, id, &start.position, start.recovered),
                })
            },
        )
        .await;
        match start {
            Ok(_) => {
                if new {
                    self.announce(channel, Change::Join);
                }
                Ok(())
            }
            Err(rejection) => {
                // A subscription that never started was never announced.
                if self.subscriptions.remove(channel) {
                    self.left(channel, !new);
                }
                Err(rejection)
            }
        }
    }

    /// Waits for the broker to deliver `channel` after a hub subscribe, and records the
    /// subscription; on failure the subscription is gone, whether it was held before or not.
    async fn went_live(
        &mut self,
        channel: &str,
        ready: BoxFuture<'static, Result<(), BrokerError>>,
    ) -> Result<(), Rejection> {
        if let Err(e) = ready.await {
            // A subscription held before is ended too: the hub already moved it to the new
            // sink, which would never be released.
            if self.subscriptions.contains(channel) {
                self.leave(channel);
            } else {
                self.slot.node.hub.unsubscribe(channel, self.conn());
            }
            return Err(Rejection::new(ErrorCode::Unavailable, e.to_string()));
        }
        if !self.subscriptions.contains(channel) {
            self.subscriptions.insert(channel);
            self.slot
                .node
                .presence
                .joined(self.conn(), channel, self.identity.user.as_deref());
        }
        Ok(())
    }

    /// Ends the subscription to `channel` if there is one.
    fn leave(&mut self, channel: &str) {
        if self.subscriptions.remove(channel) {
            self.left(channel, true);
        }
    }

    /// Tells the hub, presence and (if `announce`) the channel's subscribers that a
    /// subscription ended.
    fn left(&self, channel: &str, announce: bool) {
        self.slot.node.hub.unsubscribe(channel, self.conn());
        self.slot
            .node
            .presence
            .left(self.conn(), channel, self.identity.user.as_deref());
        if announce {
            self.announce(channel, Change::Leave);
        }
    }

    /// Announces a subscription of this connection starting or ending, on a channel whose
    /// namespace has join/leave events: after the `subscribed` reply (so the subscriber's
    /// own join follows it), after leaving the hub (so a leaver does not get its own leave).
    fn announce(&self, channel: &str, change: Change) {
        self.slot
            .node
            .publisher
            .announce(channel, || membership::Event::of(change, &self.identity));
    }

    /// Answers a `history` request.
    async fn history(
        &mut self,
        channel: &str,
        limit: Option<u64>,
        since: Option<&Position>,
        id: Option<&RawValue>,
    ) -> Result<(), Rejection> {
        self.check_channel(channel)?;
        let node = self.slot.node.clone();
        let answer = node
            .replay
            .request(&self.identity, channel, limit, since)
            .await?;
        self.send(answer.frame(channel, id));
        Ok(())
    }

    fn unsubscribe(&mut self, channel: &str, id: Option<&RawValue>) -> Result<(), Rejection> {
        self.check_channel(channel)?;
        self.leave(channel);
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
        let limits = &self.slot.node.config.limits;
        if !self
            .bucket
            .try_take(limits.publish_rate, limits.publish_burst)
        {
            return Err(Rejection::new(
                ErrorCode::RateLimited,
                format!("more than {} publishes per second", limits.publish_rate),
            ));
        }
        let ack = self
            .slot
            .node
            .publisher
            .start(&self.identity, channel, data.get())?;
        self.pending
            .push_back(Reply::Publish(ack, id.map(ToOwned::to_owned)));
        Ok(())
    }

    fn leave_all(&mut self) {
        for channel in std::mem::take(&mut self.subscriptions).0 {
            self.left(&channel, true);
        }
    }
}

/// Runs `work` for at most `limit`, on the session's timer: a second timer would add its size
/// to every connection's task.
async fn bounded<T>(
    mut timer: Pin<&mut Sleep>,
    limit: Duration,
    work: impl Future<Output = T>,
) -> Option<T> {
    timer.as_mut().reset(Instant::now() + limit);
    tokio::select! {
        biased;
        done = work => Some(done),
        () = timer => None,
    }
}

/// Sends the close frame (with `text` instead of the reason's own, when given), then
/// consumes the client's close reply (bounded) so the socket ends cleanly.
async fn close(
    link: &mut Link,
    mut timer: Pin<&mut Sleep>,
    reason: CloseReason,
    text: Option<&str>,
) {
    if bounded(timer.as_mut(), CLOSE_TIMEOUT, link.close(reason, text))
        .await
        .is_some()
    {
        bounded(timer.as_mut(), DRAIN_TIMEOUT, link.drain()).await;
    }
}

/// The close a read error calls for, if the connection can still carry one.
pub(super) fn close_reason(e: tungstenite::Error) -> Option<CloseReason> {
    use tungstenite::error::{Error, ProtocolError};
    match e {
        Error::Capacity(_) => Some(CloseReason::FrameTooBig),
        Error::Utf8(_) => Some(CloseReason::InvalidUtf8),
        // The peer is gone: there is nobody to send a close frame to.
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        Error::Protocol(_) => Some(CloseReason::ProtocolError),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::Subscriptions;

    #[test]
    fn subscriptions_stay_sorted_and_unique() {
        let mut subs = Subscriptions::default();
        for channel in ["news", "chat:b", "chat:a", "news", "zeta"] {
            subs.insert(channel);
        }
        let held: Vec<&str> = subs.0.iter().map(|c| &**c).collect();
        assert_eq!(held, ["chat:a", "chat:b", "news", "zeta"]);
        assert!(subs.contains("chat:b") && !subs.contains("chat"));
        assert!(subs.remove("news"));
        assert!(!subs.remove("news"));
        assert_eq!(subs.len(), 3);
    }
}
