//! A session's bounded outbound queue and its close signal.
//!
//! The hub (through [`Sink`]) and the session push frames. Pushing never waits: a full queue
//! marks the session a slow consumer and asks its writer to close it, so one stuck client can
//! neither slow the fan-out nor grow memory without bound.
//!
//! The queue is written to its socket by its fan-out lane ([`super::lanes`]). Only when the
//! socket is full does the session's own task take over ([`OutboxRx::poll_write`]), waiting for
//! room; frames pushed meanwhile wait for it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use super::lanes::{Flush, Lane};
use super::socket::{Flushed, Socket};
use crate::hub::Sink;
use crate::protocol::CloseReason;
use crate::protocol::Frame;

/// Most frames a queue keeps allocated room for once it is empty again; a burst's larger
/// buffer is released so a connection that went quiet goes back to holding almost nothing.
const KEEP_CAPACITY: usize = 64;
/// After a request, a queue buffer with room for fewer frames than this is freed once it is
/// written: it came from a reply or two, typically the `subscribed` reply that is an idle
/// connection's last frame, and kept, every idle subscriber would hold 64 bytes for its whole
/// life. Not freed after deliveries alone: a subscriber getting one frame per write would
/// allocate and free it every time.
const KEEP_AFTER_REQUEST: usize = 8;

struct Shared {
    /// Frames queued and not yet written, with who writes them next. A plain locked deque: it
    /// allocates nothing until the first frame (an idle connection's queue costs no heap),
    /// and frames are written under the lock, so the order is the order of the pushes.
    queue: Mutex<Queue>,
    /// The queue's length, stored under its lock, so the writer sees "nothing queued" without
    /// taking the lock.
    queued: AtomicU32,
    /// The writer: the session's task, woken for a close or a full socket.
    writer: AtomicWaker,
    /// The writer is gone (its socket failed): frames pushed now would never be sent.
    writer_gone: AtomicBool,
    /// The session stopped reading requests until the queue shrinks below
    /// [`Shared::request_room`]; set back (and the session woken) once it has.
    wants_room: AtomicBool,
    /// Commands wait for the session in the node's registry (`crate::connections`).
    mail: AtomicBool,
    reason: OnceLock<CloseReason>,
    /// The lane that writes this queue to its socket; it also holds the queue's capacity
    /// (`limits.outbound_queue`, the same for every queue of the node): one field less keeps
    /// the whole in jemalloc's 128-byte size class (idle memory).
    lane: Arc<Lane>,
    /// This queue, for listing itself with its lane (the hub pushes through a plain
    /// reference; a weak one costs nothing per delivery).
    me: Weak<Shared>,
}

struct Queue {
    frames: VecDeque<Frame>,
    /// The connection's socket; dropped with the receiver, so the socket closes when the
    /// session ends even while the hub still holds the queue.
    socket: Option<Arc<Socket>>,
    writing: Writing,
    /// A request was handled: free a small buffer once it is written (see
    /// [`KEEP_AFTER_REQUEST`]).
    trim: bool,
}

/// Who writes the queue's frames next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writing {
    /// Nobody: the queue is empty, or its frames wait for the close.
    Idle,
    /// The lane: the queue is in its list.
    Listed,
    /// The session's task, once the socket has room (or to report that it failed).
    Parked,
    /// Nobody ever again: the session is closing (no data frame may follow a close frame).
    Sealed,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the deque half-updated.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lane's turn: writes what is queued, or hands the queue to the session's task when
    /// the socket is full or failed.
    fn flush(&self) {
        let mut queue = self.queue();
        if queue.writing != Writing::Listed {
            return;
        }
        if self.reason.get().is_some() {
            // The writer closes the session (woken by `close`); what is queued stays unsent.
            queue.writing = Writing::Sealed;
            return;
        }
        queue.writing = Writing::Idle;
        let Queue {
            frames,
            socket,
            writing,
            ..
        } = &mut *queue;
        let Some(socket) = socket else { return };
        let parked = match socket.write_frames(frames) {
            Flushed::Done => false,
            Flushed::Blocked | Flushed::Failed => {
                *writing = Writing::Parked;
                true
            }
        };
        self.written(&mut queue);
        drop(queue);
        if parked {
            self.writer.wake();
        }
    }

    /// Frames below which the session reads its client's next request: replies to requests
    /// are never refused for a full queue (that would close a client for pipelining), so the
    /// session stops reading instead, and the client's requests wait in TCP.
    fn request_room(&self) -> u32 {
        (self.lane.capacity() / 2).max(1)
    }

    /// Whether the queue holds fewer frames than [`Shared::request_room`]; when not, the
    /// writer wakes the session once it does.
    fn has_room(&self) -> bool {
        let room = self.request_room();
        if self.queued.load(Ordering::Acquire) < room {
            return true;
        }
        self.wants_room.store(true, Ordering::SeqCst);
        // The writer may have emptied the queue between the look and the flag.
        if self.queued.load(Ordering::SeqCst) < room {
            self.wants_room.store(false, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records the queue's length after frames left it.
    fn written(&self, queue: &mut Queue) {
        if queue.frames.is_empty() && queue.frames.capacity() > 0 {
            let trim = std::mem::take(&mut queue.trim);
            let capacity = queue.frames.capacity();
            if capacity > KEEP_CAPACITY || (trim && capacity < KEEP_AFTER_REQUEST) {
                queue.frames = VecDeque::new();
            }
        }
        let queued = queue.frames.len() as u32;
        // SeqCst here and in `has_request_room`: each side stores one flag and reads the
        // other's, and at least one of them must see the other's store.
        self.queued.store(queued, Ordering::SeqCst);
        if queued < self.request_room() && self.wants_room.swap(false, Ordering::SeqCst) {
            self.writer.wake();
        }
    }
}

impl Flush for Shared {
    fn flush(&self) {
        Shared::flush(self);
    }
}

/// The producer side of a session's queue, held by the session (the hub and the node's
/// connection registry hold it as a [`Sink`]).
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

/// The writer's side: the close request and a full socket.
pub struct OutboxRx(Arc<Shared>);

impl Outbox {
    /// A queue holding at most the lane's capacity of frames, written to `socket` by `lane`.
    pub fn new(socket: Arc<Socket>, lane: Arc<Lane>) -> (Outbox, OutboxRx) {
        let shared = Arc::new_cyclic(|me| Shared {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                socket: Some(socket),
                writing: Writing::Idle,
                trim: false,
            }),
            queued: AtomicU32::new(0),
            writer: AtomicWaker::new(),
            writer_gone: AtomicBool::new(false),
            wants_room: AtomicBool::new(false),
            mail: AtomicBool::new(false),
            reason: OnceLock::new(),
            lane,
            me: me.clone(),
        });
        (Outbox(shared.clone()), OutboxRx(shared))
    }

    /// The queue as the hub and the connection registry hold it.
    pub fn sink(&self) -> Arc<dyn Sink> {
        self.0.clone()
    }
}

impl Sink for Shared {
    fn push(&self, frame: Frame) -> bool {
        self.push_frame(frame, true)
    }

    fn close(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            self.writer.wake();
        }
    }

    fn notify(&self) {
        self.mail.store(true, Ordering::Release);
        self.writer.wake();
    }
}

impl Drop for OutboxRx {
    fn drop(&mut self) {
        self.0.writer_gone.store(true, Ordering::Release);
        let mut queue = self.0.queue();
        queue.writing = Writing::Sealed;
        queue.socket = None;
    }
}

impl Shared {
    fn push_frame(&self, frame: Frame, bounded: bool) -> bool {
        if self.writer_gone.load(Ordering::Acquire) {
            return false;
        }
        let mut queue = self.queue();
        if bounded && queue.frames.len() >= self.lane.capacity() as usize {
            drop(queue);
            Sink::close(self, CloseReason::SlowConsumer);
            return false;
        }
        queue.frames.push_back(frame);
        self.queued
            .store(queue.frames.len() as u32, Ordering::Release);
        // Listed or parked: whoever writes next takes this frame with the others.
        if queue.writing == Writing::Idle
            && let Some(me) = self.me.upgrade()
        {
            queue.writing = Writing::Listed;
            drop(queue);
            self.lane.list(me);
        }
        true
    }
}

impl Outbox {
    /// Queues a delivery; on overflow, closes the session as a slow consumer. Returns false
    /// when the frame was not queued.
    pub fn push(&self, frame: Frame) -> bool {
        self.0.push_frame(frame, true)
    }

    /// Queues a reply to one of the client's own requests. Never refused for a full queue:
    /// the session bounds replies by reading requests only while the queue has room
    /// ([`OutboxRx::has_request_room`]), so a client that pipelines many requests is slowed
    /// down, not closed. Returns false when the frame was not queued.
    pub fn push_reply(&self, frame: Frame) -> bool {
        self.0.push_frame(frame, false)
    }

    /// Resolves with true once the queue is below half its capacity: how the session paces frames it
    /// sends in bulk (recovered history) to what the client reads. The session's task must be
    /// the queue's writer (it is woken through it).
    /// Returns false instead when nothing more will be sent: the session is closing or its
    /// socket failed.
    pub async fn room(&self) -> bool {
        std::future::poll_fn(|_| {
            if self.0.reason.get().is_some() || self.0.writer_gone.load(Ordering::Acquire) {
                Poll::Ready(false)
            } else if self.0.has_room() {
                Poll::Ready(true)
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// The most frames the queue holds for deliveries.
    pub fn capacity(&self) -> usize {
        self.0.lane.capacity() as usize
    }

    /// Asks the writer to close the connection; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        Sink::close(&*self.0, reason);
    }

    /// Whether commands wait for the session (cleared by asking): the writer's task, woken
    /// through the queue, looks before it sleeps.
    pub fn take_mail(&self) -> bool {
        self.0.mail.load(Ordering::Acquire) && self.0.mail.swap(false, Ordering::AcqRel)
    }

    /// The reason the session is closing, if it is.
    pub fn closing(&self) -> Option<CloseReason> {
        self.0.reason.get().copied()
    }
}

/// Why the writer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The session is to be closed with this reason (a close frame is still to be sent).
    Close(CloseReason),
    /// The socket failed: nothing more can be sent.
    Failed,
}

impl OutboxRx {
    /// The session's part in writing the queue: ready when the session is to be closed or the
    /// socket failed. While the socket is full, waits for room and writes what
    /// queued up meanwhile; otherwise the lane writes and this only registers for the close.
    pub fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        self.0.writer.register(cx.waker());
        if let Some(reason) = self.0.reason.get() {
            return Poll::Ready(Stop::Close(*reason));
        }
        let mut queue = self.0.queue();
        if queue.writing != Writing::Parked {
            return Poll::Pending;
        }
        let Queue {
            frames,
            socket,
            writing,
            ..
        } = &mut *queue;
        let Some(socket) = socket else {
            return Poll::Pending;
        };
        let found = loop {
            match socket.write_frames(frames) {
                Flushed::Done => {
                    *writing = Writing::Idle;
                    break Poll::Pending;
                }
                Flushed::Failed => break Poll::Ready(Stop::Failed),
                Flushed::Blocked => match socket.poll_writable(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(_)) => break Poll::Ready(Stop::Failed),
                    Poll::Pending => break Poll::Pending,
                },
            }
        };
        self.0.written(&mut queue);
        if found == Poll::Ready(Stop::Failed) {
            // Nothing pushed from now on would ever be sent.
            self.0.writer_gone.store(true, Ordering::Release);
        }
        found
    }

    /// Whether the session may read its client's next request: the queue holds fewer frames
    /// than half its capacity. When not, the session is woken once it does.
    pub fn has_request_room(&self) -> bool {
        self.0.has_room()
    }

    /// The session handled a request: the queue's buffer is freed once what it holds is
    /// written, if it is small (at most 8 frames: `KEEP_AFTER_REQUEST`).
    pub fn request_handled(&self) {
        self.0.queue().trim = true;
    }

    /// No frame is written from now on: the session sends its close frame next.
    pub fn seal(&self) {
        self.0.queue().writing = Writing::Sealed;
    }
}

#[cfg(test)]
mod tests {
    use super::super::lanes::Lanes;
    use super::super::socket::tests::{frames, pair, read_frames};
    use super::*;

    /// The lane writes; when the socket fills, the session's part takes over and writes what
    /// queued up meanwhile: the client gets every frame, whole and in order.
    #[tokio::test]
    async fn a_queue_reaches_its_socket_in_order() {
        let (socket, peer) = pair().await;
        let lanes = Lanes::start(1_000);
        let (tx, mut rx) = Outbox::new(socket, lanes.pick(7));
        let frames = frames(300, 64 * 1024);
        let expected: Vec<String> = frames.iter().map(|f| f.as_str().to_owned()).collect();
        let reader = tokio::spawn(read_frames(peer, frames.len()));
        for (i, frame) in frames.into_iter().enumerate() {
            assert!(tx.push(frame));
            if i % 10 == 0 {
                // Lets the lane run between bursts, as the broker's task does between reads.
                tokio::task::yield_now().await;
            }
        }
        let session = std::future::poll_fn(|cx| rx.poll_write(cx));
        let got = tokio::select! {
            got = reader => got.unwrap(),
            stop = session => panic!("the session stopped: {stop:?}"),
        };
        assert_eq!(got, expected);
    }

    /// A client that reads nothing fills its socket, then its queue: closed as a slow
    /// consumer, without the pushes ever waiting.
    #[tokio::test]
    async fn a_full_socket_then_a_full_queue_is_a_slow_consumer() {
        let (socket, _peer) = pair().await;
        let lanes = Lanes::start(4);
        let (tx, mut rx) = Outbox::new(socket, lanes.pick(0));
        let frame = frames(1, 64 * 1024).pop_front().unwrap();
        let mut pushes = 0;
        while tx.push(frame.clone()) {
            pushes += 1;
            assert!(pushes < 10_000, "the queue never filled");
            tokio::task::yield_now().await;
        }
        assert_eq!(tx.closing(), Some(CloseReason::SlowConsumer));
        let stop = std::future::poll_fn(|cx| rx.poll_write(cx)).await;
        assert_eq!(stop, Stop::Close(CloseReason::SlowConsumer));
    }

    /// An idle connection's last frame is usually a reply: its buffer is not kept once written.
    #[tokio::test]
    async fn a_reply_buffer_is_freed_once_written() {
        let (socket, peer) = pair().await;
        let lanes = Lanes::start(8);
        let (tx, rx) = Outbox::new(socket, lanes.pick(0));
        let reader = tokio::spawn(read_frames(peer, 2));
        assert!(tx.push("delivery".into()));
        while tx.0.queued.load(Ordering::Acquire) > 0 {
            // The lane's task runs when this one yields.
            tokio::task::yield_now().await;
        }
        assert!(tx.0.queue().frames.capacity() > 0, "kept after a delivery");
        assert!(tx.push("reply".into()));
        rx.request_handled();
        reader.await.unwrap();
        assert_eq!(tx.0.queue().frames.capacity(), 0, "freed after a request");
    }

    /// Every connection holds one queue: with `Arc`'s two counters it stays within jemalloc's
    /// 128-byte size class (one more field would take it to 160 bytes per connection).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_queue_fits_in_128_bytes() {
        assert!(std::mem::size_of::<Shared>() + 16 <= 128);
    }

    #[tokio::test]
    async fn pushes_after_the_writer_is_gone_are_refused() {
        let (socket, _peer) = pair().await;
        let lanes = Lanes::start(8);
        let (tx, rx) = Outbox::new(socket, lanes.pick(0));
        drop(rx);
        assert!(!tx.push("a".into()));
        assert_eq!(tx.closing(), None, "not a slow consumer");
    }
}
