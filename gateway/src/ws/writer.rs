//! A session's writer: drains its outbox into the socket, several frames per flush.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;

use crate::outbox::{Attempt, DirectWrite, Next, OutboxRx};
use crate::protocol::Frame;

/// Frames written per flush at most; bounds the latency a batch adds for its first frame.
const BATCH: usize = 64;
/// How long a close frame may take to leave before the socket is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The socket's sending half, shared by the writer task and, for direct writes, the
/// producers (see [`DirectWrite`]). The lock is held only inside one poll, never across an
/// `.await`, and producers only `try_lock` it.
pub struct SharedSink(Mutex<SplitSink<WebSocket, Message>>);

impl SharedSink {
    /// Shares `sink`.
    pub fn new(sink: SplitSink<WebSocket, Message>) -> Self {
        Self(Mutex::new(sink))
    }

    fn lock(&self) -> MutexGuard<'_, SplitSink<WebSocket, Message>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn feed(&self, message: Message) -> Result<(), axum::Error> {
        let mut message = Some(message);
        std::future::poll_fn(|cx| {
            let mut sink = self.lock();
            ready!(sink.poll_ready_unpin(cx))?;
            Poll::Ready(sink.start_send_unpin(message.take().expect("sent once")))
        })
        .await
    }

    async fn flush(&self) -> Result<(), axum::Error> {
        std::future::poll_fn(|cx| self.lock().poll_flush_unpin(cx)).await
    }
}

impl DirectWrite for SharedSink {
    fn try_write(&self, frame: &Frame) -> Attempt {
        let Ok(mut sink) = self.0.try_lock() else {
            return Attempt::NotNow;
        };
        // Polled once with a no-op waker: whatever this leaves pending (a partial write), the
        // writer task finishes, polling with its own waker.
        let mut cx = Context::from_waker(Waker::noop());
        if !matches!(sink.poll_ready_unpin(&mut cx), Poll::Ready(Ok(()))) {
            return Attempt::NotNow;
        }
        if sink.start_send_unpin(Message::Text(frame.clone())).is_err() {
            // The socket failed; the writer's next write reports it and ends the session.
            return Attempt::Started;
        }
        match sink.poll_flush_unpin(&mut cx) {
            Poll::Ready(Ok(())) => Attempt::Written,
            _ => Attempt::Started,
        }
    }
}

/// Writes queued frames until the outbox is closed or the socket fails.
pub async fn run(sink: Arc<SharedSink>, mut rx: OutboxRx) {
    // Grows on first use: an idle connection should not hold a batch's worth of memory.
    let mut batch = VecDeque::new();
    let reason = loop {
        let ping = match rx.next(&mut batch, BATCH).await {
            Next::Close(reason) => break reason,
            Next::Done => return,
            Next::Ping => true,
            Next::Frames => false,
        };
        let write = async {
            if ping {
                sink.feed(Message::Ping(Default::default())).await?;
            }
            while let Some(frame) = batch.pop_front() {
                sink.feed(Message::Text(frame)).await?;
            }
            sink.flush().await
        };
        // A slow consumer is closed while its write (or ping) is stuck, not after. The write
        // is polled first: it usually completes at once, and then the close wait is never
        // registered.
        tokio::select! {
            biased;
            res = write => match res {
                Ok(()) => rx.written(),
                Err(_) => return,
            },
            reason = rx.closed() => break reason,
        }
    };
    let frame = CloseFrame {
        code: reason.code(),
        reason: reason.text().into(),
    };
    let send = async {
        sink.feed(Message::Close(Some(frame))).await?;
        sink.flush().await
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, send).await;
}
