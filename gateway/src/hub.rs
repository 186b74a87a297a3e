//! The local subscription hub: which sessions on this node receive which channel.
//!
//! Channels are spread over shards, each behind its own lock, so subscribes on different
//! channels do not contend and a fan-out only blocks changes to its own shard. Subscribers of a
//! channel are kept in delivery groups (by tenant, or a key a plugin chose): each message is
//! prepared and encoded once per group and the same bytes are queued for every member.
//!
//! A group whose channel is bound to a plugin is prepared by the plugin's deliver hook. Hooks
//! run with no lock held: the shard is locked to find the groups, released while the hooks
//! run, and locked again to queue what they produced, so a hook never blocks subscribes or
//! another fan-out. A hook runs on the thread that dispatches the message (the broker's
//! receiving task) while it is fast; a hook whose calls take longer than
//! `plugins.deliver_inline_max_us` is moved to a lane of its own ([`isolation`]), so one slow
//! tenant's plugin slows that tenant's deliveries, not the node's.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::broker::{BrokerError, Subscriptions};
use crate::history::Position;
use crate::membership::{self, Event};
use crate::protocol::CloseReason;
use crate::protocol::{self, Frame};

pub mod isolation;

pub use isolation::Placement;

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

/// Where the hub queues a subscriber's frames: its session's outbound queue (`ws::outbox`),
/// or a test's.
pub trait Sink: Send + Sync {
    /// Queues a frame without waiting; false when it was not queued (the queue was full: the
    /// session is being closed as a slow consumer; or the session is gone).
    fn push(&self, frame: Frame) -> bool;

    /// Queues a delivery of a message at `position` (on a channel with history); a sink
    /// that merges live deliveries with history (a recovering subscription) needs it.
    fn deliver(&self, frame: Frame, _position: Option<&Position>) -> bool {
        self.push(frame)
    }

    /// Asks the session to close; the first reason wins.
    fn close(&self, reason: CloseReason);

    /// Wakes the session to read the commands waiting for it (`crate::connections`).
    fn notify(&self) {}

    /// The subscriber's deliver hook failed on the message at `position` (a channel with
    /// history): nothing was delivered, and a sink that can (a subscription with history,
    /// `ws::recovery`) has the session catch up from history, which runs the hook again.
    fn missed(&self, _position: &Position) {}

    /// The hub no longer delivers to this sink (its subscription ended or moved to another).
    fn retired(&self) {}
}

const SHARDS: usize = 64;

/// What a delivery hook decides for one group.
pub enum Prepared {
    /// Deliver the message as published.
    Unchanged,
    /// Deliver this JSON text instead.
    Rewritten(Vec<u8>),
    /// Deliver nothing to this group.
    Skip,
    /// The hook failed: nothing is delivered to this group (failing open could leak what a
    /// filter hides); on a channel with history its members catch up from history
    /// ([`Sink::missed`]), so a failure that passes loses them nothing.
    Failed,
}

/// Hands out the deliver hooks to use for one message, so a hot swap never splits a message
/// between two versions.
pub trait DeliverHooks: Send + Sync {
    /// The hooks for the next message.
    fn current(&self) -> Arc<dyn DeliverHook>;
}

/// Finds the hook that prepares a channel's messages for a group; the plugin runtime
/// implements it.
pub trait DeliverHook: Send + Sync {
    /// The hook for `group` on `channel`; `None` delivers the message unchanged.
    fn for_group(&self, channel: &str, group: &Group) -> Option<Arc<dyn GroupHook>>;
}

/// One plugin's deliver hook.
pub trait GroupHook: Send + Sync + 'static {
    /// Decides what `group` receives of `data` (valid JSON) published on `channel`.
    fn prepare(&self, channel: &str, group: &Group, data: &[u8]) -> Prepared;

    /// Where the hub runs this hook's calls (kept with the hook, which outlives a message).
    fn placement(&self) -> &Placement;

    /// The hook's name for logs and metrics (plugin, and tenant when bound per tenant).
    fn describe(&self) -> String;
}

#[derive(Default)]
struct Channel {
    groups: HashMap<GroupKey, HashMap<ConnId, Arc<dyn Sink>>>,
}

type Shard = HashMap<Arc<str>, Channel>;

/// What a fan-out carries besides its data, which decides the frame subscribers get: a
/// published message (at its position, on a channel with history) or a join/leave event.
#[derive(Debug, Clone, Copy)]
enum Carried<'a> {
    Message(Option<&'a Position>),
    Event(&'a Event),
}

impl<'a> Carried<'a> {
    fn position(self) -> Option<&'a Position> {
        match self {
            Carried::Message(position) => position,
            Carried::Event(_) => None,
        }
    }

    /// The frame for `data`: as published, or as a deliver hook `rewritten` it (an event's
    /// rewrite travels as its `info`).
    fn frame(self, channel: &str, data: &[u8], rewritten: bool) -> Frame {
        match self {
            Carried::Message(position) => protocol::message(channel, data, position),
            Carried::Event(event) => protocol::event(channel, event, rewritten.then_some(data)),
        }
    }

    /// This, owned, for an isolation lane's queue.
    fn to_owned(self) -> Carry {
        match self {
            Carried::Message(position) => Carry::Message(position.cloned()),
            Carried::Event(event) => Carry::Event(event.clone()),
        }
    }
}

/// [`Carried`], owned.
#[derive(Debug)]
enum Carry {
    Message(Option<Position>),
    Event(Event),
}

impl Carry {
    fn as_carried(&self) -> Carried<'_> {
        match self {
            Carry::Message(position) => Carried::Message(position.as_ref()),
            Carry::Event(event) => Carried::Event(event),
        }
    }
}

/// Counters the hub keeps about one fan-out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Frames queued for sessions.
    pub delivered: usize,
    /// Frames refused because a session's queue was full (that session is being closed).
    pub dropped: usize,
}

impl Fanout {
    fn add(&mut self, other: Fanout) {
        self.delivered += other.delivered;
        self.dropped += other.dropped;
    }
}

/// The channel -> group -> subscriber table, shared with the isolation lanes.
struct Table {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
}

impl Table {
    fn shard(&self, channel: &str) -> &RwLock<Shard> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// Queues what each group is to receive of a message or event on `channel` (`data` as
    /// published) for its members now, under one lock. `shared` holds the unchanged frame
    /// once a group needed it.
    fn deliver_prepared(
        &self,
        channel: &str,
        data: &[u8],
        carried: Carried<'_>,
        prepared: impl IntoIterator<Item = (GroupKey, Prepared)>,
        shared: &mut Option<Frame>,
    ) -> Fanout {
        let mut stats = Fanout::default();
        let mut shard = None;
        let position = carried.position();
        for (group, prepared) in prepared {
            let frame = match prepared {
                Prepared::Skip => continue,
                Prepared::Failed => None,
                Prepared::Rewritten(data) => Some(carried.frame(channel, &data, true)),
                Prepared::Unchanged => Some(
                    shared
                        .get_or_insert_with(|| carried.frame(channel, data, false))
                        .clone(),
                ),
            };
            let shard =
                shard.get_or_insert_with(|| self.shard(channel).read().expect("hub lock poisoned"));
            let Some(members) = shard.get(channel).and_then(|c| c.groups.get(&group)) else {
                continue;
            };
            match (frame, position) {
                (Some(frame), _) => stats.add(push_all(members, &frame, position)),
                (None, Some(position)) => members.values().for_each(|s| s.missed(position)),
                // Nothing to catch up from: lost for this group, as the hook's failure says
                // (logged and counted where it failed).
                (None, None) => {}
            }
        }
        stats
    }
}

fn push_all(
    members: &HashMap<ConnId, Arc<dyn Sink>>,
    frame: &Frame,
    position: Option<&Position>,
) -> Fanout {
    let mut stats = Fanout::default();
    for sink in members.values() {
        if sink.deliver(frame.clone(), position) {
            stats.delivered += 1;
        } else {
            stats.dropped += 1;
        }
    }
    stats
}

/// Channel -> local subscribers, with node-level reference counting towards the broker.
pub struct Hub {
    table: Arc<Table>,
    subscriptions: Subscriptions,
    deliver: Option<Arc<dyn DeliverHooks>>,
    /// Hook calls longer than this move the hook to an isolation lane.
    inline_max: Duration,
    lanes: OnceLock<Arc<isolation::Lanes>>,
}

impl Hub {
    /// Creates a hub that asks `subscriptions` for channels as local demand appears.
    pub fn new(subscriptions: Subscriptions) -> Self {
        Self {
            table: Arc::new(Table {
                shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
                hasher: RandomState::new(),
            }),
            subscriptions,
            deliver: None,
            inline_max: Duration::from_millis(1),
            lanes: OnceLock::new(),
        }
    }

    /// Runs the hooks `hooks` hands out once per message per delivery group before encoding;
    /// a hook whose call takes longer than `inline_max` is moved to an isolation lane.
    pub fn with_deliver_hook(mut self, hooks: Arc<dyn DeliverHooks>, inline_max: Duration) -> Self {
        self.deliver = Some(hooks);
        self.inline_max = inline_max;
        self
    }

    fn shard(&self, channel: &str) -> &RwLock<Shard> {
        self.table.shard(channel)
    }

    /// Adds `conn` to `channel` in `group`. The returned future resolves once the broker
    /// delivers the channel to this node; if it fails the caller must [`Hub::unsubscribe`].
    pub fn subscribe(
        &self,
        channel: &str,
        conn: ConnId,
        group: GroupKey,
        sink: &Arc<dyn Sink>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        let mut shard = self.shard(channel).write().expect("hub lock poisoned");
        let entry = shard.entry(Arc::from(channel)).or_default();
        // A re-subscribe may move the connection to another group.
        for members in entry.groups.values_mut() {
            if let Some(old) = members.remove(&conn)
                && !Arc::ptr_eq(&old, sink)
            {
                old.retired();
            }
        }
        entry.groups.retain(|_, m| !m.is_empty());
        entry
            .groups
            .entry(group)
            .or_default()
            .insert(conn, sink.clone());
        // Asked under the shard lock so the broker sees subscribes and unsubscribes of a
        // channel in the order they happened here; asked for every subscriber, so each one's
        // reply waits until the node really receives the channel.
        self.subscriptions.subscribe(channel)
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
            if let Some(old) = members.remove(&conn) {
                old.retired();
                found = true;
            }
            !members.is_empty()
        });
        if entry.groups.is_empty() {
            shard.remove(channel);
            self.subscriptions.unsubscribe(channel);
        }
        found
    }

    /// Delivers a broker message, `payload` on `channel` (at `position` if the channel keeps
    /// history), to every local subscriber of it; a payload in the join/leave envelope
    /// ([`membership`]) is delivered as that event.
    pub fn dispatch(&self, channel: &str, payload: &[u8], position: Option<&Position>) -> Fanout {
        match membership::open(payload) {
            None => {
                let data = protocol::normalize_payload(payload);
                self.fan_out(channel, &data, Carried::Message(position))
            }
            Some(Some((event, json))) => self.fan_out(channel, json, Carried::Event(&event)),
            Some(None) => {
                tracing::debug!(%channel, "malformed join/leave event dropped");
                Fanout::default()
            }
        }
    }

    /// Groups without a hook get `data` at once, under the shard's read lock; the hooks of
    /// the others run after it is released (or on their isolation lanes), and what they
    /// produced is queued under the lock again. Counts what was queued here, not on lanes.
    fn fan_out(&self, channel: &str, data: &[u8], carried: Carried<'_>) -> Fanout {
        let position = carried.position();
        let hooks = self.deliver.as_ref().map(|h| h.current());
        let mut shared: Option<Frame> = None;
        let mut stats = Fanout::default();
        let mut hooked: Vec<(GroupKey, Arc<dyn GroupHook>)> = Vec::new();
        {
            let shard = self.shard(channel).read().expect("hub lock poisoned");
            let Some(entry) = shard.get(channel) else {
                return stats;
            };
            for (group, members) in &entry.groups {
                if let Some(hook) = hooks.as_ref().and_then(|h| h.for_group(channel, group)) {
                    hooked.push((group.clone(), hook));
                    continue;
                }
                let frame = shared.get_or_insert_with(|| carried.frame(channel, data, false));
                stats.add(push_all(members, frame, position));
            }
        }
        let mut prepared = Vec::with_capacity(hooked.len());
        for (group, hook) in hooked {
            if hook.placement().is_isolated()
                && self
                    .lanes()
                    .queue(hook.clone(), channel, group.clone(), data, carried)
            {
                continue;
            }
            let started = Instant::now();
            prepared.push((group.clone(), hook.prepare(channel, &group, data)));
            hook.placement()
                .record_inline(&*hook, started.elapsed(), self.inline_max);
        }
        stats.add(
            self.table
                .deliver_prepared(channel, data, carried, prepared, &mut shared),
        );
        stats
    }

    /// What `group` receives of `data` (JSON text) on `channel`, prepared now by the deliver
    /// hook a live delivery would use: how stored messages reach a subscriber, so history
    /// passes the same filters and rewrites as live traffic.
    pub fn prepare(&self, channel: &str, group: &Group, data: &[u8]) -> Prepared {
        let hook = self
            .deliver
            .as_ref()
            .and_then(|h| h.current().for_group(channel, group));
        match hook {
            Some(hook) => hook.prepare(channel, group, data),
            None => Prepared::Unchanged,
        }
    }

    fn lanes(&self) -> &isolation::Lanes {
        self.lanes
            .get_or_init(|| isolation::Lanes::start(self.table.clone(), self.inline_max))
    }

    /// Number of channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.table
            .shards
            .iter()
            .map(|s| s.read().expect("hub lock poisoned").len())
            .sum()
    }

    /// Channels with at least one local subscriber (for resubscription after a broker outage).
    pub fn channels(&self) -> Vec<Arc<str>> {
        self.table
            .shards
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

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(lanes) = self.lanes.get() {
            lanes.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBroker;
    use std::sync::Mutex;

    /// An inbox that drops everything: these tests call `dispatch` themselves.
    struct Nowhere;

    impl crate::broker::Inbox for Nowhere {
        fn deliver(&self, _channel: &str, _payload: &[u8], _position: Option<&Position>) {}
    }

    fn hub() -> Hub {
        let (subscriptions, requests) = crate::broker::subscriptions();
        // The broker serves the subscription requests; these tests dispatch by hand.
        let _broker = MemoryBroker::start(requests, Arc::new(Nowhere));
        Hub::new(subscriptions)
    }

    /// A sink that keeps up to `room` frames, and how it was closed.
    #[derive(Default)]
    struct Collect {
        room: usize,
        frames: Mutex<Vec<Frame>>,
        closed: Mutex<Option<CloseReason>>,
    }

    impl Collect {
        fn with_room(room: usize) -> Arc<Self> {
            Arc::new(Self {
                room,
                ..Self::default()
            })
        }

        fn frames(&self) -> Vec<Frame> {
            self.frames.lock().unwrap().clone()
        }
    }

    impl Sink for Collect {
        fn push(&self, frame: Frame) -> bool {
            let mut frames = self.frames.lock().unwrap();
            if frames.len() >= self.room {
                drop(frames);
                self.close(CloseReason::SlowConsumer);
                return false;
            }
            frames.push(frame);
            true
        }

        fn close(&self, reason: CloseReason) {
            self.closed.lock().unwrap().get_or_insert(reason);
        }
    }

    fn sink(c: &Arc<Collect>) -> Arc<dyn Sink> {
        c.clone()
    }

    #[tokio::test]
    async fn encodes_once_and_shares_the_bytes() {
        let hub = hub();
        let (a, b) = (Collect::with_room(8), Collect::with_room(8));
        hub.subscribe("c", 1, GroupKey::default(), &sink(&a))
            .await
            .unwrap();
        hub.subscribe("c", 2, GroupKey::default(), &sink(&b))
            .await
            .unwrap();
        let stats = hub.dispatch("c", b"1", None);
        assert_eq!(
            stats,
            Fanout {
                delivered: 2,
                dropped: 0
            }
        );
        let (fa, fb) = (a.frames()[0].clone(), b.frames()[0].clone());
        assert_eq!(fa.as_str(), r#"{"type":"message","channel":"c","data":1}"#);
        assert_eq!(
            fa.as_str().as_ptr(),
            fb.as_str().as_ptr(),
            "one allocation shared"
        );
    }

    /// A deliver hook by tenant: skips `beta`, rewrites for `cora`, passes the rest.
    struct ByTenant(Placement);

    impl DeliverHooks for ByTenant {
        fn current(&self) -> Arc<dyn DeliverHook> {
            Arc::new(ByTenant(Placement::default()))
        }
    }

    impl DeliverHook for ByTenant {
        fn for_group(&self, _channel: &str, _group: &Group) -> Option<Arc<dyn GroupHook>> {
            Some(Arc::new(ByTenant(Placement::default())))
        }
    }

    impl GroupHook for ByTenant {
        fn prepare(&self, _channel: &str, group: &Group, data: &[u8]) -> Prepared {
            match group.tenant.as_deref() {
                Some("beta") => Prepared::Skip,
                Some("cora") => Prepared::Rewritten(format!("{{\"saw\":{}}}", data.len()).into()),
                _ => Prepared::Unchanged,
            }
        }

        fn placement(&self) -> &Placement {
            &self.0
        }

        fn describe(&self) -> String {
            "by-tenant".into()
        }
    }

    #[tokio::test]
    async fn events_go_through_the_deliver_hook_and_become_join_and_leave_frames() {
        let hub = hub().with_deliver_hook(
            Arc::new(ByTenant(Placement::default())),
            Duration::from_secs(1),
        );
        let tenants = ["acme", "beta", "cora"];
        let sinks: Vec<_> = tenants.iter().map(|_| Collect::with_room(8)).collect();
        for (i, (tenant, s)) in tenants.iter().zip(&sinks).enumerate() {
            let group = Arc::new(Group {
                tenant: Some((*tenant).into()),
                key: "".into(),
            });
            hub.subscribe("room", i as u64, group, &sink(s))
                .await
                .unwrap();
        }
        let who = crate::identity::Identity {
            user: Some("al\"ice".into()),
            tenant: Some("acme".into()),
            claims: "{}".into(),
        };
        let wire = Event::of(membership::Change::Join, &who).envelope();
        let data_len = wire.len() - membership::ENVELOPE.len();
        assert_eq!(hub.dispatch("room", &wire, None).delivered, 2);
        let leave = Event::of(
            membership::Change::Leave,
            &crate::identity::Identity::anonymous(),
        );
        hub.dispatch("room", &leave.envelope(), None);
        // Not an event: dropped, never delivered as a message.
        assert_eq!(
            hub.dispatch("room", b"\x01sy-e {\"event\":1}", None),
            Fanout::default()
        );
        let texts = |s: &Collect| {
            s.frames()
                .iter()
                .map(|f| f.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            texts(&sinks[0]),
            [
                r#"{"type":"join","channel":"room","user":"al\"ice"}"#,
                r#"{"type":"leave","channel":"room","user":null}"#
            ]
        );
        assert!(sinks[1].frames().is_empty());
        assert_eq!(
            texts(&sinks[2])[0],
            format!(
                r#"{{"type":"join","channel":"room","user":"al\"ice","info":{{"saw":{data_len}}}}}"#
            )
        );
    }

    #[tokio::test]
    async fn last_unsubscribe_drops_the_channel() {
        let hub = hub();
        let a = sink(&Collect::with_room(8));
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
        let (slow, fast) = (Collect::with_room(1), Collect::with_room(8));
        hub.subscribe("c", 1, GroupKey::default(), &sink(&slow))
            .await
            .unwrap();
        hub.subscribe("c", 2, GroupKey::default(), &sink(&fast))
            .await
            .unwrap();
        hub.dispatch("c", b"1", None);
        let stats = hub.dispatch("c", b"2", None);
        assert_eq!(
            stats,
            Fanout {
                delivered: 1,
                dropped: 1
            }
        );
        assert_eq!(
            *slow.closed.lock().unwrap(),
            Some(CloseReason::SlowConsumer)
        );
        assert_eq!(fast.frames().len(), 2);
        assert_eq!(*fast.closed.lock().unwrap(), None);
    }
}
