//! The embedded broker: one node, in-process, no external service.
//!
//! History lives in a bounded ring per channel. A channel's ring is locked for the whole of a
//! publish (number, store, deliver), and a history read takes the same lock, so positions
//! follow delivery order and a reader that subscribed first sees every message either in the
//! ring or delivered. Rings die with the process: a restarted node gives every channel a new
//! epoch.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{Ack, Broker, BrokerError, Inbox, Request, Requests};
use crate::history::{self, HistoryOptions, Position, Query, Read, Stored};

/// How often rings whose channel went quiet for longer than its TTL are freed (a ring also
/// checks its own expiry whenever it is used, so this only bounds memory).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Loops every publish on a subscribed channel straight back to this node's fan-out.
pub struct MemoryBroker {
    inbox: Arc<dyn Inbox>,
    /// Channels the node receives, as the hub asked for them.
    subscribed: Arc<RwLock<HashSet<String>>>,
    /// The history of every channel that has one.
    rings: Arc<Rings>,
}

/// Channel -> its history ring. The map's lock is held only to find or add a ring.
#[derive(Default)]
struct Rings(Mutex<HashMap<Arc<str>, Arc<Mutex<Ring>>>>);

/// One channel's history.
struct Ring {
    epoch: Arc<str>,
    /// The last offset given out (0 before the first message).
    offset: u64,
    messages: VecDeque<Stored>,
    /// When the history is lost unless published to again.
    expires: Instant,
}

impl Ring {
    fn new(ttl: Duration) -> Self {
        Self {
            epoch: history::new_epoch(),
            offset: 0,
            messages: VecDeque::new(),
            expires: Instant::now() + ttl,
        }
    }

    /// Starts a new epoch if the history expired.
    fn refresh(&mut self, ttl: Duration) {
        if self.expires <= Instant::now() {
            *self = Ring::new(ttl);
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }

    fn store(&mut self, data: Bytes, options: HistoryOptions) -> Position {
        self.refresh(options.ttl);
        self.offset += 1;
        if self.messages.len() >= options.size {
            self.messages.pop_front();
        }
        self.messages.push_back(Stored {
            offset: self.offset,
            data,
        });
        self.expires = Instant::now() + options.ttl;
        self.position()
    }

    fn read(&mut self, query: Query, limit: usize, ttl: Duration) -> Read {
        self.refresh(ttl);
        let first = self.messages.front().map_or(self.offset + 1, |m| m.offset);
        let skip = match query {
            Query::After(after) => after.saturating_add(1).saturating_sub(first) as usize,
            Query::Latest => self.messages.len().saturating_sub(limit),
        };
        Read {
            messages: self
                .messages
                .iter()
                .skip(skip)
                .take(limit)
                .cloned()
                .collect(),
            position: self.position(),
            first,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update of a ring or the map completes before anything that could panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Rings {
    /// The ring of `channel`, made if it has none.
    fn get(&self, channel: &str, ttl: Duration) -> Arc<Mutex<Ring>> {
        let mut map = lock(&self.0);
        if let Some(ring) = map.get(channel) {
            return ring.clone();
        }
        let ring = Arc::new(Mutex::new(Ring::new(ttl)));
        map.insert(channel.into(), ring.clone());
        ring
    }

    /// Frees the rings that expired and that nobody is using.
    fn sweep(&self) {
        let now = Instant::now();
        lock(&self.0).retain(|_, ring| Arc::strong_count(ring) > 1 || lock(ring).expires > now);
    }
}

impl MemoryBroker {
    /// Starts the broker: a task applies `requests` in order; a publish on a subscribed
    /// channel is delivered to `inbox` before `publish` returns.
    pub fn start(requests: Requests, inbox: Arc<dyn Inbox>) -> Self {
        let subscribed = Arc::new(RwLock::new(HashSet::new()));
        let rings = Arc::new(Rings::default());
        tokio::spawn(serve(requests, subscribed.clone()));
        tokio::spawn(sweep(Arc::downgrade(&rings)));
        Self {
            inbox,
            subscribed,
            rings,
        }
    }

    fn is_subscribed(&self, channel: &str) -> bool {
        self.subscribed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(channel)
    }
}

/// Applies subscription requests until the broker is dropped.
async fn serve(mut requests: Requests, subscribed: Arc<RwLock<HashSet<String>>>) {
    while let Some(request) = requests.recv().await {
        let mut set = subscribed.write().unwrap_or_else(PoisonError::into_inner);
        match request {
            Request::Subscribe(channel, ack) => {
                set.insert(channel);
                let _ = ack.send(Ok(()));
            }
            Request::Unsubscribe(channel) => {
                set.remove(&channel);
            }
        }
    }
}

/// Frees expired rings until the broker is dropped.
async fn sweep(rings: std::sync::Weak<Rings>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.reset();
    loop {
        every.tick().await;
        match rings.upgrade() {
            Some(rings) => rings.sweep(),
            None => return,
        }
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, channel: &str, payload: Bytes, history: Option<HistoryOptions>) -> Ack {
        let Some(options) = history else {
            // The publisher pays for its own fan-out: that is the embedded broker's
            // back-pressure.
            if self.is_subscribed(channel) {
                self.inbox.deliver(channel, &payload, None);
            }
            return Ack::now(Ok(None));
        };
        let ring = self.rings.get(channel, options.ttl);
        let mut ring = lock(&ring);
        let position = ring.store(payload.clone(), options);
        // Delivered under the ring's lock: the next message's number waits for this one's
        // delivery, and a history read sees either both or what is delivered after it.
        if self.is_subscribed(channel) {
            self.inbox.deliver(channel, &payload, Some(&position));
        }
        Ack::now(Ok(Some(position)))
    }

    fn history(
        &self,
        channel: &str,
        query: Query,
        limit: usize,
        history: HistoryOptions,
    ) -> BoxFuture<'static, Result<Read, BrokerError>> {
        let ring = self.rings.get(channel, history.ttl);
        let read = lock(&ring).read(query, limit, history.ttl);
        futures_util::future::ready(Ok(read)).boxed()
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: HistoryOptions = HistoryOptions {
        size: 3,
        ttl: Duration::from_secs(60),
    };

    fn offsets(read: &Read) -> Vec<u64> {
        read.messages.iter().map(|m| m.offset).collect()
    }

    #[test]
    fn a_ring_keeps_the_newest_and_reads_after_an_offset() {
        let mut ring = Ring::new(OPTIONS.ttl);
        for i in 1..=5u8 {
            assert_eq!(
                ring.store(Bytes::from(vec![i]), OPTIONS).offset,
                u64::from(i)
            );
        }
        let all = ring.read(Query::After(0), 10, OPTIONS.ttl);
        assert_eq!(offsets(&all), [3, 4, 5]);
        assert_eq!((all.first, all.position.offset), (3, 5));
        assert_eq!(
            offsets(&ring.read(Query::After(3), 10, OPTIONS.ttl)),
            [4, 5]
        );
        assert_eq!(offsets(&ring.read(Query::After(3), 1, OPTIONS.ttl)), [4]);
        assert_eq!(
            offsets(&ring.read(Query::After(5), 10, OPTIONS.ttl)),
            [0u64; 0]
        );
        assert_eq!(
            offsets(&ring.read(Query::After(9), 10, OPTIONS.ttl)),
            [0u64; 0]
        );
        assert_eq!(offsets(&ring.read(Query::Latest, 2, OPTIONS.ttl)), [4, 5]);
    }

    #[test]
    fn an_expired_ring_starts_a_new_epoch() {
        let mut ring = Ring::new(OPTIONS.ttl);
        let before = ring.store(Bytes::from_static(b"1"), OPTIONS);
        ring.expires = Instant::now();
        let read = ring.read(Query::After(0), 10, OPTIONS.ttl);
        assert_ne!(read.position.epoch, before.epoch);
        assert_eq!((read.position.offset, read.first), (0, 1));
        assert!(!read.recovers(&before));
    }
}
