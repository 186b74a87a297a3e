//! The Redis Cluster broker: sharded pub/sub (Redis 7+).
//!
//! A channel `C` is the shard channel `<prefix>C`: SPUBLISH sends it to the shard owning its
//! slot only, and each node SSUBSCRIBEs on that shard, so cluster traffic grows with the
//! messages, not with messages x shards as plain PUBLISH does. Same payload format as
//! the single-Redis broker, so `redis-cli -c SPUBLISH <prefix>C '<json>'` reaches `C`'s subscribers.
//!
//! redis-rs's cluster connection (RESP3) routes by slot, follows MOVED/ASK and resubscribes
//! after reconnects on its own, but not reliably: after masters of a test cluster restarted,
//! some channels stayed unsubscribed, and an SSUBSCRIBE that succeeded right after a restart
//! could be lost again while redis-rs replaced its connections. So this broker does not trust
//! it: one task owns the set of channels the node needs and re-issues SSUBSCRIBE (idempotent on
//! the server) for every one of them whenever a connection reports a disconnection or the
//! server ends a subscription on its own (a slot moved, a master lost it), then again 0.5, 1,
//! 2 and 4 s later while connections settle (`SETTLE`), and every 30 s (`RECONCILE_EVERY`) as a
//! last line of defence.
//!
//! A successful SSUBSCRIBE is not proof: redis-rs may answer it on a connection it is about
//! to replace, and the subscription goes with that connection, silently (after a master
//! restart this left 1-2 of 3 nodes unsubscribed while they reported ready, and publishes were
//! acknowledged that some nodes never delivered). So after trouble every re-subscribed
//! channel is proven end to end: the node SPUBLISHes a probe on it and waits for its own probe
//! to come back on the connection that carries the channel's messages ([`PROBE_MAGIC`]; every
//! node drops probes before the fan-out). Readiness is false from the trouble until every
//! channel's probe came back; a probe that does not come back within `PROBE_TIMEOUT` sends its
//! channel back to be re-subscribed. The settle steps probe too, so a subscription lost
//! shortly after counts as trouble again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use futures_util::future::BoxFuture;

use super::batcher::{Batcher, Message};
use super::scripts::{self, Publish};
use super::{Accepted, Ack, Broker, BrokerError, Inbox, Request, Requests, deliver_push};
use crate::history::{self, HistoryOptions, Query, Read};
use crate::redis_link::{COMMAND_TIMEOUT, LazyCluster, RedisTarget, bounded};

/// First delay before re-subscribing after a failure; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between re-subscribe attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Command timeout: a shard that does not answer within it counts as down for that command.
const TIMEOUT: Duration = COMMAND_TIMEOUT;
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
/// How long a probe may take to come back before its channel is re-subscribed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How every probe payload starts. Reserved: a message on a gateway channel whose payload
/// starts with these bytes is never delivered to clients (the NUL byte keeps it from being a
/// JSON text, or any text a backend would publish).
pub const PROBE_MAGIC: &[u8] = b"\0switchyard-probe ";

/// What the connections report that needs the subscriber's attention.
enum Control {
    /// A connection to some cluster node dropped.
    Disconnected,
    /// The server ended a shard-channel subscription (Redis channel name).
    Unsubscribed(String),
    /// This node's probe came back on a channel (client name, probe number).
    Probed(String, u64),
}

/// The probe payload node `node` sends with number `nonce`.
fn probe_payload(node: &str, nonce: u64) -> Vec<u8> {
    let mut payload = PROBE_MAGIC.to_vec();
    payload.extend_from_slice(format!("{nonce} {node}").as_bytes());
    payload
}

/// The probe number in `payload` if it is a probe of node `node`; `Some(None)` for another
/// node's probe, `None` when it is no probe at all.
fn parse_probe(payload: &[u8], node: &str) -> Option<Option<u64>> {
    let rest = payload.strip_prefix(PROBE_MAGIC)?;
    let rest = std::str::from_utf8(rest).ok();
    let ours = rest
        .and_then(|r| r.split_once(' '))
        .filter(|(_, from)| *from == node)
        .and_then(|(nonce, _)| nonce.parse().ok());
    Some(ours)
}

/// Sharded pub/sub through a Redis Cluster.
pub struct RedisClusterBroker {
    batcher: Batcher,
    /// The cluster connection, for history reads.
    reader: LazyCluster,
    prefix: Arc<str>,
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

/// Whether an `smessage` push (`[channel, payload]`) is a probe: `Some(Some(..))` with the
/// client channel and number of this node's own probe, `Some(None)` for another node's (or a
/// malformed) probe, `None` for a message to deliver.
fn probe_of(data: &[Value], prefix: &str, node: &str) -> Option<Option<(String, u64)>> {
    let [name, payload] = data else { return None };
    let nonce = parse_probe(bulk(payload)?, node)?;
    let channel = bulk(name)
        .and_then(|n| n.strip_prefix(prefix.as_bytes()))
        .and_then(|c| std::str::from_utf8(c).ok());
    Some(nonce.zip(channel).map(|(n, c)| (c.to_owned(), n)))
}

impl RedisClusterBroker {
    /// Starts the broker for the cluster reached through `seeds`; connects lazily, so a
    /// cluster that is down at start is retried like any outage.
    /// Messages on subscribed channels go to `inbox`, from redis-rs's connection tasks.
    pub fn start(
        seeds: &[String],
        prefix: &str,
        node: &str,
        requests: Requests,
        inbox: Arc<dyn Inbox>,
    ) -> Result<Self, BrokerError> {
        let (control_tx, control) = mpsc::unbounded_channel();
        let push_prefix: Arc<str> = prefix.into();
        let push_node: Arc<str> = node.into();
        let on_push = move |info: PushInfo| -> Result<(), ()> {
            match info.kind {
                PushKind::SMessage => match probe_of(&info.data, &push_prefix, &push_node) {
                    None => deliver_push(&push_prefix, &*inbox, &info.data),
                    Some(Some((channel, nonce))) => {
                        let _ = control_tx.send(Control::Probed(channel, nonce));
                    }
                    Some(None) => {}
                },
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
        let ready = Arc::new(AtomicBool::new(false));
        let subscriber = Subscriber {
            con: con.clone(),
            prefix: prefix.into(),
            node: node.into(),
            desired: HashSet::new(),
            lost: HashSet::new(),
            stale: HashSet::new(),
            probing: HashMap::new(),
            next_probe: 0,
            trouble_since: None,
            connected: false,
            requests,
            control,
            ready: ready.clone(),
        };
        tokio::spawn(subscriber.run());
        let reader = con.clone();
        Ok(Self {
            batcher: Batcher::start(Box::new(move |messages| {
                spublish(con.clone(), messages).boxed()
            })),
            reader,
            prefix: prefix.into(),
            ready,
        })
    }
}

impl Broker for RedisClusterBroker {
    fn publish(&self, channel: &str, payload: Bytes, history: Option<HistoryOptions>) -> Ack {
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
        let lazy = self.reader.clone();
        let name = format!("{}{channel}", self.prefix);
        async move {
            let read = async {
                let mut con = lazy.get().await?;
                scripts::read(&mut con, &name, query, limit, history).await
            };
            scripts::read_within(read, unavailable).await
        }
        .boxed()
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
    /// Re-subscribed channels waiting for their probe: its number and when it is overdue.
    probing: HashMap<String, (u64, tokio::time::Instant)>,
    /// Number of the next probe.
    next_probe: u64,
    /// Since when the node may be missing subscriptions (readiness is false meanwhile).
    trouble_since: Option<Instant>,
    /// Whether the cluster has been reached at least once.
    connected: bool,
    requests: Requests,
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

    /// When the oldest probe is overdue.
    fn probe_deadline(&self) -> Option<tokio::time::Instant> {
        self.probing.values().map(|(_, due)| *due).min()
    }

    /// Subscriptions may be missing from now on: not ready until every one is proven again.
    fn trouble(&mut self) {
        self.ready.store(false, Ordering::Release);
        self.trouble_since.get_or_insert_with(Instant::now);
    }

    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut repair_at = tokio::time::Instant::now();
        // Pending follow-up re-subscribes after trouble: the next one's time and index.
        let mut settle: Option<(tokio::time::Instant, usize)> = None;
        let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
        reconcile.reset();
        // Until the cluster has been reached and every channel proven, the node is not ready.
        self.trouble();
        loop {
            let repair = tokio::time::sleep_until(repair_at);
            let settle_at = tokio::time::sleep_until(
                settle.map_or_else(tokio::time::Instant::now, |(at, _)| at),
            );
            let probe_due = self.probe_deadline();
            let probe_timeout =
                tokio::time::sleep_until(probe_due.unwrap_or_else(tokio::time::Instant::now));
            tokio::select! {
                cmd = self.requests.recv() => match cmd {
                    None => return,
                    Some(Request::Subscribe(channel, ack)) => {
                        let _ = ack.send(self.subscribe(channel).await);
                    }
                    Some(Request::Unsubscribe(channel)) => self.unsubscribe(channel).await,
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
                        Control::Probed(channel, nonce) => {
                            if self.probing.get(&channel).is_some_and(|(n, _)| *n == nonce) {
                                self.probing.remove(&channel);
                                self.settled_if_proven(&mut settle);
                            }
                            continue;
                        }
                    }
                    if !self.lost.is_empty() {
                        self.trouble();
                        settle = None;
                        backoff = MIN_BACKOFF;
                        repair_at = tokio::time::Instant::now() + MIN_BACKOFF;
                    }
                }
                _ = repair, if self.needs_repair() => {
                    self.repair(true).await;
                    if self.needs_repair() {
                        repair_at = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                    backoff = MIN_BACKOFF;
                    self.settled_if_proven(&mut settle);
                }
                _ = probe_timeout, if probe_due.is_some() => {
                    let now = tokio::time::Instant::now();
                    let overdue: Vec<String> = self
                        .probing
                        .iter()
                        .filter(|(_, (_, due))| *due <= now)
                        .map(|(c, _)| c.clone())
                        .collect();
                    tracing::warn!(
                        node = %self.node,
                        channels = overdue.len(),
                        "redis cluster: subscriptions did not carry their probe; subscribing again"
                    );
                    for channel in overdue {
                        self.probing.remove(&channel);
                        if self.desired.contains(&channel) {
                            self.lost.insert(channel);
                        }
                    }
                    self.trouble();
                    settle = None;
                    repair_at = now;
                }
                _ = settle_at, if settle.is_some() => {
                    let (_, step) = settle.take().expect("guarded by the branch condition");
                    settle = SETTLE
                        .get(step + 1)
                        .map(|d| (tokio::time::Instant::now() + *d, step + 1));
                    // Re-subscribed and probed again: a subscription lost since is trouble.
                    self.lost.extend(self.desired.iter().cloned());
                    self.repair(true).await;
                    if !self.lost.is_empty() {
                        self.trouble();
                    }
                    repair_at = tokio::time::Instant::now();
                }
                _ = reconcile.tick() => {
                    // A quiet re-subscribe of everything (idempotent on the server), unprobed:
                    // probing every channel every period would cost a publish per channel.
                    self.lost.extend(self.desired.iter().cloned());
                    self.repair(false).await;
                    if !self.lost.is_empty() {
                        self.trouble();
                    }
                    repair_at = tokio::time::Instant::now();
                }
            }
        }
    }

    /// Once nothing is lost and every probe came back, the node is ready again; the first
    /// time after trouble, the settle steps are scheduled.
    fn settled_if_proven(&mut self, settle: &mut Option<(tokio::time::Instant, usize)>) {
        if self.needs_repair() || !self.probing.is_empty() {
            return;
        }
        self.ready.store(true, Ordering::Release);
        let Some(since) = self.trouble_since.take() else {
            return;
        };
        if self.desired.is_empty() {
            tracing::info!(node = %self.node, "redis cluster connected");
            return;
        }
        *settle = Some((tokio::time::Instant::now() + SETTLE[0], 0));
        metrics::counter!("switchyard_broker_reconnects_total").increment(1);
        tracing::info!(
            node = %self.node,
            channels = self.desired.len(),
            outage_ms = since.elapsed().as_millis() as u64,
            "redis cluster: every channel subscribed again and proven by its probe"
        );
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
        self.probing.remove(&channel);
        let name = self.redis_name(&channel);
        if let Err(e) = sunsubscribe(&self.con, name).await {
            tracing::debug!(%channel, error = %e, "sunsubscribe failed; will retry");
            self.stale.insert(channel);
        }
    }

    /// One attempt at everything pending: connecting, lost subscriptions (each proven by a
    /// probe when `probe`), stale ones.
    async fn repair(&mut self, probe: bool) {
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
        let first = self.next_probe;
        self.next_probe += lost.len() as u64;
        let due = tokio::time::Instant::now() + PROBE_TIMEOUT;
        let node = self.node.clone();
        let results: Vec<(String, Result<Option<u64>, String>)> =
            futures_util::stream::iter(lost.into_iter().zip(first..))
                .map(|(channel, nonce)| {
                    let name = self.redis_name(&channel);
                    let con = self.con.clone();
                    let payload = probe.then(|| probe_payload(&node, nonce));
                    async move {
                        let result = async {
                            ssubscribe(&con, name.clone()).await?;
                            match payload {
                                Some(payload) => spublish_one(&con, name, payload)
                                    .await
                                    .map(|()| Some(nonce)),
                                None => Ok(None),
                            }
                        }
                        .await;
                        (channel, result)
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        for (channel, result) in results {
            // A channel unsubscribed while its re-subscribe was in flight stays unwanted.
            if !self.desired.contains(&channel) {
                continue;
            }
            match result {
                Ok(Some(nonce)) => {
                    self.probing.insert(channel, (nonce, due));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(%channel, error = %e, "re-subscribe failed; will retry");
                    self.lost.insert(channel);
                }
            }
        }
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

/// One SPUBLISH (a probe), routed to the channel's shard.
async fn spublish_one(con: &LazyCluster, name: String, payload: Vec<u8>) -> Result<(), String> {
    bounded(async {
        let mut c = con.get().await?;
        redis::cmd("SPUBLISH")
            .arg(name)
            .arg(payload)
            .query_async::<()>(&mut c)
            .await
    })
    .await
}

/// Sends one batch: a pipeline per channel (one slot each, so redis-rs can route it; in batch
/// order within it; the history script for a channel with history), all channels at once.
async fn spublish(lazy: LazyCluster, messages: Vec<Message>) -> Vec<Accepted> {
    let con = match lazy.get().await {
        Ok(con) => con,
        Err(e) => return vec![Err(unavailable(e)); messages.len()],
    };
    let epoch = if messages.iter().any(|m| m.history.is_some()) {
        history::new_epoch()
    } else {
        Arc::from("")
    };
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<(redis::Pipeline, Vec<usize>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let g = *index.entry(m.name.as_str()).or_insert_with(|| {
            groups.push((scripts::pipeline(m.history.is_some()), Vec::new()));
            groups.len() - 1
        });
        scripts::add_publish(
            &mut groups[g].0,
            Publish::Sharded,
            &m.name,
            &m.payload,
            m.history,
            &epoch,
        );
        groups[g].1.push(i);
    }
    let sent = futures_util::future::join_all(groups.iter().map(|(pipe, _)| {
        let mut con = con.clone();
        async move { pipe.query_async::<Vec<Value>>(&mut con).await }
    }))
    .await;
    let mut results: Vec<Accepted> = vec![Ok(None); messages.len()];
    for ((_, members), result) in groups.iter().zip(sent) {
        match result {
            Ok(values) if values.len() == members.len() => {
                for (&i, value) in members.iter().zip(values) {
                    results[i] = scripts::accepted(value, unavailable);
                }
            }
            Ok(_) => {
                for &i in members {
                    results[i] = Err(unavailable("short pipeline reply"));
                }
            }
            Err(e) => {
                let e = unavailable(e);
                for &i in members {
                    results[i] = Err(e.clone());
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn push(channel: &str, payload: &[u8]) -> [Value; 2] {
        [
            Value::BulkString(channel.as_bytes().to_vec()),
            Value::BulkString(payload.to_vec()),
        ]
    }

    #[test]
    fn own_probes_are_recognised_and_every_probe_is_kept_from_clients() {
        let ours = probe_payload("node-a:8080", 42);
        assert_eq!(
            probe_of(&push("sy:room", &ours), "sy:", "node-a:8080"),
            Some(Some(("room".to_owned(), 42)))
        );
        // Another node's probe, or a malformed one: not delivered, not ours.
        assert_eq!(
            probe_of(&push("sy:room", &ours), "sy:", "node-b:8080"),
            Some(None)
        );
        let mut junk = PROBE_MAGIC.to_vec();
        junk.extend_from_slice(b"not a probe");
        assert_eq!(
            probe_of(&push("sy:room", &junk), "sy:", "node-a:8080"),
            Some(None)
        );
        // Messages are not probes, whatever they hold.
        assert_eq!(probe_of(&push("sy:room", br#"{"n":1}"#), "sy:", "n"), None);
        assert_eq!(
            probe_of(&push("sy:room", b"switchyard-probe 1 n"), "sy:", "n"),
            None
        );
    }
}
