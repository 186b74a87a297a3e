//! A session's bounded outbound queue and its close signal.
//!
//! The hub and the session's own reader push frames; only the session's writer drains them.
//! Pushing never waits: a full queue marks the session a slow consumer and asks its writer to
//! close it, so one stuck client can neither slow the fan-out nor grow memory without bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

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
    /// The writer, parked while the queue is empty.
    writer: AtomicWaker,
    /// Live producer handles; the writer stops once the last one is gone and the queue is empty.
    producers: AtomicUsize,
    reason: OnceLock<CloseReason>,
    notify: Notify,
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
        writer: AtomicWaker::new(),
        producers: AtomicUsize::new(1),
        reason: OnceLock::new(),
        notify: Notify::new(),
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

impl Outbox {
    /// Queues a frame; on overflow, closes the session as a slow consumer. Returns false when
    /// the frame was not queued.
    pub fn push(&self, frame: Frame) -> bool {
        {
            let mut queue = self.0.queue();
            if queue.len() >= self.0.capacity {
                drop(queue);
                self.close(CloseReason::SlowConsumer);
                return false;
            }
            queue.push_back(frame);
        }
        self.0.writer.wake();
        true
    }

    /// Asks the writer to close the connection; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        if self.0.reason.set(reason).is_ok() {
            self.0.notify.notify_waiters();
            self.0.notify.notify_one();
        }
    }

    /// The reason the session is closing, if it is.
    pub fn closing(&self) -> Option<CloseReason> {
        self.0.reason.get().copied()
    }

    /// A handle that observes the close request without counting as a producer.
    pub fn close_signal(&self) -> CloseSignal {
        CloseSignal(self.0.clone())
    }
}

impl OutboxRx {
    /// Waits until frames are queued and moves up to `limit` of them to the end of `batch`;
    /// returns 0 once every producer is gone and nothing is left.
    pub async fn recv_many(&mut self, batch: &mut Vec<Frame>, limit: usize) -> usize {
        std::future::poll_fn(|cx| {
            if let Some(n) = self.take(batch, limit) {
                return Poll::Ready(n);
            }
            self.0.writer.register(cx.waker());
            // A push between the check above and the registration must not be missed.
            match self.take(batch, limit) {
                Some(n) => Poll::Ready(n),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Waits for the next frame; `None` once every producer is gone.
    pub async fn recv(&mut self) -> Option<Frame> {
        let mut one = Vec::with_capacity(1);
        self.recv_many(&mut one, 1).await;
        one.pop()
    }

    /// Takes a frame that is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Frame> {
        self.0.queue().pop_front()
    }

    /// A handle that observes the close request while the queue is being drained.
    pub fn close_signal(&self) -> CloseSignal {
        CloseSignal(self.0.clone())
    }

    /// Some(frames taken), or Some(0) when the queue is empty for good, or None to wait.
    fn take(&self, batch: &mut Vec<Frame>, limit: usize) -> Option<usize> {
        let mut queue = self.0.queue();
        if queue.is_empty() {
            let gone = self.0.producers.load(Ordering::Acquire) == 0;
            return gone.then_some(0);
        }
        let n = queue.len().min(limit);
        batch.extend(queue.drain(..n));
        if queue.is_empty() && queue.capacity() > KEEP_CAPACITY {
            *queue = VecDeque::new();
        }
        Some(n)
    }
}

/// Observes a session's close request.
pub struct CloseSignal(Arc<Shared>);

impl CloseSignal {
    /// Resolves once a close has been requested.
    pub async fn closed(&self) -> CloseReason {
        wait_closed(&self.0).await
    }
}

async fn wait_closed(shared: &Shared) -> CloseReason {
    loop {
        let notified = shared.notify.notified();
        if let Some(r) = shared.reason.get() {
            return *r;
        }
        notified.await;
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
        assert_eq!(rx.close_signal().closed().await, CloseReason::SlowConsumer);
        tx.close(CloseReason::ShuttingDown);
        assert_eq!(tx.closing(), Some(CloseReason::SlowConsumer));
    }
}
