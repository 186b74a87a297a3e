//! A session's writer: drains its outbox into the socket, several frames per flush.

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;

use crate::outbox::{CloseReason, Next, OutboxRx};

/// Frames written per flush at most; bounds the latency a batch adds for its first frame.
const BATCH: usize = 64;
/// How long a close frame may take to leave before the socket is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Writes queued frames until the outbox is closed or the socket fails.
pub async fn run(mut sink: SplitSink<WebSocket, Message>, mut rx: OutboxRx) {
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
            res = write => if res.is_err() {
                return;
            },
            reason = rx.closed() => break reason,
        }
    };
    close(&mut sink, reason).await;
}

async fn close(sink: &mut SplitSink<WebSocket, Message>, reason: CloseReason) {
    let frame = CloseFrame {
        code: reason.code(),
        reason: reason.text().into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
}
