//! Fan-out lanes: the tasks that write deliveries to the sessions' sockets.
//!
//! A delivery does not wake its session's task: the first frame pushed into an empty outbox
//! lists the outbox with its lane, and the lane's task writes every listed outbox at the end
//! of its worker's turn: one task wake-up for a whole fan-out, and the frames an outbox got
//! meanwhile in one `writev`. One lane per runtime worker thread, so writes spread as sessions
//! do; each connection is written by one lane.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// Queues a lane writes before it lets the other tasks of its worker thread run (~1 ms of
/// `writev`s).
const FLUSHES_PER_TURN: usize = 256;

/// What a lane writes: an outbox with frames for its socket.
pub trait Flush: Send + Sync {
    /// Writes what is queued, or hands the rest to the session's task when the socket is full.
    fn flush(&self);
}

/// One lane: the outboxes that got a first frame since its task last ran.
pub struct Lane {
    listed: Mutex<Vec<Arc<dyn Flush>>>,
    ready: Notify,
    stopped: AtomicBool,
    /// Frames each of the lane's outboxes may hold (`limits.outbound_queue`).
    capacity: u32,
}

impl Lane {
    /// Frames each outbox this lane writes may hold.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    fn listed(&self) -> MutexGuard<'_, Vec<Arc<dyn Flush>>> {
        self.listed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists `outbox` for the lane's next turn.
    pub fn list(&self, outbox: Arc<dyn Flush>) {
        let mut listed = self.listed();
        listed.push(outbox);
        if listed.len() == 1 {
            drop(listed);
            self.ready.notify_one();
        }
    }

    async fn run(self: Arc<Self>) {
        let mut batch = Vec::new();
        loop {
            self.ready.notified().await;
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            // Write at the end of the worker's turn, not at the first push: `yield_now` resumes
            // only once the worker has run its other ready tasks and polled its sockets again,
            // so messages that reached the broker connection meanwhile join the same writes:
            // fewer, fuller `writev`s (docs/benchmarks.md, "end-of-turn writes"); the wait is
            // one turn, not a timer.
            tokio::task::yield_now().await;
            std::mem::swap(&mut batch, &mut *self.listed());
            for (i, outbox) in batch.drain(..).enumerate() {
                if i > 0 && i % FLUSHES_PER_TURN == 0 {
                    // A fan-out to many thousand local subscribers is that many syscalls: let
                    // the worker's other tasks (reads, the broker) run in between.
                    tokio::task::yield_now().await;
                }
                outbox.flush();
            }
        }
    }
}

/// A node's lanes, one per worker thread of its runtime.
pub struct Lanes(Box<[Arc<Lane>]>);

impl Lanes {
    /// Starts one lane per worker thread of the current runtime, for outboxes of at most
    /// `capacity` frames.
    pub fn start(capacity: usize) -> Self {
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let lanes: Box<[Arc<Lane>]> = (0..workers.max(1))
            .map(|_| {
                Arc::new(Lane {
                    listed: Mutex::new(Vec::new()),
                    ready: Notify::new(),
                    stopped: AtomicBool::new(false),
                    capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
                })
            })
            .collect();
        for lane in &lanes {
            tokio::spawn(lane.clone().run());
        }
        Self(lanes)
    }

    /// The lane for connection `id`.
    pub fn pick(&self, id: u64) -> Arc<Lane> {
        self.0[(id % self.0.len() as u64) as usize].clone()
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        for lane in &self.0 {
            lane.stopped.store(true, Ordering::Release);
            lane.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);

    impl Flush for Count {
        fn flush(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A lane with more outboxes listed than it writes per turn writes them all.
    #[tokio::test]
    async fn a_lane_writes_every_listed_outbox_across_turns() {
        let lanes = Lanes::start(8);
        let lane = lanes.pick(0);
        let counts: Vec<Arc<Count>> = (0..FLUSHES_PER_TURN + 44)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        for c in &counts {
            lane.list(c.clone());
        }
        while counts.iter().any(|c| c.0.load(Ordering::Relaxed) == 0) {
            // The lane's task runs when this one yields.
            tokio::task::yield_now().await;
        }
        assert!(counts.iter().all(|c| c.0.load(Ordering::Relaxed) == 1));
    }
}
