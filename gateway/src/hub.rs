//! The local subscription hub: which sessions on this node receive which channel.
//!
//! Channels are spread over shards, each behind its own lock, so subscribes on different
//! channels do not contend and a fan-out only blocks changes to its own shard. Subscribers of a
//! channel are kept in delivery groups (by tenant, or a key a plugin chose): each message is
//! prepared and encoded once per group and the same bytes are queued for every member.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};

use futures_util::future::BoxFuture;

use crate::broker::{Broker, BrokerError};
use crate::outbox::Outbox;
use crate::protocol::{self, Frame};

/// Identifies one connection on this node.
pub type ConnId = u64;

/// A delivery group: subscribers of one tenant, optionally narrowed by a key a plugin chose.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Group {
    /// The subscribers' tenant, if any.
    pub tenant: Option<Arc<str>>,
    /// The key the subscribe hook chose; empty for the tenant's default group.
    pub key: Arc<str>,
}

/// A shared delivery group identity.
pub type GroupKey = Arc<Group>;

const SHARDS: usize = 64;

/// What a delivery hook decides for one group.
pub enum Prepared {
    /// Deliver the message as published.
    Unchanged,
    /// Deliver this JSON text instead.
    Rewritten(Vec<u8>),
    /// Deliver nothing to this group.
    Skip,
}

/// Hands out the deliver hook to use for one message, so a hot swap never splits a message
/// between two versions.
pub trait DeliverHooks: Send + Sync {
    /// The hook for the next message.
    fn current(&self) -> Arc<dyn DeliverHook>;
}

/// Prepares a message for one delivery group; the plugin runtime implements it.
pub trait DeliverHook: Send + Sync {
    /// Decides what `group` receives of `data` (valid JSON) published on `channel`.
    fn prepare(&self, channel: &str, group: &Group, data: &[u8]) -> Prepared;
}

#[derive(Default)]
struct Channel {
    groups: HashMap<GroupKey, HashMap<ConnId, Outbox>>,
}

type Shard = HashMap<Arc<str>, Channel>;

/// Counters the hub keeps about one fan-out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Frames queued for sessions.
    pub delivered: usize,
    /// Frames refused because a session's queue was full (that session is being closed).
    pub dropped: usize,
}

/// Channel -> local subscribers, with node-level reference counting towards the broker.
pub struct Hub {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    broker: Arc<dyn Broker>,
    deliver: Option<Arc<dyn DeliverHooks>>,
}

impl Hub {
    /// Creates a hub that subscribes channels on `broker` as local demand appears.
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            broker,
            deliver: None,
        }
    }

    /// Runs the hook `hooks` hands out once per message per delivery group before encoding.
    pub fn with_deliver_hook(mut self, hook: Arc<dyn DeliverHooks>) -> Self {
        self.deliver = Some(hook);
        self
    }

    fn shard(&self, channel: &str) -> &RwLock<Shard> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// Adds `conn` to `channel` in `group`. The returned future resolves once the broker
    /// delivers the channel to this node; if it fails the caller must [`Hub::unsubscribe`].
    pub fn subscribe(
        &self,
        channel: &str,
        conn: ConnId,
        group: GroupKey,
        outbox: &Outbox,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        let mut shard = self.shard(channel).write().expect("hub lock poisoned");
        let entry = shard.entry(Arc::from(channel)).or_default();
        // A re-subscribe may move the connection to another group.
        for members in entry.groups.values_mut() {
            members.remove(&conn);
        }
        entry.groups.retain(|_, m| !m.is_empty());
        entry
            .groups
            .entry(group)
            .or_default()
            .insert(conn, outbox.clone());
        // Called under the shard lock so the broker sees subscribes and unsubscribes of a
        // channel in the order they happened here.
        self.broker.subscribe(channel)
    }

    /// Removes `conn` from `channel`; returns whether it was subscribed. The last local
    /// subscriber leaving releases the channel at the broker.
    pub fn unsubscribe(&self, channel: &str, conn: ConnId) -> bool {
        let mut shard = self.shard(channel).write().expect("hub lock poisoned");
        let Some(entry) = shard.get_mut(channel) else {
            return false;
        };
        let mut found = false;
        entry.groups.retain(|_, members| {
            found |= members.remove(&conn).is_some();
            !members.is_empty()
        });
        if entry.groups.is_empty() {
            shard.remove(channel);
            self.broker.unsubscribe(channel);
        }
        found
    }

    /// Delivers a broker message, `payload` on `channel`, to every local subscriber of it.
    pub fn dispatch(&self, channel: &str, payload: &[u8]) -> Fanout {
        let shard = self.shard(channel).read().expect("hub lock poisoned");
        let Some(entry) = shard.get(channel) else {
            return Fanout::default();
        };
        let data = protocol::normalize_payload(payload);
        let mut shared: Option<Frame> = None;
        let mut stats = Fanout::default();
        let hook = self.deliver.as_ref().map(|h| h.current());
        for (group, members) in &entry.groups {
            let prepared = match &hook {
                Some(hook) => hook.prepare(channel, group, &data),
                None => Prepared::Unchanged,
            };
            let frame = match prepared {
                Prepared::Skip => continue,
                Prepared::Rewritten(data) => protocol::message(channel, &data),
                Prepared::Unchanged => shared
                    .get_or_insert_with(|| protocol::message(channel, &data))
                    .clone(),
            };
            for outbox in members.values() {
                if outbox.push(frame.clone()) {
                    stats.delivered += 1;
                } else {
                    stats.dropped += 1;
                }
            }
        }
        stats
    }

    /// Number of channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().expect("hub lock poisoned").len())
            .sum()
    }

    /// Channels with at least one local subscriber (for resubscription after a broker outage).
    pub fn channels(&self) -> Vec<Arc<str>> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .expect("hub lock poisoned")
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Local subscriber count of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        let shard = self.shard(channel).read().expect("hub lock poisoned");
        shard
            .get(channel)
            .map_or(0, |c| c.groups.values().map(HashMap::len).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBroker;
    use crate::outbox::{CloseReason, outbox};

    /// An inbox that drops everything: these tests call `dispatch` themselves.
    struct Nowhere;

    impl crate::broker::Inbox for Nowhere {
        fn deliver(&self, _channel: &str, _payload: &[u8]) {}
    }

    fn hub() -> Hub {
        Hub::new(Arc::new(MemoryBroker::new(Arc::new(Nowhere))))
    }

    #[tokio::test]
    async fn encodes_once_and_shares_the_bytes() {
        let hub = hub();
        let (a, mut ra) = outbox(8);
        let (b, mut rb) = outbox(8);
        hub.subscribe("c", 1, GroupKey::default(), &a)
            .await
            .unwrap();
        hub.subscribe("c", 2, GroupKey::default(), &b)
            .await
            .unwrap();
        let stats = hub.dispatch("c", b"1");
        assert_eq!(
            stats,
            Fanout {
                delivered: 2,
                dropped: 0
            }
        );
        let (fa, fb) = (ra.recv().await.unwrap(), rb.recv().await.unwrap());
        assert_eq!(fa.as_str(), r#"{"type":"message","channel":"c","data":1}"#);
        assert_eq!(
            fa.as_str().as_ptr(),
            fb.as_str().as_ptr(),
            "one allocation shared"
        );
    }

    #[tokio::test]
    async fn last_unsubscribe_drops_the_channel() {
        let hub = hub();
        let (a, _ra) = outbox(8);
        hub.subscribe("c", 1, GroupKey::default(), &a)
            .await
            .unwrap();
        hub.subscribe(
            "c",
            1,
            Arc::new(Group {
                tenant: None,
                key: "g".into(),
            }),
            &a,
        )
        .await
        .unwrap();
        assert_eq!(
            hub.subscriber_count("c"),
            1,
            "re-subscribe moves, not duplicates"
        );
        assert!(hub.unsubscribe("c", 1));
        assert!(!hub.unsubscribe("c", 1));
        assert_eq!(hub.channel_count(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_closes_only_that_session() {
        let hub = hub();
        let (slow, slow_rx) = outbox(1);
        let (fast, mut fast_rx) = outbox(8);
        hub.subscribe("c", 1, GroupKey::default(), &slow)
            .await
            .unwrap();
        hub.subscribe("c", 2, GroupKey::default(), &fast)
            .await
            .unwrap();
        hub.dispatch("c", b"1");
        let stats = hub.dispatch("c", b"2");
        assert_eq!(
            stats,
            Fanout {
                delivered: 1,
                dropped: 1
            }
        );
        assert_eq!(slow_rx.closed().await, CloseReason::SlowConsumer);
        assert!(fast_rx.recv().await.is_some());
        assert!(fast_rx.recv().await.is_some());
    }
}
