//! A session's bounded outbound queue and its close signal.
//!
//! The hub and the session's own reader push frames; only the session's writer drains them.
//! Pushing never waits: a full queue marks the session a slow consumer and asks its writer to
//! close it, so one stuck client can neither slow the fan-out nor grow memory without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{Notify, mpsc};

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

struct Ctl {
    reason: OnceLock<CloseReason>,
    notify: Notify,
    /// Frames queued and not yet taken by the writer.
    queued: AtomicUsize,
    /// Most frames that may be queued.
    capacity: usize,
}

/// The producer side of a session's queue, held by the hub and the session.
#[derive(Clone)]
pub struct Outbox {
    // Unbounded channel plus our own count: the bound is checked with one atomic add instead
    // of a bounded channel's semaphore (a hot spot in perf on every delivery).
    tx: mpsc::UnboundedSender<Frame>,
    ctl: Arc<Ctl>,
}

/// The writer's side: frames to send, and the close request.
pub struct OutboxRx {
    rx: mpsc::UnboundedReceiver<Frame>,
    ctl: Arc<Ctl>,
}

/// Creates a queue holding at most `capacity` frames.
pub fn outbox(capacity: usize) -> (Outbox, OutboxRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let ctl = Arc::new(Ctl {
        reason: OnceLock::new(),
        notify: Notify::new(),
        queued: AtomicUsize::new(0),
        capacity,
    });
    (
        Outbox {
            tx,
            ctl: ctl.clone(),
        },
        OutboxRx { rx, ctl },
    )
}

impl Outbox {
    /// Queues a frame; on overflow, closes the session as a slow consumer. Returns false when
    /// the frame was not queued.
    pub fn push(&self, frame: Frame) -> bool {
        if self.ctl.queued.fetch_add(1, Ordering::AcqRel) >= self.ctl.capacity {
            self.ctl.queued.fetch_sub(1, Ordering::AcqRel);
            self.close(CloseReason::SlowConsumer);
            return false;
        }
        if self.tx.send(frame).is_err() {
            self.ctl.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Asks the writer to close the connection; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        if self.ctl.reason.set(reason).is_ok() {
            self.ctl.notify.notify_waiters();
            self.ctl.notify.notify_one();
        }
    }

    /// The reason the session is closing, if it is.
    pub fn closing(&self) -> Option<CloseReason> {
        self.ctl.reason.get().copied()
    }

    /// Resolves once a close has been requested.
    pub async fn closed(&self) -> CloseReason {
        wait_closed(&self.ctl).await
    }
}

impl OutboxRx {
    /// Waits for the next frame; `None` once every producer is gone.
    pub async fn recv(&mut self) -> Option<Frame> {
        let frame = self.rx.recv().await?;
        self.ctl.queued.fetch_sub(1, Ordering::AcqRel);
        Some(frame)
    }

    /// Takes a frame that is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Frame> {
        let frame = self.rx.try_recv().ok()?;
        self.ctl.queued.fetch_sub(1, Ordering::AcqRel);
        Some(frame)
    }

    /// A handle that observes the close request while the queue is being drained.
    pub fn close_signal(&self) -> CloseSignal {
        CloseSignal(self.ctl.clone())
    }
}

/// Observes a session's close request.
pub struct CloseSignal(Arc<Ctl>);

impl CloseSignal {
    /// Resolves once a close has been requested.
    pub async fn closed(&self) -> CloseReason {
        wait_closed(&self.0).await
    }
}

async fn wait_closed(ctl: &Ctl) -> CloseReason {
    loop {
        let notified = ctl.notify.notified();
        if let Some(r) = ctl.reason.get() {
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
