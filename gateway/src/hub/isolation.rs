//! Isolation lanes: where the deliver hooks that turned out slow run, so that they slow their
//! own deliveries and nothing else.
//!
//! A deliver hook normally runs on the task that dispatches the message: for Redis, the
//! broker connection's reader; for the embedded broker, the publisher's task. A hook whose
//! calls take longer than `plugins.deliver_inline_max_us` there ([`SLOW_CALLS`] in a row: one
//! slow call may be the thread being preempted, not the hook) holds up every channel's
//! deliveries and the broker connection's own traffic, so the hub moves that hook here: its
//! calls are queued (in order, at most [`MAX_QUEUED`]; more are dropped and counted) and run
//! by a small pool of threads outside the async runtime, one call of a hook at a time, hooks
//! taking turns. A hook goes back to running inline once its queue is empty and none of its
//! calls has been slow for [`RECOVER_AFTER`].
//!
//! Order: a group's messages are prepared and queued in the order they were dispatched. A
//! hook's calls move here only after its slow call finished inline, and go back inline only
//! once everything queued here is delivered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Carried, Carry, GroupHook, GroupKey, Table};

/// Threads that run isolated hooks.
pub const THREADS: usize = 2;
/// Messages an isolated hook may have waiting; further ones are dropped for its groups.
pub const MAX_QUEUED: usize = 1024;
/// Calls of a hook run in one turn before another hook's.
const TURN: usize = 16;
/// An isolated hook goes back inline once it has had no slow call for this long.
pub const RECOVER_AFTER: Duration = Duration::from_secs(1);
/// Slow inline calls in a row that isolate a hook.
pub const SLOW_CALLS: u32 = 3;

/// Where a hook's calls run; kept with the hook (one per loaded plugin and binding).
#[derive(Default)]
pub struct Placement {
    /// Calls are queued on the lanes rather than run inline.
    isolated: AtomicBool,
    /// Slow inline calls in a row.
    slow_calls: AtomicU32,
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    jobs: VecDeque<Job>,
    /// In the lanes' run queue, or being run by a lane thread.
    scheduled: bool,
    /// When a call last took longer than the inline budget.
    last_slow: Option<Instant>,
}

/// One message to prepare for one group.
struct Job {
    channel: Arc<str>,
    group: GroupKey,
    data: Bytes,
    carried: Carry,
}

impl Placement {
    fn state(&self) -> MutexGuard<'_, LaneState> {
        // Every update is a push, a pop or a flag: a panic cannot leave it half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the hook's calls run on the lanes.
    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::Acquire)
    }

    /// Records how long an inline call took; the hook moves to the lanes after
    /// [`SLOW_CALLS`] calls in a row longer than `inline_max`.
    pub(super) fn record_inline(
        &self,
        hook: &dyn GroupHook,
        elapsed: Duration,
        inline_max: Duration,
    ) {
        if elapsed <= inline_max {
            if self.slow_calls.load(Ordering::Relaxed) != 0 {
                self.slow_calls.store(0, Ordering::Relaxed);
            }
            return;
        }
        if self.slow_calls.fetch_add(1, Ordering::Relaxed) + 1 < SLOW_CALLS {
            return;
        }
        self.slow_calls.store(0, Ordering::Relaxed);
        self.isolate(hook, elapsed);
    }

    /// Moves the hook to the lanes after a call that took `elapsed`.
    fn isolate(&self, hook: &dyn GroupHook, elapsed: Duration) {
        self.state().last_slow = Some(Instant::now());
        if !self.isolated.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                hook = %hook.describe(),
                elapsed_us = elapsed.as_micros() as u64,
                "slow deliver hook: its deliveries now run on an isolation lane"
            );
            metrics::counter!("switchyard_plugin_isolations_total").increment(1);
        }
    }
}

/// The threads that run isolated hooks, and the hooks waiting for one.
pub(super) struct Lanes {
    table: Arc<Table>,
    run: Mutex<VecDeque<Arc<dyn GroupHook>>>,
    ready: Condvar,
    stopped: AtomicBool,
    inline_max: Duration,
    delivered: metrics::Counter,
    dropped: metrics::Counter,
    full: metrics::Counter,
    /// Messages waiting on the lanes, every hook together.
    queued: metrics::Gauge,
}

impl Lanes {
    /// Starts [`THREADS`] lane threads delivering into `table`.
    pub(super) fn start(table: Arc<Table>, inline_max: Duration) -> Arc<Self> {
        let lanes = Arc::new(Self {
            table,
            run: Mutex::default(),
            ready: Condvar::new(),
            stopped: AtomicBool::new(false),
            inline_max,
            delivered: metrics::counter!("switchyard_messages_delivered_total"),
            dropped: metrics::counter!(
                "switchyard_messages_dropped_total",
                "reason" => "slow_consumer"
            ),
            full: metrics::counter!(
                "switchyard_messages_dropped_total",
                "reason" => "isolation_lane_full"
            ),
            queued: metrics::gauge!("switchyard_isolation_queued"),
        });
        for i in 0..THREADS {
            let lanes = lanes.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("hook-lane-{i}"))
                .spawn(move || lanes.work());
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an isolation lane thread");
            }
        }
        lanes
    }

    fn run_queue(&self) -> MutexGuard<'_, VecDeque<Arc<dyn GroupHook>>> {
        self.run.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a message for `hook` to prepare for `group`. Returns false when the hook is no
    /// longer isolated: the caller runs it inline (nothing of it is queued here any more).
    pub(super) fn queue(
        &self,
        hook: Arc<dyn GroupHook>,
        channel: &str,
        group: GroupKey,
        data: &[u8],
        carried: Carried<'_>,
    ) -> bool {
        let placement = hook.placement();
        let mut state = placement.state();
        if !placement.is_isolated() {
            return false;
        }
        if state.jobs.len() >= MAX_QUEUED {
            drop(state);
            self.full.increment(1);
            tracing::debug!(hook = %hook.describe(), "isolation lane full: message dropped for a group");
            return true;
        }
        state.jobs.push_back(Job {
            channel: channel.into(),
            group,
            data: Bytes::copy_from_slice(data),
            carried: carried.to_owned(),
        });
        self.queued.increment(1.0);
        if !std::mem::replace(&mut state.scheduled, true) {
            drop(state);
            self.run_queue().push_back(hook);
            self.ready.notify_one();
        }
        true
    }

    /// Stops the threads once they finish the call in progress.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let _guard = self.run_queue();
        self.ready.notify_all();
    }

    fn work(&self) {
        while let Some(hook) = self.next_hook() {
            self.take_turn(hook);
        }
    }

    /// The next hook to run, waiting for one; `None` once stopped.
    fn next_hook(&self) -> Option<Arc<dyn GroupHook>> {
        let mut run = self.run_queue();
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return None;
            }
            if let Some(hook) = run.pop_front() {
                return Some(hook);
            }
            run = self.ready.wait(run).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Runs up to [`TURN`] of `hook`'s queued calls, then puts it back in line if more wait.
    fn take_turn(&self, hook: Arc<dyn GroupHook>) {
        let placement = hook.placement();
        for _ in 0..TURN {
            let Some(job) = placement.state().jobs.pop_front() else {
                break;
            };
            self.queued.decrement(1.0);
            let started = Instant::now();
            let prepared = hook.prepare(&job.channel, &job.group, &job.data);
            let slow = started.elapsed() > self.inline_max;
            let stats = self.table.deliver_prepared(
                &job.channel,
                &job.data,
                job.carried.as_carried(),
                [(job.group, prepared)],
                &mut None,
            );
            self.delivered.increment(stats.delivered as u64);
            self.dropped.increment(stats.dropped as u64);
            if slow {
                placement.state().last_slow = Some(Instant::now());
            }
        }
        let mut state = placement.state();
        if !state.jobs.is_empty() {
            drop(state);
            self.run_queue().push_back(hook);
            self.ready.notify_one();
            return;
        }
        state.scheduled = false;
        if state
            .last_slow
            .is_none_or(|at| at.elapsed() >= RECOVER_AFTER)
        {
            // Under the state lock: a dispatch that saw the hook isolated queues nothing
            // after this (it checks again under the lock and runs the call inline).
            placement.isolated.store(false, Ordering::Release);
            tracing::info!(hook = %hook.describe(), "deliver hook is fast again: back inline");
        }
    }
}
