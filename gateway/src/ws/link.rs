//! A session's socket: the WebSocket the client's frames are read from and control frames
//! (pings, the close) are written to, and the outbox's part that falls to the session's task;
//! all from the session's one task.
//!
//! Deliveries do not pass through here: the outbox's lane writes them to the socket
//! ([`super::lanes`]), and the task is woken only when the socket is full, the session is to
//! be closed, or one of its other waits fires. Those waits (socket reads, replies from the
//! broker, the timer) are polled with a waker of their own that records that one of them
//! fired ([`Fired`]), and only then.
//!
//! One task per connection, not a reader and a writer: a second task, and the lock `split`
//! puts between the halves, cost ~900 bytes per idle connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::{ArcWake, AtomicWaker, waker_ref};
use futures_util::{SinkExt, StreamExt};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use super::handshake::WebSocket;
use super::outbox::OutboxRx;
pub use super::outbox::Stop;
use crate::protocol::CloseReason;

/// Records that one of the waits other than the outbox woke the task.
struct Fired {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for Fired {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.fired.store(true, Ordering::Release);
        arc_self.task.wake();
    }
}

/// The WebSocket and the outbox's receiver.
pub struct Link {
    ws: WebSocket,
    rx: OutboxRx,
    ping_due: bool,
    /// A ping was handed to the socket and not yet flushed.
    unflushed: bool,
    /// Why writing stopped, once it has: a stop seen while a request was being handled is
    /// reported again to the session's main loop.
    stopped: Option<Stop>,
    /// Also the waker, borrowed per poll (`waker_ref`) rather than kept as a second pointer.
    fired: Arc<Fired>,
    /// Poll the other waits even if `fired` is not set: they have not been polled since
    /// something changed (first poll, one of them was ready, the session started a reply).
    dirty: bool,
    /// The outbox had no room for replies when the waits were last polled, so the client's
    /// requests were not read; the outbox wakes the task once it has.
    paused: bool,
}

impl Link {
    /// A link for `ws` and the session's outbox `rx`.
    pub fn new(ws: WebSocket, rx: OutboxRx) -> Self {
        let fired = Arc::new(Fired {
            fired: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        Link {
            ws,
            rx,
            ping_due: false,
            unflushed: false,
            stopped: None,
            fired,
            dirty: true,
            paused: false,
        }
    }

    /// Sends a ping (after the frames already written).
    pub fn ping(&mut self) {
        self.ping_due = true;
    }

    /// The session handled a request: the other waits are polled at the next wake-up (the
    /// request may have started a reply), and the outbox frees a small buffer once the reply
    /// is written.
    pub fn request_handled(&mut self) {
        self.dirty = true;
        self.rx.request_handled();
    }

    /// Does the session's part of writing; ready only when writing has to stop, and from then
    /// on every time it is polled.
    pub fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        if let Some(stop) = self.stopped {
            return Poll::Ready(stop);
        }
        let found = match self.rx.poll_write(cx) {
            Poll::Pending => self.poll_ping(),
            ready => ready,
        };
        if let Poll::Ready(stop) = found {
            self.stopped = Some(stop);
        }
        found
    }

    /// Hands a due ping to the socket and flushes it.
    fn poll_ping(&mut self) -> Poll<Stop> {
        let waker = waker_ref(&self.fired);
        let mut cx = Context::from_waker(&waker);
        if self.ping_due {
            if std::task::ready!(self.ws.poll_ready_unpin(&mut cx)).is_err() {
                return Poll::Ready(Stop::Failed);
            }
            self.ping_due = false;
            if self
                .ws
                .start_send_unpin(Message::Ping(Default::default()))
                .is_err()
            {
                return Poll::Ready(Stop::Failed);
            }
            self.unflushed = true;
        }
        if self.unflushed {
            if std::task::ready!(self.ws.poll_flush_unpin(&mut cx)).is_err() {
                return Poll::Ready(Stop::Failed);
            }
            self.unflushed = false;
        }
        Poll::Pending
    }

    /// Polls `others` (the waits besides the outbox) if one of them fired since they were last
    /// polled, with a context that records the next time one does. `others` is told whether
    /// the outbox has room for the replies to more requests (see
    /// [`OutboxRx::has_request_room`]); the task is woken when it regains it.
    pub fn poll_others<T>(
        &mut self,
        cx: &mut Context<'_>,
        others: impl FnOnce(&mut WebSocket, bool, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.fired.task.register(cx.waker());
        let fired = self.fired.fired.swap(false, Ordering::AcqRel);
        let room = self.rx.has_request_room();
        let regained = room && self.paused;
        self.paused = !room;
        if !(fired || regained || std::mem::take(&mut self.dirty)) {
            return Poll::Pending;
        }
        let waker = waker_ref(&self.fired);
        let mut cx = Context::from_waker(&waker);
        let found = others(&mut self.ws, room, &mut cx);
        if found.is_ready() {
            // The others polled after the ready one were not polled this time.
            self.dirty = true;
        }
        found
    }

    /// Sends a close frame (no data frame follows it), with `text` instead of the reason's
    /// own when given; gives up when the socket does not take it.
    pub async fn close(&mut self, reason: CloseReason, text: Option<&str>) {
        self.rx.seal();
        let frame = CloseFrame {
            code: reason.code().into(),
            reason: text.unwrap_or(reason.text()).into(),
        };
        let _ = self.ws.send(Message::Close(Some(frame))).await;
    }

    /// Flushes what tungstenite queued by itself (the reply to the client's close frame, after
    /// which no data frame may be sent).
    pub async fn flush(&mut self) {
        self.rx.seal();
        let _ = self.ws.flush().await;
    }

    /// Reads until the client's close reply or the end of the stream.
    pub async fn drain(&mut self) {
        while let Some(Ok(_)) = self.ws.next().await {}
    }
}
