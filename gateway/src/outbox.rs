//! A session's bounded outbound queue and its close signal.
//!
//! The hub and the session push frames; only the session's link drains them.
//! Pushing never waits: a full queue marks the session a slow consumer and asks its writer to
//! close it, so one stuck client can neither slow the fan-out nor grow memory without bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::protocol::Frame;

/// Why the server closes a connection; maps to a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The node is shutting down (1001).
    ShuttingDown,
    /// The outbound queue overflowed (4001).
    SlowConsumer,
    /// No frame from the client within the idle timeout (4002).
    IdleTimeout,
    /// A frame exceeded `limits.max_frame_bytes` (1009).
    FrameTooBig,
    /// A text frame was not valid UTF-8 (1007).
    InvalidUtf8,
    /// The client broke the WebSocket protocol (1002).
    ProtocolError,
}

impl CloseReason {
    /// WebSocket close code sent to the client.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::ShuttingDown => 1001,
            CloseReason::SlowConsumer => 4001,
            CloseReason::IdleTimeout => 4002,
            CloseReason::FrameTooBig => 1009,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::ProtocolError => 1002,
        }
    }

    /// Close reason text sent to the client.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::ShuttingDown => "server shutting down",
            CloseReason::SlowConsumer => "slow consumer: outbound queue overflowed",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::FrameTooBig => "frame exceeds limits.max_frame_bytes",
            CloseReason::InvalidUtf8 => "text frame is not valid UTF-8",
            CloseReason::ProtocolError => "websocket protocol error",
        }
    }
}

/// Most frames a queue keeps allocated room for once it is empty again; a burst's larger
/// buffer is released so a connection that went quiet goes back to holding almost nothing.
const KEEP_CAPACITY: usize = 64;

struct Shared {
    /// Frames queued and not yet taken by the writer. A plain locked deque: it allocates
    /// nothing until the first frame (an idle connection's queue costs no heap), and the
    /// writer takes a whole batch under one lock.
    queue: Mutex<VecDeque<Frame>>,
    /// The queue's length, stored under its lock, so the writer sees "nothing queued" without
    /// taking the lock (it looks several times per wake-up).
    queued: AtomicUsize,
    /// The writer, parked while the queue is empty.
    writer: AtomicWaker,
    /// Live producer handles; the writer stops once the last one is gone and the queue is empty.
    producers: AtomicUsize,
    /// The writer is gone (its socket failed): frames pushed now would never be sent.
    writer_gone: AtomicBool,
    reason: OnceLock<CloseReason>,
    /// Most frames that may be queued.
    capacity: usize,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Frame>> {
        // A panic while holding this lock cannot leave the deque half-updated.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The producer side of a session's queue, held by the hub and the session.
pub struct Outbox(Arc<Shared>);

/// The writer's side: frames to send, and the close request.
pub struct OutboxRx(Arc<Shared>);

/// Creates a queue holding at most `capacity` frames.
pub fn outbox(capacity: usize) -> (Outbox, OutboxRx) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        queued: AtomicUsize::new(0),
        writer: AtomicWaker::new(),
        producers: AtomicUsize::new(1),
        writer_gone: AtomicBool::new(false),
        reason: OnceLock::new(),
        capacity,
    });
    (Outbox(shared.clone()), OutboxRx(shared))
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.0.producers.fetch_add(1, Ordering::Relaxed);
        Outbox(self.0.clone())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.0.producers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.writer.wake();
        }
    }
}

impl Drop for OutboxRx {
    fn drop(&mut self) {
        self.0.writer_gone.store(true, Ordering::Release);
    }
}

impl Outbox {
    /// Queues a frame; on overflow, closes the session as a slow consumer. Returns false when
    /// the frame was not queued.
    pub fn push(&self, frame: Frame) -> bool {
        if self.0.writer_gone.load(Ordering::Acquire) {
            return false;
        }
        {
            let mut queue = self.0.queue();
            if queue.len() >= self.0.capacity {
                drop(queue);
                self.close(CloseReason::SlowConsumer);
                return false;
            }
            queue.push_back(frame);
            self.0.queued.store(queue.len(), Ordering::Release);
            if queue.len() > 1 {
                // The writer was woken for the first frame and has not taken it yet: it will
                // take this one with it.
                return true;
            }
        }
        self.0.writer.wake();
        true
    }

    /// Asks the writer to close the connection; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        if self.0.reason.set(reason).is_ok() {
            self.0.writer.wake();
        }
    }

    /// The reason the session is closing, if it is.
    pub fn closing(&self) -> Option<CloseReason> {
        self.0.reason.get().copied()
    }
}

/// What the writer is to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Frames were moved into the batch: write them.
    Frames,
    /// The session is to be closed with this reason.
    Close(CloseReason),
    /// Every producer is gone and every frame was taken: the writer is done.
    Done,
}

impl OutboxRx {
    /// Waits until there is something to do. A close request comes first; otherwise, when
    /// frames are queued, the batch (empty on entry) gets up to `limit` of them.
    ///
    /// The writer waits for frames and for the close request on one `AtomicWaker`: a
    /// `Notify` waiter for the close was re-polled on every wake-up and took its lock each
    /// time (~280 instructions per delivery in callgrind).
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut VecDeque<Frame>,
        limit: usize,
    ) -> Poll<Next> {
        ready_or_register(&self.0.writer, cx, || self.take(batch, limit))
    }

    /// [`Self::poll_next`] as a future.
    pub async fn next(&mut self, batch: &mut VecDeque<Frame>, limit: usize) -> Next {
        std::future::poll_fn(|cx| self.poll_next(cx, batch, limit)).await
    }

    /// Ready once a close has been requested; for the writer while the socket is full.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        ready_or_register(&self.0.writer, cx, || self.0.reason.get().copied())
    }

    /// [`Self::poll_closed`] as a future.
    pub async fn closed(&self) -> CloseReason {
        std::future::poll_fn(|cx| self.poll_closed(cx)).await
    }

    /// Waits for the next frame; `None` once every producer is gone or a close is requested.
    pub async fn recv(&mut self) -> Option<Frame> {
        let mut one = VecDeque::new();
        match self.next(&mut one, 1).await {
            Next::Frames => one.pop_front(),
            Next::Close(_) | Next::Done => None,
        }
    }

    /// Takes a frame that is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Frame> {
        let mut queue = self.0.queue();
        let frame = queue.pop_front();
        self.0.queued.store(queue.len(), Ordering::Release);
        frame
    }

    /// What to do now, or `None` to wait.
    fn take(&self, batch: &mut VecDeque<Frame>, limit: usize) -> Option<Next> {
        if let Some(r) = self.0.reason.get() {
            return Some(Next::Close(*r));
        }
        if self.0.queued.load(Ordering::Acquire) == 0 {
            let gone = self.0.producers.load(Ordering::Acquire) == 0;
            return gone.then_some(Next::Done);
        }
        let mut queue = self.0.queue();
        if queue.len() <= limit && batch.is_empty() {
            // The usual case: trade buffers instead of moving frames one by one.
            std::mem::swap(batch, &mut *queue);
        } else {
            let n = queue.len().min(limit);
            batch.extend(queue.drain(..n));
        }
        if queue.is_empty() && queue.capacity() > KEEP_CAPACITY {
            *queue = VecDeque::new();
        }
        self.0.queued.store(queue.len(), Ordering::Release);
        Some(Next::Frames)
    }
}

/// Ready with what `check` finds, or registered on `waker` and pending. `check` runs again
/// after the registration: a push or close between the first look and the registration would
/// otherwise be missed.
fn ready_or_register<T>(
    waker: &AtomicWaker,
    cx: &mut Context<'_>,
    mut check: impl FnMut() -> Option<T>,
) -> Poll<T> {
    if let Some(found) = check() {
        return Poll::Ready(found);
    }
    waker.register(cx.waker());
    match check() {
        Some(found) => Poll::Ready(found),
        None => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer() {
        let (tx, rx) = outbox(2);
        assert!(tx.push("a".into()));
        assert!(tx.push("b".into()));
        assert!(!tx.push("c".into()));
        assert_eq!(rx.closed().await, CloseReason::SlowConsumer);
        tx.close(CloseReason::ShuttingDown);
        assert_eq!(tx.closing(), Some(CloseReason::SlowConsumer));
    }

    #[tokio::test]
    async fn the_writer_gets_every_frame_in_order_then_done() {
        let (tx, mut rx) = outbox(8);
        let writer = tokio::spawn(async move {
            let mut batch = VecDeque::new();
            let mut seen = Vec::new();
            loop {
                match rx.next(&mut batch, 2).await {
                    Next::Frames => {
                        assert!(batch.len() <= 2, "at most the limit per batch");
                        seen.extend(batch.drain(..).map(|f| f.as_str().to_owned()));
                    }
                    Next::Close(r) => panic!("unexpected close: {r:?}"),
                    Next::Done => return seen,
                }
            }
        });
        for f in ["a", "b", "c"] {
            assert!(tx.push(f.into()));
        }
        drop(tx);
        assert_eq!(writer.await.unwrap(), ["a", "b", "c"]);
    }

    #[test]
    fn pushes_after_the_writer_is_gone_are_refused() {
        let (tx, rx) = outbox(8);
        drop(rx);
        assert!(!tx.push("a".into()));
        assert_eq!(tx.closing(), None, "not a slow consumer");
    }
}
