//! One contract per backend trait, checked against every backend: the embedded broker, Redis
//! and a Redis Cluster (each test's own servers) for `Broker`; this node's memory and Redis
//! for `Presence`. A backend that disagrees with the others fails here, not in production.
//!
//! The `Broker` contract (broker/mod.rs): one publisher's messages arrive in order; subscribe
//! is idempotent; unsubscribe releases the channel; only subscribed channels are delivered;
//! the broker says when it is ready; while its server is down a publish or subscribe answers
//! `unavailable` (never an acknowledgement, never a hang) and readiness is false, and once the
//! server is back every channel is delivered again.
//!
//! The history contract (history.rs, broker/mod.rs): a publish with history is acknowledged
//! with its position, offsets go up by one from 1 in one epoch, deliveries carry the same
//! positions in the same order, reads return what is kept after an offset or the newest, a
//! channel never published has an epoch already, and a plain publish is delivered without a
//! position and not stored.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchyard::broker::{self, Broker, BrokerError, Inbox, Subscriptions};
use switchyard::history::{HistoryOptions, Position, Query};
use switchyard::presence::{self, Presence};
use switchyard::redis_link::RedisTarget;
use tokio::sync::mpsc;

use crate::redis_support::{RedisCluster, RedisServer};
use crate::support::{PATIENCE, eventually};

/// What the inbox received: channel, payload, position.
type Received = (String, Vec<u8>, Option<Position>);

/// An inbox that hands every message to the test.
struct Collect(mpsc::UnboundedSender<Received>);

impl Inbox for Collect {
    fn deliver(&self, channel: &str, payload: &[u8], position: Option<&Position>) {
        let _ = self
            .0
            .send((channel.to_owned(), payload.to_vec(), position.cloned()));
    }
}

/// A broker under test, the test's end of its inbox, and its servers.
struct Bed {
    broker: Arc<dyn Broker>,
    subscriptions: Subscriptions,
    inbox: mpsc::UnboundedReceiver<Received>,
    backend: Backend,
}

enum Backend {
    Embedded,
    Redis(RedisServer),
    Cluster(RedisCluster),
}

impl Bed {
    async fn start(backend: Backend) -> Self {
        let target = match &backend {
            Backend::Embedded => None,
            Backend::Redis(r) => Some(RedisTarget::Single(r.url())),
            Backend::Cluster(c) => Some(RedisTarget::Cluster(c.seeds())),
        };
        let (subscriptions, requests) = broker::subscriptions();
        let (tx, inbox) = mpsc::unbounded_channel();
        let broker = broker::start(
            target.as_ref(),
            "cf:",
            "conformance",
            requests,
            Arc::new(Collect(tx)),
        )
        .expect("the broker starts");
        let bed = Self {
            broker,
            subscriptions,
            inbox,
            backend,
        };
        let broker = bed.broker.clone();
        eventually("the broker to be ready", async || broker.is_ready()).await;
        bed
    }

    async fn subscribe(&self, channel: &str) {
        tokio::time::timeout(PATIENCE, self.subscriptions.subscribe(channel))
            .await
            .expect("subscribe answers")
            .expect("subscribed");
    }

    async fn publish(&self, channel: &str, payload: &str) {
        tokio::time::timeout(
            PATIENCE,
            self.broker
                .publish(channel, Bytes::copy_from_slice(payload.as_bytes()), None),
        )
        .await
        .expect("publish answers")
        .expect("published");
    }

    async fn next(&mut self) -> (String, String) {
        let (channel, payload, _) = self.next_at().await;
        (channel, payload)
    }

    async fn next_at(&mut self) -> (String, String, Option<Position>) {
        let (channel, payload, position) = tokio::time::timeout(PATIENCE, self.inbox.recv())
            .await
            .expect("a message in time")
            .expect("inbox open");
        (channel, String::from_utf8(payload).unwrap(), position)
    }

    async fn read(&self, channel: &str, query: Query, limit: usize) -> switchyard::history::Read {
        tokio::time::timeout(
            PATIENCE,
            self.broker.history(channel, query, limit, HISTORY),
        )
        .await
        .expect("a read answers")
        .expect("read")
    }
}

const HISTORY: HistoryOptions = HistoryOptions {
    size: 100,
    ttl: Duration::from_secs(60),
};

/// The history contract (see the top of this file).
async fn keeps_the_history_contract(mut bed: Bed) {
    let empty = bed.read("h", Query::After(0), 10).await;
    assert_eq!((empty.position.offset, empty.first), (0, 1));
    assert!(empty.messages.is_empty());
    let epoch = empty.position.epoch.clone();
    assert_eq!(
        bed.read("h", Query::Latest, 10).await.position.epoch,
        epoch,
        "a read keeps the epoch it gave"
    );
    bed.subscribe("h").await;
    let mut acks = Vec::new();
    for i in 1..=150u64 {
        acks.push(
            bed.broker
                .publish("h", Bytes::from(i.to_string()), Some(HISTORY)),
        );
    }
    for (i, ack) in (1..).zip(acks) {
        let at = tokio::time::timeout(PATIENCE, ack)
            .await
            .expect("publish answers")
            .expect("published")
            .expect("a position");
        assert_eq!((at.offset, &at.epoch), (i, &epoch));
    }
    for i in 1..=150u64 {
        let (channel, payload, at) = bed.next_at().await;
        assert_eq!((channel.as_str(), payload), ("h", i.to_string()));
        assert_eq!(
            at,
            Some(Position {
                offset: i,
                epoch: epoch.clone()
            }),
            "delivered with its position"
        );
    }
    let offsets = |read: &switchyard::history::Read| -> Vec<u64> {
        read.messages.iter().map(|m| m.offset).collect()
    };
    let after = bed.read("h", Query::After(120), 10).await;
    assert_eq!(offsets(&after), (121..=130).collect::<Vec<_>>());
    assert_eq!(after.messages[0].data.as_ref(), b"121");
    assert_eq!(
        (after.position.offset, &after.position.epoch),
        (150, &epoch)
    );
    assert_eq!(
        offsets(&bed.read("h", Query::Latest, 5).await),
        (146..=150).collect::<Vec<_>>()
    );
    // Trimmed to at least `size` (Redis trims approximately, in whole stream nodes).
    let all = bed.read("h", Query::After(0), 1000).await;
    assert!((1..=51).contains(&all.first), "first {}", all.first);
    assert_eq!(offsets(&all), (all.first..=150).collect::<Vec<_>>());
    assert!(all.recovers(&Position {
        offset: 60,
        epoch: epoch.clone()
    }));
    assert!(
        !all.recovers(&Position {
            offset: 151,
            epoch: epoch.clone()
        }),
        "ahead"
    );
    // A plain publish: delivered without a position, not stored.
    bed.publish("h", "plain").await;
    assert_eq!(
        bed.next_at().await,
        ("h".to_owned(), "plain".to_owned(), None)
    );
    assert_eq!(bed.read("h", Query::Latest, 1).await.position.offset, 150);
}

/// The contract every backend keeps while its server is up.
async fn keeps_the_contract(mut bed: Bed) {
    // Order per publisher.
    bed.subscribe("c").await;
    for i in 0..200 {
        let ack = bed.broker.publish("c", Bytes::from(i.to_string()), None);
        if i == 199 {
            ack.await.expect("published");
        }
    }
    for i in 0..200 {
        assert_eq!(
            bed.next().await,
            ("c".to_owned(), i.to_string()),
            "in order"
        );
    }
    // Idempotent subscribe: one delivery per message.
    bed.subscribe("c").await;
    bed.publish("c", "once").await;
    bed.publish("c", "marker").await;
    assert_eq!(bed.next().await.1, "once");
    assert_eq!(bed.next().await.1, "marker", "no second copy of `once`");
    // Only subscribed channels are delivered; unsubscribe releases. Requests keep their
    // order, so once the subscribe after it is answered, the unsubscribe holds.
    bed.subscriptions.unsubscribe("c");
    bed.subscribe("d").await;
    bed.publish("nobody", "x").await;
    bed.publish("c", "after unsubscribe").await;
    bed.publish("d", "to d").await;
    assert_eq!(bed.next().await, ("d".to_owned(), "to d".to_owned()));
    assert!(bed.inbox.try_recv().is_err(), "nothing else arrived");
    assert!(bed.broker.is_ready());
}

/// The contract while the server is down, and after it is back.
async fn survives_an_outage(mut bed: Bed) {
    bed.subscribe("kept").await;
    match &mut bed.backend {
        Backend::Embedded => unreachable!("the embedded broker has no server"),
        Backend::Redis(r) => r.kill().await,
        Backend::Cluster(c) => {
            for m in &mut c.masters {
                m.kill().await;
            }
        }
    }
    let broker = bed.broker.clone();
    eventually("readiness to turn false", async || !broker.is_ready()).await;
    let published = tokio::time::timeout(
        PATIENCE,
        bed.broker.publish("kept", Bytes::from("lost"), None),
    )
    .await
    .expect("a publish answers while the server is down");
    assert!(
        matches!(published, Err(BrokerError::Unavailable(_))),
        "{published:?}"
    );
    let read = tokio::time::timeout(
        PATIENCE,
        bed.broker.history("kept", Query::Latest, 1, HISTORY),
    )
    .await
    .expect("a history read answers while the server is down");
    assert!(matches!(read, Err(BrokerError::Unavailable(_))), "{read:?}");
    let subscribed = tokio::time::timeout(PATIENCE, bed.subscriptions.subscribe("new"))
        .await
        .expect("a subscribe answers while the server is down");
    assert!(
        matches!(subscribed, Err(BrokerError::Unavailable(_))),
        "{subscribed:?}"
    );
    match &mut bed.backend {
        Backend::Embedded => unreachable!(),
        Backend::Redis(r) => r.restart().await,
        Backend::Cluster(c) => {
            for m in &mut c.masters {
                m.restart().await;
            }
            c.wait_ok().await;
        }
    }
    eventually("readiness to come back", async || broker.is_ready()).await;
    bed.publish("kept", "back").await;
    assert_eq!(bed.next().await, ("kept".to_owned(), "back".to_owned()));
}

#[tokio::test]
async fn embedded_broker_keeps_the_contract() {
    keeps_the_contract(Bed::start(Backend::Embedded).await).await;
}

#[tokio::test]
async fn redis_broker_keeps_the_contract() {
    keeps_the_contract(Bed::start(Backend::Redis(RedisServer::start().await)).await).await;
}

#[tokio::test]
async fn redis_cluster_broker_keeps_the_contract() {
    keeps_the_contract(Bed::start(Backend::Cluster(RedisCluster::start(3).await)).await).await;
}

#[tokio::test]
async fn embedded_broker_keeps_the_history_contract() {
    keeps_the_history_contract(Bed::start(Backend::Embedded).await).await;
}

#[tokio::test]
async fn redis_broker_keeps_the_history_contract() {
    keeps_the_history_contract(Bed::start(Backend::Redis(RedisServer::start().await)).await).await;
}

#[tokio::test]
async fn redis_cluster_broker_keeps_the_history_contract() {
    keeps_the_history_contract(Bed::start(Backend::Cluster(RedisCluster::start(3).await)).await)
        .await;
}

#[tokio::test]
async fn redis_broker_survives_an_outage() {
    survives_an_outage(Bed::start(Backend::Redis(RedisServer::start().await)).await).await;
}

#[tokio::test]
async fn redis_cluster_broker_survives_an_outage() {
    survives_an_outage(Bed::start(Backend::Cluster(RedisCluster::start(3).await)).await).await;
}

/// Two nodes' presence over one store (for the embedded store: one node, itself).
async fn presence_keeps_the_contract(a: Arc<dyn Presence>, b: Option<Arc<dyn Presence>>) {
    a.connected(1, "ann", 1_000);
    a.joined(1, "room", Some("ann"));
    a.joined(2, "room", None);
    if let Some(b) = &b {
        b.connected(7, "ann", 2_000);
        b.joined(7, "room", Some("ann"));
    }
    let want_conns = if b.is_some() { 2 } else { 1 };
    let want_subs = want_conns + 1;
    let count = |p: Arc<dyn Presence>| async move {
        let users = p.user("ann").await.expect("user query").len();
        let subs = p.channel("room").await.expect("channel query").len();
        (users, subs)
    };
    // Updates are written behind the sessions (never blocking them): wait for them to land.
    eventually("the entries to land", async || {
        count(a.clone()).await == (want_conns, want_subs)
    })
    .await;
    let ann = a.user("ann").await.unwrap();
    let mine = ann
        .iter()
        .find(|e| e.node == "a")
        .expect("this node's entry");
    assert_eq!((mine.conn, mine.connected_at), (1, 1_000));
    let room = a.channel("room").await.unwrap();
    assert!(
        room.iter().any(|s| s.conn == 2 && s.user.is_none()),
        "{room:?}"
    );
    // Leaving and disconnecting remove the entries; a shutdown removes a node's all.
    a.left(2, "room", None);
    a.disconnected(1, "ann", 1_000);
    a.left(1, "room", Some("ann"));
    eventually("the entries to go", async || {
        count(a.clone()).await == (want_conns - 1, want_subs - 2)
    })
    .await;
    if let Some(b) = &b {
        b.shutdown().await;
        eventually("the stopped node's entries to go", async || {
            count(a.clone()).await == (0, 0)
        })
        .await;
    }
    assert!(a.user("nobody").await.unwrap().is_empty());
}

#[tokio::test]
async fn embedded_presence_keeps_the_contract() {
    let a = presence::start(None, "", "a", Duration::from_secs(30)).unwrap();
    presence_keeps_the_contract(a, None).await;
}

#[tokio::test]
async fn redis_presence_keeps_the_contract() {
    let redis = RedisServer::start().await;
    let target = RedisTarget::Single(redis.url());
    let a = presence::start(Some(&target), "cf:", "a", Duration::from_secs(30)).unwrap();
    let b = presence::start(Some(&target), "cf:", "b", Duration::from_secs(30)).unwrap();
    presence_keeps_the_contract(a, Some(b)).await;
}

#[tokio::test]
async fn redis_cluster_presence_keeps_the_contract() {
    let cluster = RedisCluster::start(3).await;
    let target = RedisTarget::Cluster(cluster.seeds());
    let a = presence::start(Some(&target), "cf:", "a", Duration::from_secs(30)).unwrap();
    let b = presence::start(Some(&target), "cf:", "b", Duration::from_secs(30)).unwrap();
    presence_keeps_the_contract(a, Some(b)).await;
}
