//! A session's socket: drains its outbox into the WebSocket, several frames per flush, and
//! reads the client's frames, all from the session's one task.
//!
//! One task per connection, not a reader and a writer: a second task, and the lock `split`
//! puts between the halves, cost ~900 bytes per idle connection. The task is woken for every
//! delivery, so a wake-up must not poll everything else a session waits for (socket reads,
//! replies from the broker, the timer): those are polled with a waker of
//! their own that records that one of them fired ([`Fired`]), and only then.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::{ArcWake, AtomicWaker, waker_ref};
use futures_util::{SinkExt, StreamExt};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use super::handshake::Socket as WebSocket;
use crate::outbox::{CloseReason, Next, OutboxRx};
use crate::protocol::Frame;

/// Frames written per flush at most; bounds the latency a batch adds for its first frame.
const BATCH: usize = 64;
/// After a request's reply is written, a batch buffer with room for fewer frames than this is
/// freed: it came from a push of a frame or two, typically the `subscribed` reply that is an
/// idle connection's last frame, and kept, every idle subscriber would hold 128 bytes for its
/// whole life. Not freed after deliveries: a subscriber taking one frame per wake-up would
/// allocate and free it every time (fanout-light: +2-5 % CPU per delivery).
const KEEP_BATCH: usize = 8;

/// Why the link stopped writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The session is to be closed with this reason (a close frame is still to be sent).
    Close(CloseReason),
    /// The socket failed: nothing more can be sent.
    Failed,
}

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

/// The WebSocket, the outbox it drains and what is half-written.
pub struct Link {
    ws: WebSocket,
    rx: OutboxRx,
    /// Frames taken from the outbox and not yet handed to the socket. Grows on first use: an
    /// idle connection should not hold a batch's worth of memory.
    batch: VecDeque<Frame>,
    ping_due: bool,
    /// Frames were handed to the socket and not yet flushed.
    unflushed: bool,
    /// Free a small batch buffer once the batch is written (see [`KEEP_BATCH`]).
    trim: bool,
    /// Why writing stopped, once it has: a stop seen while a request was being handled is
    /// reported again to the session's main loop.
    stopped: Option<Stop>,
    /// Also the waker, borrowed per poll (`waker_ref`) rather than kept as a second pointer.
    fired: Arc<Fired>,
    /// Poll the other waits even if `fired` is not set: they have not been polled since
    /// something changed (first poll, one of them was ready, the session started a reply).
    dirty: bool,
}

impl Link {
    /// A link for `ws` that drains `rx`.
    pub fn new(ws: WebSocket, rx: OutboxRx) -> Self {
        let fired = Arc::new(Fired {
            fired: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        Link {
            ws,
            rx,
            batch: VecDeque::new(),
            ping_due: false,
            unflushed: false,
            trim: false,
            stopped: None,
            fired,
            dirty: true,
        }
    }

    /// Sends a ping after the frames already queued.
    pub fn ping(&mut self) {
        self.ping_due = true;
    }

    /// The session handled a request: the other waits are polled at the next wake-up (the
    /// request may have started a reply), and a small batch buffer is freed once what is
    /// queued now is written (a request may be the last thing a connection does for a long
    /// time; see [`KEEP_BATCH`]).
    pub fn request_handled(&mut self) {
        self.dirty = true;
        self.trim = true;
    }

    /// Writes what is queued; ready only when writing has to stop, and from then on every
    /// time it is polled. Pending once everything taken is flushed (the outbox will wake the
    /// task) or the socket is full (the socket will); meanwhile a close request still stops it.
    pub fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        if let Some(stop) = self.stopped {
            return Poll::Ready(stop);
        }
        let found = self.poll_write_once(cx);
        if let Poll::Ready(stop) = found {
            self.stopped = Some(stop);
        }
        found
    }

    fn poll_write_once(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        loop {
            match self.poll_drain_batch() {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(())) => return Poll::Ready(Stop::Failed),
                Poll::Pending => return self.rx.poll_closed(cx).map(Stop::Close),
            }
            match self.rx.poll_next(cx, &mut self.batch, BATCH) {
                Poll::Ready(Next::Frames) => {}
                Poll::Ready(Next::Close(reason)) => return Poll::Ready(Stop::Close(reason)),
                // The session holds a producer as long as the link lives.
                Poll::Ready(Next::Done) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Hands the batch (and a due ping) to the socket and flushes it.
    fn poll_drain_batch(&mut self) -> Poll<Result<(), ()>> {
        let waker = waker_ref(&self.fired);
        let mut cx = Context::from_waker(&waker);
        while self.ping_due || !self.batch.is_empty() {
            if std::task::ready!(self.ws.poll_ready_unpin(&mut cx)).is_err() {
                return Poll::Ready(Err(()));
            }
            let msg = match self.batch.pop_front() {
                Some(frame) => Message::Text(frame),
                None => {
                    self.ping_due = false;
                    Message::Ping(Default::default())
                }
            };
            if self.ws.start_send_unpin(msg).is_err() {
                return Poll::Ready(Err(()));
            }
            self.unflushed = true;
        }
        if self.unflushed {
            if std::task::ready!(self.ws.poll_flush_unpin(&mut cx)).is_err() {
                return Poll::Ready(Err(()));
            }
            self.unflushed = false;
        }
        // The buffer that carried the reply is the one to free; until one arrives, wait.
        if self.trim && self.batch.capacity() > 0 {
            self.trim = false;
            if self.batch.capacity() < KEEP_BATCH {
                self.batch = VecDeque::new();
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Polls `others` (the waits besides the outbox) if one of them fired since they were last
    /// polled, with a context that records the next time one does.
    pub fn poll_others<T>(
        &mut self,
        cx: &mut Context<'_>,
        others: impl FnOnce(&mut WebSocket, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.fired.task.register(cx.waker());
        let fired = self.fired.fired.swap(false, Ordering::AcqRel);
        if !(fired || std::mem::take(&mut self.dirty)) {
            return Poll::Pending;
        }
        let waker = waker_ref(&self.fired);
        let mut cx = Context::from_waker(&waker);
        let found = others(&mut self.ws, &mut cx);
        if found.is_ready() {
            // The others polled after the ready one were not polled this time.
            self.dirty = true;
        }
        found
    }

    /// Sends a close frame; gives up when the socket does not take it.
    pub async fn close(&mut self, reason: CloseReason) {
        let frame = CloseFrame {
            code: reason.code().into(),
            reason: reason.text().into(),
        };
        let _ = self.ws.send(Message::Close(Some(frame))).await;
    }

    /// Flushes what tungstenite queued by itself (the reply to the client's close frame).
    pub async fn flush(&mut self) {
        let _ = self.ws.flush().await;
    }

    /// Reads until the client's close reply or the end of the stream.
    pub async fn drain(&mut self) {
        while let Some(Ok(_)) = self.ws.next().await {}
    }
}
