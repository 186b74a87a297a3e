//! Subscribing to a channel with history: from a known position (recovery), or from the
//! channel's current one. Either way the subscriber is told exactly where its subscription
//! starts, and receives every later message once, in order.
//!
//! The seam between history and live delivery is closed, not narrowed: the subscription goes
//! live first, with its deliveries held back ([`CatchUp`]); then history is read and sent;
//! then the held deliveries are released, those history already covered dropped by offset.
//! A message published while the subscription was being set up is thus either in what was
//! read (published before the read) or among the held deliveries (the node receives the
//! channel from before the read), or both.
//!
//! On the wire: the recovered messages (each a normal `message` frame with its position),
//! then the `subscribed` reply with the position the subscription continues from and, when
//! the client asked to recover, `recovered`; then live messages.
//!
//! The same sink stays the subscription's for its life. When the subscriber's deliver hook
//! fails on a live message ([`Sink::missed`]), it holds deliveries again and asks its
//! session to catch up from the message before (a [`Resync`]): the message comes from
//! history, its hook run again, with nothing sent twice or out of order and no reply.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::history::{HistoryOptions, MAX_READ, Position, Query};
use crate::hub::{Group, GroupKey, Sink};
use crate::protocol::{self, CloseReason, ErrorCode, Frame, Rejection};
use crate::replay::Replay;

use super::outbox::Outbox;

/// A subscription's deliveries, held back while its history is sent, then passed on to the
/// session's queue.
pub struct CatchUp {
    outbox: Arc<dyn Sink>,
    /// Set once held deliveries were released and one passed the filter: from then on
    /// deliveries go straight through without the lock.
    passing: AtomicBool,
    state: Mutex<State>,
    /// What a catch-up after a failed hook needs.
    resync: Resync,
    /// Deliveries held at most (the session's queue's capacity).
    room: usize,
    me: Weak<CatchUp>,
}

/// The subscription a [`CatchUp`] serves, and where it asks its session for a catch-up.
pub struct Resync {
    /// The channel.
    pub channel: Arc<str>,
    /// The subscriber's delivery group.
    pub group: GroupKey,
    /// The channel's history.
    pub options: HistoryOptions,
    /// The session's list of subscriptions to catch up.
    pub pending: Arc<Pending>,
}

/// Subscriptions of one session waiting for a catch-up, oldest first.
#[derive(Default)]
pub struct Pending(Mutex<Vec<Arc<CatchUp>>>);

impl Pending {
    /// Takes the waiting subscriptions.
    pub fn take(&self) -> Vec<Arc<CatchUp>> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

enum State {
    /// Deliveries held in arrival order, at most `room`; past it they are all dropped (and
    /// read from history instead). `resume`: a catch-up is owed from this position (a hook
    /// failed on the message after it) and the session has not started it yet.
    Holding {
        held: VecDeque<(Frame, Option<Position>)>,
        room: usize,
        overflowed: bool,
        resume: Option<Position>,
    },
    /// Released: deliveries at or before `after` in its epoch were already sent from history.
    Filtering { after: Position },
    /// The hub no longer delivers here.
    Retired,
}

impl CatchUp {
    /// Holds deliveries for `outbox`, up to `room` of them, for the subscription `resync`
    /// describes.
    pub fn new(outbox: Arc<dyn Sink>, room: usize, resync: Resync) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            outbox,
            passing: AtomicBool::new(false),
            state: Mutex::new(State::Holding {
                held: VecDeque::new(),
                room,
                overflowed: false,
                resume: None,
            }),
            resync,
            room,
            me: me.clone(),
        })
    }

    /// The subscription this serves.
    pub fn subscription(&self) -> &Resync {
        &self.resync
    }

    /// The position a catch-up is owed from, if one is and it was not taken yet.
    pub fn take_resume(&self) -> Option<Position> {
        match &mut *self.state() {
            State::Holding { resume, .. } => resume.take(),
            _ => None,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Each transition is one assignment: a panic cannot leave it half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `reply`, then passes on the deliveries held after `after` and every later one,
    /// unless deliveries were dropped while held: then returns false without either, holding
    /// again from now (what was dropped was published before the caller's next history read,
    /// which finds it).
    fn release(&self, after: &Position, reply: impl FnOnce()) -> bool {
        let mut state = self.state();
        let State::Holding {
            held, overflowed, ..
        } = &mut *state
        else {
            // Retired meanwhile: the hub delivers elsewhere now.
            return true;
        };
        if std::mem::take(overflowed) {
            held.clear();
            return false;
        }
        let held = std::mem::take(held);
        // Under the lock: no delivery can overtake the reply.
        reply();
        *state = State::Filtering {
            after: after.clone(),
        };
        // Passed on under the lock, so a delivery arriving meanwhile cannot overtake them.
        for (frame, position) in held {
            self.filter(&mut state, frame, position.as_ref());
        }
        true
    }

    /// Passes `frame` on unless history already sent it; the first one that passes ends the
    /// filtering (deliveries arrive in offset order).
    fn filter(&self, state: &mut State, frame: Frame, position: Option<&Position>) -> bool {
        if let (State::Filtering { after }, Some(at)) = (&*state, position) {
            if at.epoch == after.epoch && at.offset <= after.offset {
                return true;
            }
            self.passing.store(true, Ordering::Release);
        }
        self.outbox.deliver(frame, position)
    }
}

impl Sink for CatchUp {
    fn push(&self, frame: Frame) -> bool {
        self.deliver(frame, None)
    }

    fn deliver(&self, frame: Frame, position: Option<&Position>) -> bool {
        if self.passing.load(Ordering::Acquire) {
            return self.outbox.deliver(frame, position);
        }
        let mut state = self.state();
        match &mut *state {
            State::Holding {
                held,
                room,
                overflowed,
                ..
            } => {
                if *overflowed {
                } else if held.len() < *room {
                    held.push_back((frame, position.cloned()));
                } else {
                    held.clear();
                    *overflowed = true;
                }
                true
            }
            State::Filtering { .. } => self.filter(&mut state, frame, position),
            State::Retired => true,
        }
    }

    fn close(&self, reason: CloseReason) {
        self.outbox.close(reason);
    }

    fn missed(&self, position: &Position) {
        let mut state = self.state();
        match &mut *state {
            // A catch-up is under way or owed: it reads history from before this message
            // again (what was held is read again with it).
            State::Holding {
                held, overflowed, ..
            } => {
                held.clear();
                *overflowed = true;
            }
            State::Filtering { .. } => {
                self.passing.store(false, Ordering::Release);
                *state = State::Holding {
                    held: VecDeque::new(),
                    room: self.room,
                    overflowed: false,
                    resume: Some(Position {
                        offset: position.offset.saturating_sub(1),
                        epoch: position.epoch.clone(),
                    }),
                };
                drop(state);
                if let Some(me) = self.me.upgrade() {
                    self.resync
                        .pending
                        .0
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(me);
                }
                self.outbox.notify();
            }
            State::Retired => {}
        }
    }

    fn retired(&self) {
        self.passing.store(false, Ordering::Release);
        *self.state() = State::Retired;
    }
}

/// Where a subscription on a channel with history starts.
pub struct Start {
    /// The position it continues from: the client has every message up to it it will get.
    pub position: Position,
    /// With `since`: whether every message after it that history held was sent.
    pub recovered: Option<bool>,
}

/// Sends `channel`'s history after `since` (or nothing, without it) for `group` to `outbox`,
/// paced by what the client reads, then the reply `reply` makes of where the subscription
/// starts (none for a catch-up the client did not ask for), then releases `catch_up`'s held
/// deliveries after it. The hub must already deliver the channel to `catch_up`.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, every argument distinct"
)]
pub async fn catch_up(
    replay: &Replay,
    outbox: &Outbox,
    catch_up: &CatchUp,
    channel: &str,
    group: &Group,
    since: Option<&Position>,
    options: HistoryOptions,
    reply: impl Fn(&Start) -> Option<Frame>,
) -> Result<Start, Rejection> {
    let mut recovered = since.map(|_| true);
    // The subscription's position so far: the last message the client has (or will not get).
    let mut at = since.cloned();
    loop {
        let (query, limit) = match &at {
            Some(at) => (Query::After(at.offset), MAX_READ),
            None => (Query::Latest, 0),
        };
        let page = replay.read(channel, group, query, limit, options).await?;
        let continues = at.as_ref().is_some_and(|at| page.recovers(at));
        let cursor = match at.take() {
            Some(at) if continues => {
                for (offset, data) in &page.messages {
                    let position = Position {
                        offset: *offset,
                        epoch: at.epoch.clone(),
                    };
                    let frame = protocol::message(channel, data.get().as_bytes(), Some(&position));
                    if !outbox.room().await || !outbox.push_reply(frame) {
                        return Err(closing());
                    }
                }
                Position {
                    offset: page.last.unwrap_or(at.offset),
                    epoch: at.epoch,
                }
            }
            // A position of another epoch, ahead of the channel, or behind what history
            // holds: nothing more to send; the subscription continues from the channel's.
            Some(_) => {
                if recovered.is_some() {
                    recovered = Some(false);
                }
                page.position.clone()
            }
            None => page.position.clone(),
        };
        let caught_up = page.read < limit || cursor.offset >= page.position.offset;
        if caught_up {
            let start = Start {
                position: cursor,
                recovered,
            };
            let answer = || {
                if let Some(frame) = reply(&start) {
                    outbox.push_reply(frame);
                }
            };
            if catch_up.release(&start.position, answer) {
                return Ok(start);
            }
            at = Some(start.position);
        } else {
            at = Some(cursor);
        }
    }
}

fn closing() -> Rejection {
    Rejection::new(ErrorCode::Unavailable, "the connection is closing")
}
