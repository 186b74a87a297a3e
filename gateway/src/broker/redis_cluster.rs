//! The Redis Cluster broker: sharded pub/sub (Redis 7+).
//!
//! A channel `C` is the shard channel `<prefix>C`: SPUBLISH sends it to the shard owning its
//! slot only, and each node SSUBSCRIBEs on that shard, so cluster traffic grows with the
//! messages, not with messages x shards as plain PUBLISH does. Same payload format as
//! [`super::redis`], so `redis-cli -c SPUBLISH <prefix>C '<json>'` reaches `C`'s subscribers.
//!
//! redis-rs's cluster connection (RESP3) routes by slot, follows MOVED/ASK and resubscribes
//! after reconnects on its own, but not reliably: after masters of a test cluster restarted,
//! some channels stayed unsubscribed, and an SSUBSCRIBE that succeeded right after a restart
//! could be lost again while redis-rs replaced its connections. So this broker does not trust
//! it: one task owns the set of channels the node needs and re-issues SSUBSCRIBE (idempotent on
//! the server) for every one of them whenever a connection reports a disconnection or the
//! server ends a subscription on its own (a slot moved, a master lost it), then again 0.5, 1,
//! 2 and 4 s later while connections settle (`SETTLE`), and every 30 s (`RECONCILE_EVERY`) as a
//! last line of defence. Readiness is false from the disconnection until the first full re-subscribe.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::publisher::Publisher;
use super::redis::{Command, Commands, bounded};
use super::{Ack, Broker, BrokerError, Inbox, deliver_push};
use crate::redis_link::{LazyCluster, RedisTarget};

/// First delay before re-subscribing after a failure; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between re-subscribe attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Command timeout: a shard that does not answer within it counts as down for that command.
const TIMEOUT: Duration = super::redis::TIMEOUT;
/// Every channel is re-subscribed this often even without a sign of trouble, bounding how
/// long a subscription lost without any notice can stay lost.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// After trouble, every channel is re-subscribed again after each of these pauses (0.5, 1, 2
/// and 4 s after the first successful re-subscribe), covering connections redis-rs replaces
/// while a cluster recovers.
const SETTLE: [Duration; 4] = [
    Duration::from_millis(500),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];
/// SSUBSCRIBEs in flight at once while re-subscribing.
const CONCURRENCY: usize = 64;

/// What the connections report that needs the subscriber's attention.
enum Control {
    /// A connection to some cluster node dropped.
    Disconnected,
    /// The server ended a shard-channel subscription (Redis channel name).
    Unsubscribed(String),
}

/// Sharded pub/sub through a Redis Cluster.
pub struct RedisClusterBroker {
    publisher: Publisher,
    prefix: Arc<str>,
    commands: Commands,
    ready: Arc<AtomicBool>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("redis cluster: {e}"))
}

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}

impl RedisClusterBroker {
    /// Starts the broker for the cluster reached through `seeds`; connects lazily, so a
    /// cluster that is down at start is retried like any outage.
    /// Messages on subscribed channels go to `inbox`, from redis-rs's connection tasks.
    pub fn start(
        seeds: &[String],
        prefix: &str,
        node: &str,
        inbox: Arc<dyn Inbox>,
    ) -> Result<Self, BrokerError> {
        let (control_tx, control) = mpsc::unbounded_channel();
        let push_prefix: Arc<str> = prefix.into();
        let on_push = move |info: PushInfo| -> Result<(), ()> {
            match info.kind {
                PushKind::SMessage => deliver_push(&push_prefix, &*inbox, &info.data),
                PushKind::Disconnection => {
                    let _ = control_tx.send(Control::Disconnected);
                }
                PushKind::SUnsubscribe => {
                    if let Some(name) = info
                        .data
                        .first()
                        .and_then(bulk)
                        .and_then(|c| std::str::from_utf8(c).ok())
                    {
                        let _ = control_tx.send(Control::Unsubscribed(name.to_owned()));
                    }
                }
                _ => {}
            }
            Ok(())
        };
        let client = RedisTarget::cluster_builder(seeds, TIMEOUT)
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(on_push)
            .build()
            .map_err(|e| BrokerError::Unavailable(format!("bad redis cluster config: {e}")))?;
        let con = LazyCluster::new(client);
        let (commands, command_rx) = Commands::new();
        let ready = Arc::new(AtomicBool::new(false));
        let subscriber = Subscriber {
            con: con.clone(),
            prefix: prefix.into(),
            node: node.into(),
            desired: HashSet::new(),
            lost: HashSet::new(),
            stale: HashSet::new(),
            connected: false,
            commands: command_rx,
            control,
            ready: ready.clone(),
        };
        tokio::spawn(subscriber.run());
        Ok(Self {
            publisher: Publisher::start(Box::new(move |messages| {
                spublish(con.clone(), messages).boxed()
            })),
            prefix: prefix.into(),
            commands,
            ready,
        })
    }
}

impl Broker for RedisClusterBroker {
    fn publish(&self, channel: &str, payload: Bytes) -> Ack {
        self.publisher
            .publish(format!("{}{channel}", self.prefix), payload)
    }

    fn subscribe(&self, channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.commands.subscribe(channel)
    }

    fn unsubscribe(&self, channel: &str) {
        self.commands.unsubscribe(channel)
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn kind(&self) -> &'static str {
        "redis-cluster"
    }
}

/// The task that owns which shard channels this node is subscribed to.
struct Subscriber {
    con: LazyCluster,
    prefix: String,
    node: String,
    /// Channels (client names) this node needs.
    desired: HashSet<String>,
    /// Desired channels whose subscription may be gone; re-subscribed until confirmed.
    lost: HashSet<String>,
    /// Channels no longer needed whose SUNSUBSCRIBE failed; retried so the shard stops sending.
    stale: HashSet<String>,
    /// Whether the cluster has been reached at least once.
    connected: bool,
    commands: mpsc::UnboundedReceiver<Command>,
    control: mpsc::UnboundedReceiver<Control>,
    ready: Arc<AtomicBool>,
}

impl Subscriber {
    fn redis_name(&self, channel: &str) -> String {
        format!("{}{channel}", self.prefix)
    }

    /// Whether anything is waiting to be repaired.
    fn needs_repair(&self) -> bool {
        !self.connected || !self.lost.is_empty() || !self.stale.is_empty()
    }

    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut repair_at = tokio::time::Instant::now();
        let mut trouble_since: Option<Instant> = None;
        // Pending follow-up re-subscribes after trouble: the next one's time and index.
        let mut settle: Option<(tokio::time::Instant, usize)> = None;
        let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
        reconcile.reset();
        loop {
            let repair = tokio::time::sleep_until(repair_at);
            let settle_at = tokio::time::sleep_until(
                settle.map_or_else(tokio::time::Instant::now, |(at, _)| at),
            );
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    None => return,
                    Some(Command::Subscribe(channel, ack)) => {
                        let _ = ack.send(self.subscribe(channel).await);
                    }
                    Some(Command::Unsubscribe(channel)) => self.unsubscribe(channel).await,
                },
                Some(control) = self.control.recv() => {
                    match control {
                        Control::Disconnected => {
                            self.lost.extend(self.desired.iter().cloned());
                        }
                        Control::Unsubscribed(name) => {
                            // Our own SUNSUBSCRIBEs are confirmed the same way; only channels
                            // still needed count as lost.
                            match name.strip_prefix(self.prefix.as_str()) {
                                Some(c) if self.desired.contains(c) => {
                                    self.lost.insert(c.to_owned());
                                }
                                _ => continue,
                            }
                        }
                    }
                    if !self.lost.is_empty() {
                        self.ready.store(false, Ordering::Release);
                        trouble_since.get_or_insert_with(Instant::now);
                        settle = None;
                        backoff = MIN_BACKOFF;
                        repair_at = tokio::time::Instant::now() + MIN_BACKOFF;
                    }
                }
                _ = repair, if self.needs_repair() => {
                    let started = Instant::now();
                    let count = self.lost.len();
                    self.repair().await;
                    if self.needs_repair() {
                        repair_at = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                    backoff = MIN_BACKOFF;
                    self.ready.store(true, Ordering::Release);
                    match trouble_since.take() {
                        Some(since) => {
                            settle = Some((tokio::time::Instant::now() + SETTLE[0], 0));
                            metrics::counter!("switchyard_broker_reconnects_total").increment(1);
                            tracing::info!(
                                node = %self.node,
                                channels = count,
                                outage_ms = since.elapsed().as_millis() as u64,
                                resubscribe_ms = started.elapsed().as_millis() as u64,
                                "redis cluster: channels subscribed again"
                            );
                        }
                        None if count == 0 => {
                            tracing::info!(node = %self.node, "redis cluster connected")
                        }
                        None => {}
                    }
                }
                _ = settle_at, if settle.is_some() => {
                    let (_, step) = settle.take().expect("guarded by the branch condition");
                    settle = SETTLE
                        .get(step + 1)
                        .map(|d| (tokio::time::Instant::now() + *d, step + 1));
                    self.lost.extend(self.desired.iter().cloned());
                    repair_at = tokio::time::Instant::now();
                }
                _ = reconcile.tick() => {
                    self.lost.extend(self.desired.iter().cloned());
                    repair_at = tokio::time::Instant::now();
                }
            }
        }
    }

    async fn subscribe(&mut self, channel: String) -> Result<(), BrokerError> {
        if self.desired.contains(&channel) {
            return Ok(());
        }
        let name = self.redis_name(&channel);
        ssubscribe(&self.con, name).await.map_err(unavailable)?;
        self.stale.remove(&channel);
        self.desired.insert(channel);
        Ok(())
    }

    async fn unsubscribe(&mut self, channel: String) {
        self.desired.remove(&channel);
        self.lost.remove(&channel);
        let name = self.redis_name(&channel);
        if let Err(e) = sunsubscribe(&self.con, name).await {
            tracing::debug!(%channel, error = %e, "sunsubscribe failed; will retry");
            self.stale.insert(channel);
        }
    }

    /// One attempt at everything pending: connecting, lost subscriptions, stale ones.
    async fn repair(&mut self) {
        if !self.connected {
            match tokio::time::timeout(TIMEOUT, self.con.get()).await {
                Ok(Ok(_)) => self.connected = true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "redis cluster unreachable; retrying");
                    return;
                }
                Err(_) => {
                    tracing::warn!("redis cluster connect timed out; retrying");
                    return;
                }
            }
        }
        let lost: Vec<String> = self.lost.drain().collect();
        let failed: Vec<String> = futures_util::stream::iter(lost)
            .map(|channel| {
                let name = self.redis_name(&channel);
                let con = self.con.clone();
                async move { ssubscribe(&con, name).await.err().map(|e| (channel, e)) }
            })
            .buffer_unordered(CONCURRENCY)
            .filter_map(|r| async move { r })
            .map(|(channel, e)| {
                tracing::debug!(%channel, error = %e, "re-subscribe failed; will retry");
                channel
            })
            .collect()
            .await;
        // A channel unsubscribed while its re-subscribe was in flight stays unwanted.
        self.lost
            .extend(failed.into_iter().filter(|c| self.desired.contains(c)));
        let stale: Vec<String> = self.stale.drain().collect();
        for channel in stale {
            if self.desired.contains(&channel) {
                continue;
            }
            if sunsubscribe(&self.con, self.redis_name(&channel))
                .await
                .is_err()
            {
                self.stale.insert(channel);
            }
        }
    }
}

/// Sends one batch: a pipeline of SPUBLISH per channel (one slot each, so redis-rs can route
/// it; in batch order within it), all channels at once.
async fn spublish(
    lazy: LazyCluster,
    messages: Vec<super::publisher::Message>,
) -> Vec<Result<(), BrokerError>> {
    let con = match lazy.get().await {
        Ok(con) => con,
        Err(e) => return vec![Err(unavailable(e)); messages.len()],
    };
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<(redis::Pipeline, Vec<usize>)> = Vec::new();
    for (i, (channel, payload)) in messages.iter().enumerate() {
        let g = *index.entry(channel.as_str()).or_insert_with(|| {
            groups.push((redis::pipe(), Vec::new()));
            groups.len() - 1
        });
        groups[g]
            .0
            .cmd("SPUBLISH")
            .arg(channel)
            .arg(payload.as_ref())
            .ignore();
        groups[g].1.push(i);
    }
    let sent = futures_util::future::join_all(groups.iter().map(|(pipe, _)| {
        let mut con = con.clone();
        async move { pipe.query_async::<()>(&mut con).await }
    }))
    .await;
    let mut results = vec![Ok(()); messages.len()];
    for ((_, members), result) in groups.iter().zip(sent) {
        if let Err(e) = result {
            let e = unavailable(e);
            for &i in members {
                results[i] = Err(e.clone());
            }
        }
    }
    results
}

async fn ssubscribe(con: &LazyCluster, name: String) -> Result<(), String> {
    bounded(async {
        let mut c = con.get().await?;
        c.ssubscribe(name).await
    })
    .await
}

async fn sunsubscribe(con: &LazyCluster, name: String) -> Result<(), String> {
    bounded(async {
        let mut c = con.get().await?;
        c.sunsubscribe(name).await
    })
    .await
}
