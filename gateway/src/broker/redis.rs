//! The Redis broker: nodes fan out through Redis pub/sub.
//!
//! Wire format: a client channel `C` is the Redis channel `<prefix>C`, and the message is the
//! publish's `data` as JSON text, nothing else — so `PUBLISH <prefix>C '<json>'` from any
//! backend reaches `C`'s WebSocket subscribers, and the format matches the classic Node
//! `ws` + Redis servers'.
//!
//! One subscriber connection per node, owned by one task that applies SUBSCRIBE/UNSUBSCRIBE in
//! the order the hub asked for them and keeps the set of channels the node needs. When the
//! connection drops (or stops answering pings) the task reconnects with capped backoff for as
//! long as it takes and subscribes the whole set again, so clients never notice beyond the
//! messages published during the gap. Publishes use a separate multiplexed connection that
//! reconnects on its own; while Redis is unreachable they fail fast with `Unavailable`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use tokio::sync::{Notify, oneshot};

use futures_util::future::BoxFuture;

use super::batcher::{Batcher, Message};
use super::scripts::{self, Publish};
use super::{Accepted, Ack, Broker, BrokerError, Inbox, Request, Requests, deliver_push};
use crate::history::{self, HistoryOptions, Query, Read};
use crate::redis_link::{COMMAND_TIMEOUT, bounded};
/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Connect and command timeout: a Redis that does not answer within it counts as down.
const TIMEOUT: Duration = COMMAND_TIMEOUT;
/// How often the idle subscriber connection is pinged to detect a silent failure.
const PING_EVERY: Duration = Duration::from_secs(3);

/// Pub/sub through one Redis server.
pub struct RedisBroker {
    batcher: Batcher,
    /// The publishing connection, also used for history reads.
    reader: ConnectionManager,
    prefix: Arc<str>,
    connected: Arc<AtomicBool>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("redis: {e}"))
}

impl RedisBroker {
    /// Starts the broker's connections (lazily: a Redis that is down at start is retried like
    /// any outage), serving `requests`; messages on subscribed channels go to `inbox`. Must be
    /// called within a tokio runtime.
    pub fn start(
        url: &str,
        prefix: &str,
        node: &str,
        requests: Requests,
        inbox: Arc<dyn Inbox>,
    ) -> Result<Self, BrokerError> {
        let bad_url =
            |e: redis::RedisError| BrokerError::Unavailable(format!("bad redis url: {e}"));
        let client = redis::Client::open(url).map_err(bad_url)?;
        let info = url.into_connection_info().map_err(bad_url)?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let subscriber_client =
            redis::Client::open(info.set_redis_settings(resp3)).map_err(bad_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(MAX_BACKOFF);
        let con = ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        let reader = con.clone();
        let batcher = Batcher::start(Box::new(move |messages| {
            publish_batch(con.clone(), messages).boxed()
        }));
        let connected = Arc::new(AtomicBool::new(false));
        let subscriber = Subscriber {
            client: subscriber_client,
            prefix: prefix.into(),
            node: node.into(),
            desired: HashSet::new(),
            requests,
            inbox,
            connected: connected.clone(),
        };
        tokio::spawn(subscriber.run());
        Ok(Self {
            batcher,
            reader,
            prefix: prefix.into(),
            connected,
        })
    }
}

/// Sends one batch as one pipeline, in order; scripts for the messages with history.
async fn publish_batch(mut con: ConnectionManager, messages: Vec<Message>) -> Vec<Accepted> {
    let any_history = messages.iter().any(|m| m.history.is_some());
    let mut pipe = scripts::pipeline(any_history);
    let epoch = if any_history {
        history::new_epoch()
    } else {
        Arc::from("")
    };
    for m in &messages {
        scripts::add_publish(
            &mut pipe,
            Publish::Plain,
            &m.name,
            &m.payload,
            m.history,
            &epoch,
        );
    }
    // The first command after an outage may hit the dead socket ("broken pipe") before the
    // manager notices; one retry goes through the fresh connection.
    let mut retried = false;
    loop {
        match pipe.query_async::<Vec<Value>>(&mut con).await {
            Ok(values) if values.len() == messages.len() => {
                return values
                    .into_iter()
                    .map(|v| scripts::accepted(v, unavailable))
                    .collect();
            }
            Ok(_) => return vec![Err(unavailable("short pipeline reply")); messages.len()],
            Err(e) if !retried && (e.is_connection_dropped() || e.is_io_error()) => retried = true,
            Err(e) => return vec![Err(unavailable(e)); messages.len()],
        }
    }
}

impl Broker for RedisBroker {
    fn publish(&self, channel: &str, payload: Bytes, history: Option<HistoryOptions>) -> Ack {
        if !self.connected.load(Ordering::Acquire) {
            return Ack::now(Err(BrokerError::Unavailable(
                "redis is disconnected".into(),
            )));
        }
        self.batcher
            .publish_to(&self.prefix, channel, payload, history)
    }

    fn history(
        &self,
        channel: &str,
        query: Query,
        limit: usize,
        history: HistoryOptions,
    ) -> BoxFuture<'static, Result<Read, BrokerError>> {
        let mut con = self.reader.clone();
        let name = format!("{}{channel}", self.prefix);
        async move {
            let read = scripts::read(&mut con, &name, query, limit, history);
            scripts::read_within(read, unavailable).await
        }
        .boxed()
    }

    fn is_ready(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// The task owning the subscriber connection.
struct Subscriber {
    client: redis::Client,
    prefix: Arc<str>,
    node: String,
    /// Channels (client names) this node needs, whatever the connection's state.
    desired: HashSet<String>,
    requests: Requests,
    inbox: Arc<dyn Inbox>,
    connected: Arc<AtomicBool>,
}

/// Subscription requests applied in one round trip at most.
const MAX_REQUESTS_BATCH: usize = 1024;

/// Requests for distinct channels waiting to go out together.
#[derive(Default)]
struct Run {
    channels: HashSet<String>,
    subscribe: Vec<(String, oneshot::Sender<Result<(), BrokerError>>)>,
    unsubscribe: Vec<String>,
}

/// Why a connected session with Redis ended.
enum Ended {
    /// The connection failed; reconnect.
    Lost(String),
    /// The broker was dropped; stop.
    Stopped,
}

/// What one subscriber connection's push callback shares with the task.
#[derive(Default)]
struct Watch {
    /// redis-rs reported the connection closed.
    lost: Notify,
    /// The task gave the connection up: a late message on it (from a Redis that was only
    /// paused) would duplicate what the next connection delivers.
    retired: AtomicBool,
}

impl Subscriber {
    /// The callback redis-rs runs for every push frame on one connection.
    fn on_push(
        &self,
        watch: Arc<Watch>,
    ) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + use<> {
        let (prefix, inbox) = (self.prefix.clone(), self.inbox.clone());
        move |info: PushInfo| {
            match info.kind {
                PushKind::Message if !watch.retired.load(Ordering::Acquire) => {
                    deliver_push(&prefix, &*inbox, &info.data)
                }
                PushKind::Disconnection => watch.lost.notify_one(),
                _ => {}
            }
            Ok(())
        }
    }

    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut down_since: Option<Instant> = None;
        loop {
            let watch = Arc::new(Watch::default());
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(TIMEOUT))
                .set_response_timeout(Some(TIMEOUT))
                .set_push_sender(self.on_push(watch.clone()));
            let attempt = tokio::time::timeout(
                TIMEOUT,
                self.client
                    .get_multiplexed_async_connection_with_config(&config),
            )
            .await;
            let why = match attempt {
                Ok(Ok(con)) => Ok(con),
                Ok(Err(e)) if e.to_string().contains("HELLO") => Err(format!(
                    "{e} (the subscriber connection needs RESP3: Redis 6 or newer)"
                )),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("connect timed out".to_owned()),
            };
            let mut con = match why {
                Ok(con) => con,
                Err(why) => {
                    if !self.wait_while_down(backoff, &why, &mut down_since).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let started = Instant::now();
            if !self.desired.is_empty() {
                let names: Vec<String> = self
                    .desired
                    .iter()
                    .map(|c| format!("{}{c}", self.prefix))
                    .collect();
                if let Err(e) = bounded(con.subscribe(names)).await {
                    tracing::warn!(error = %e, "redis resubscribe failed");
                    watch.retired.store(true, Ordering::Release);
                    continue;
                }
            }
            self.connected.store(true, Ordering::Release);
            backoff = MIN_BACKOFF;
            match down_since.take() {
                Some(since) => {
                    metrics::counter!("switchyard_broker_reconnects_total").increment(1);
                    tracing::info!(
                        node = %self.node,
                        channels = self.desired.len(),
                        outage_ms = since.elapsed().as_millis() as u64,
                        resubscribe_ms = started.elapsed().as_millis() as u64,
                        "redis reconnected; channels resubscribed"
                    );
                }
                None => tracing::info!(node = %self.node, "redis subscriber connected"),
            }
            let ended = self.serve(&mut con, &watch).await;
            watch.retired.store(true, Ordering::Release);
            self.connected.store(false, Ordering::Release);
            match ended {
                Ended::Stopped => return,
                Ended::Lost(why) => {
                    tracing::warn!(error = %why, "redis connection lost; reconnecting");
                    down_since = Some(Instant::now());
                }
            }
        }
    }

    /// Serves commands over a live connection until it fails; messages meanwhile go from
    /// redis-rs's reader straight to the inbox.
    async fn serve(&mut self, con: &mut MultiplexedConnection, watch: &Watch) -> Ended {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        loop {
            tokio::select! {
                cmd = self.requests.recv() => {
                    let Some(first) = cmd else { return Ended::Stopped };
                    // Everything queued meanwhile goes with it: under subscribe churn a round
                    // trip per request would cap a node at one SUBSCRIBE per Redis round trip.
                    let mut batch = vec![first];
                    while batch.len() < MAX_REQUESTS_BATCH {
                        match self.requests.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = self.apply(con, batch).await {
                        return Ended::Lost(e);
                    }
                }
                () = watch.lost.notified() => return Ended::Lost("connection closed".into()),
                _ = ping.tick() => {
                    if let Err(e) = bounded(redis::cmd("PING").query_async::<Value>(con)).await {
                        return Ended::Lost(format!("ping: {e}"));
                    }
                }
            }
        }
    }

    /// Applies queued requests in as few round trips as their order allows: requests for
    /// different channels commute, so a run of them goes out as one SUBSCRIBE and one
    /// UNSUBSCRIBE; a second request for a channel already in the run sends the run first.
    async fn apply(
        &mut self,
        con: &mut MultiplexedConnection,
        batch: Vec<Request>,
    ) -> Result<(), String> {
        let mut run = Run::default();
        let mut requests = batch.into_iter();
        while let Some(request) = requests.next() {
            let channel = match &request {
                Request::Subscribe(c, _) | Request::Unsubscribe(c) => c,
            };
            if run.channels.contains(channel)
                && let Err(e) = self.flush(con, &mut run).await
            {
                // The connection is lost: what was not sent is answered as while Redis is
                // down (subscribes fail, unsubscribes are remembered).
                for rest in std::iter::once(request).chain(requests) {
                    match rest {
                        Request::Subscribe(_, ack) => {
                            let _ = ack.send(Err(unavailable(&e)));
                        }
                        Request::Unsubscribe(channel) => {
                            self.desired.remove(&channel);
                        }
                    }
                }
                return Err(e);
            }
            match request {
                Request::Subscribe(channel, ack) => {
                    if self.desired.contains(&channel) {
                        let _ = ack.send(Ok(()));
                        continue;
                    }
                    run.channels.insert(channel.clone());
                    run.subscribe.push((channel, ack));
                }
                Request::Unsubscribe(channel) => {
                    self.desired.remove(&channel);
                    run.channels.insert(channel.clone());
                    run.unsubscribe.push(channel);
                }
            }
        }
        self.flush(con, &mut run).await
    }

    /// Sends a run: its subscribes (answered once Redis confirms them), then its unsubscribes.
    async fn flush(
        &mut self,
        con: &mut MultiplexedConnection,
        run: &mut Run,
    ) -> Result<(), String> {
        run.channels.clear();
        if !run.subscribe.is_empty() {
            let names: Vec<String> = run
                .subscribe
                .iter()
                .map(|(c, _)| format!("{}{c}", self.prefix))
                .collect();
            match bounded(con.subscribe(names)).await {
                Ok(()) => {
                    for (channel, ack) in run.subscribe.drain(..) {
                        self.desired.insert(channel);
                        let _ = ack.send(Ok(()));
                    }
                }
                Err(e) => {
                    for (_, ack) in run.subscribe.drain(..) {
                        let _ = ack.send(Err(unavailable(&e)));
                    }
                    return Err(e);
                }
            }
        }
        if !run.unsubscribe.is_empty() {
            let names: Vec<String> = run
                .unsubscribe
                .drain(..)
                .map(|c| format!("{}{c}", self.prefix))
                .collect();
            bounded(con.unsubscribe(names)).await?;
        }
        Ok(())
    }

    /// Waits out one backoff period while disconnected, still answering commands: subscribes
    /// fail with `Unavailable` (the hub rolls them back), unsubscribes are remembered. Returns
    /// false when the broker has been dropped.
    async fn wait_while_down(
        &mut self,
        backoff: Duration,
        why: &str,
        down_since: &mut Option<Instant>,
    ) -> bool {
        if down_since.is_none() {
            tracing::warn!(error = %why, "redis unreachable; retrying");
            *down_since = Some(Instant::now());
        }
        let deadline = tokio::time::sleep(backoff);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return true,
                cmd = self.requests.recv() => match cmd {
                    None => return false,
                    Some(Request::Subscribe(_, ack)) => {
                        let _ = ack.send(Err(BrokerError::Unavailable("redis is disconnected".into())));
                    }
                    Some(Request::Unsubscribe(channel)) => {
                        self.desired.remove(&channel);
                    }
                },
            }
        }
    }
}
