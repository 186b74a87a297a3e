//! A connection's TCP socket, written from two places in one byte order (the transport; the
//! wire format is `crate::protocol`'s).
//!
//! hyper (before the upgrade) and tungstenite (control frames after it) write through
//! [`SocketIo`]; the fan-out writes a session's queued message frames itself
//! ([`Socket::write_frames`], called for the outbox by its lane) instead of waking the session's task
//! for every delivery: that wake-up, the task's poll and tungstenite's copy of the frame cost
//! more user time per delivery than the rest of the fan-out. Whole frames go to the socket as
//! they are: a write the socket takes only in part leaves the rest here, in order, and every
//! later write waits until it is out, so frames from the two writers never interleave.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use axum::serve::Listener;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::protocol::Frame;

/// Frames per `writev`: two slices each (header, payload); far below `IOV_MAX` (1024).
const FRAMES_PER_WRITE: usize = 32;
/// Longest header of an unmasked frame (what a server sends): 2 bytes and a 64-bit length.
const MAX_HEADER: usize = 10;
/// Slices of left-over bytes per `writev`.
const SLICES_PER_WRITE: usize = 64;

/// What a write of queued frames achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Every frame is on the socket.
    Done,
    /// The socket is full: what it did not take waits here or in the caller's queue.
    Blocked,
    /// The socket failed; nothing more can be sent.
    Failed,
}

/// The socket and what it has not taken yet.
pub struct Socket {
    tcp: TcpStream,
    /// Bytes accepted for the socket and not yet written, in order.
    left: Mutex<Left>,
}

#[derive(Default)]
struct Left {
    /// Boxed: a socket is rarely full, and every connection holds this (8 bytes, not 32).
    #[expect(
        clippy::box_collection,
        reason = "the box keeps the empty case at one pointer in every connection"
    )]
    bytes: Option<Box<VecDeque<Bytes>>>,
    /// The socket failed with this: every later write fails the same way.
    failed: Option<io::ErrorKind>,
}

impl Left {
    fn push(&mut self, bytes: Bytes) {
        self.bytes.get_or_insert_default().push_back(bytes);
    }
}

impl Socket {
    /// Takes over `socket`.
    pub fn new(socket: TcpStream) -> Arc<Self> {
        Arc::new(Self {
            tcp: socket,
            left: Mutex::default(),
        })
    }

    fn left(&self) -> MutexGuard<'_, Left> {
        // Every update of `Left` is a single push or pop: a panic cannot leave it half-done.
        self.left.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `frames` (popping what the socket took) as text frames, several per `writev`,
    /// after anything left over; never waits.
    pub fn write_frames(&self, frames: &mut VecDeque<Frame>) -> Flushed {
        let mut left = self.left();
        match self.write_left(&mut left) {
            Ok(true) => {}
            Ok(false) => return Flushed::Blocked,
            Err(_) => return Flushed::Failed,
        }
        while !frames.is_empty() {
            let n = frames.len().min(FRAMES_PER_WRITE);
            let mut headers = [[0u8; MAX_HEADER]; FRAMES_PER_WRITE];
            let mut lens = [0usize; FRAMES_PER_WRITE];
            for (i, frame) in frames.iter().take(n).enumerate() {
                lens[i] = text_header(frame.len(), &mut headers[i]);
            }
            let written = {
                let mut slices = [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
                for (i, frame) in frames.iter().take(n).enumerate() {
                    slices[2 * i] = IoSlice::new(&headers[i][..lens[i]]);
                    slices[2 * i + 1] = IoSlice::new(frame.as_bytes());
                }
                self.try_write(&mut left.failed, &slices[..2 * n])
            };
            let mut written = match written {
                Ok(Some(written)) => written,
                Ok(None) => return Flushed::Blocked,
                Err(_) => return Flushed::Failed,
            };
            for (header, &len) in headers.iter().zip(&lens).take(n) {
                let frame = frames.pop_front().expect("n frames were in the write");
                if written >= len + frame.len() {
                    written -= len + frame.len();
                    continue;
                }
                // The socket took part of this frame: the rest goes out before anything else.
                let body = Bytes::from(frame);
                if written < len {
                    left.push(Bytes::copy_from_slice(&header[written..len]));
                    left.push(body);
                } else {
                    left.push(body.slice(written - len..));
                }
                return Flushed::Blocked;
            }
        }
        Flushed::Done
    }

    /// Ready once nothing is left over, or with the socket's error.
    pub fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut left = self.left();
        self.poll_drain_locked(cx, &mut left)
    }

    fn poll_drain_locked(&self, cx: &mut Context<'_>, left: &mut Left) -> Poll<io::Result<()>> {
        // A write that finds the socket full clears its readiness, so the poll below either
        // registers `cx` or reports that the socket took room since.
        while !self.write_left(left)? {
            ready!(self.tcp.poll_write_ready(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Ready once the socket may take more (frames queued behind a full socket wait for it).
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_write_ready(cx)
    }

    /// Writes left-over bytes; `Ok(true)` once none are left, `Ok(false)` when the socket is full.
    fn write_left(&self, left: &mut Left) -> io::Result<bool> {
        let Left { bytes, failed } = left;
        let Some(pending) = bytes else {
            return Ok(true);
        };
        while !pending.is_empty() {
            let written = {
                let mut slices = [IoSlice::new(&[]); SLICES_PER_WRITE];
                let n = pending.len().min(SLICES_PER_WRITE);
                for (slice, bytes) in slices.iter_mut().zip(pending.iter()) {
                    *slice = IoSlice::new(bytes);
                }
                self.try_write(failed, &slices[..n])?
            };
            let Some(mut written) = written else {
                return Ok(false);
            };
            while written > 0 {
                let first = pending.front_mut().expect("written bytes were left over");
                if written < first.len() {
                    first.advance(written);
                    break;
                }
                written -= first.len();
                pending.pop_front();
            }
        }
        *bytes = None;
        Ok(true)
    }

    /// One `writev`: `Some(bytes written)`, `None` when the socket is full. A failure is kept:
    /// every later write reports it.
    fn try_write(
        &self,
        failed: &mut Option<io::ErrorKind>,
        slices: &[IoSlice<'_>],
    ) -> io::Result<Option<usize>> {
        if let Some(kind) = *failed {
            return Err(kind.into());
        }
        loop {
            let error = match self.tcp.try_write_vectored(slices) {
                Ok(0) if slices.iter().any(|s| !s.is_empty()) => io::ErrorKind::WriteZero.into(),
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            *failed = Some(error.kind());
            return Err(error);
        }
    }

    /// Takes all of `slices` (what the socket does not take now is left over), after anything
    /// left over before; pending while earlier bytes are still left over.
    fn poll_accept(&self, cx: &mut Context<'_>, slices: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut left = self.left();
        ready!(self.poll_drain_locked(cx, &mut left))?;
        let mut written = self.try_write(&mut left.failed, slices)?.unwrap_or(0);
        if written < total {
            let mut rest = BytesMut::with_capacity(total - written);
            for slice in slices {
                let skip = written.min(slice.len());
                written -= skip;
                rest.extend_from_slice(&slice[skip..]);
            }
            left.push(rest.freeze());
        }
        Poll::Ready(Ok(total))
    }
}

/// Writes the header of an unmasked, final text frame of `len` bytes; returns its length.
fn text_header(len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let mut rest = &mut out[..];
    header
        .format(len as u64, &mut rest)
        .expect("an unmasked header fits in MAX_HEADER bytes");
    MAX_HEADER - rest.len()
}

/// The byte stream hyper and tungstenite use: reads from the socket, writes through the
/// [`Socket`] (taking every byte offered, so a frame is never split between two writers).
pub struct SocketIo(Arc<Socket>);

impl AsyncRead for SocketIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let socket = &self.0.tcp;
        loop {
            ready!(socket.poll_read_ready(cx))?;
            // A read that finds nothing clears the readiness: the next poll registers `cx`.
            match read_uninit(socket, buf) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Reads what `tcp` has into `buf`'s unfilled part without zeroing it first, as tokio's own
/// `TcpStream` does. hyper and tokio-tungstenite hand every read an uninitialised buffer (8 KiB
/// for a request head, the read-ahead's 16 KiB for a session), and zeroing all of it before
/// each read was 3 % of a connect storm's CPU and a 16 KiB memset per read of a publisher.
#[allow(unsafe_code)]
fn read_uninit(tcp: &TcpStream, buf: &mut ReadBuf<'_>) -> io::Result<()> {
    // SAFETY: the unfilled part is only written to (recv(2) through `BufMut`), never
    // de-initialised.
    let mut unfilled = unsafe { buf.unfilled_mut() };
    let n = tcp.try_read_buf(&mut unfilled)?;
    // SAFETY: `try_read_buf` reports the `n` bytes recv(2) wrote at the start of `unfilled`.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(())
}

impl AsyncWrite for SocketIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_accept(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_accept(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.0.poll_drain(cx))?;
        Poll::Ready(socket2::SockRef::from(&self.0.tcp).shutdown(std::net::Shutdown::Write))
    }
}

/// The client listener: every accepted connection's socket becomes a [`Socket`].
pub struct SocketListener(pub TcpListener);

impl Listener for SocketListener {
    type Io = SocketIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (SocketIo, SocketAddr) {
        // axum's accept retries on errors (with a pause when out of file descriptors).
        let (socket, remote) = Listener::accept(&mut self.0).await;
        // Deliveries are small frames that must leave at once: no Nagle delay.
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        (SocketIo(Socket::new(socket)), remote)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// What a request knows about its connection: the client's address, and the socket for a
/// WebSocket session's fan-out to write to.
#[derive(Clone)]
pub struct Peer {
    /// The client's address.
    pub remote: SocketAddr,
    /// The connection's socket.
    pub socket: Arc<Socket>,
}

impl SocketIo {
    /// What a request on this connection from `remote` knows about it.
    pub fn peer(&self, remote: SocketAddr) -> Peer {
        Peer {
            remote,
            socket: self.0.clone(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connected pair: the wire's socket and the peer that reads it.
    pub(crate) async fn pair() -> (Arc<Socket>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Socket::new(accepted.unwrap().0), client.unwrap())
    }

    pub(crate) fn frames(n: usize, size: usize) -> VecDeque<Frame> {
        (0..n)
            .map(|i| Frame::from(format!("{i} {}", "x".repeat(size))))
            .collect()
    }

    /// Reads `n` text frames back with tungstenite's own parser, as a client would.
    pub(crate) async fn read_frames(peer: TcpStream, n: usize) -> Vec<String> {
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            peer,
            tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        let mut got = Vec::new();
        while got.len() < n {
            use futures_util::StreamExt;
            match ws.next().await.unwrap().unwrap() {
                tungstenite::Message::Text(t) => got.push(t.as_str().to_owned()),
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    }

    /// Frames the socket cannot take at once are left over in order, interleaved whole with
    /// what the other writer (tungstenite's stream) adds meanwhile.
    #[tokio::test]
    async fn a_full_socket_keeps_whole_frames_in_order() {
        let (wire, peer) = pair().await;
        let mut queue = frames(400, 64 * 1024);
        let expected: Vec<String> = queue.iter().map(|f| f.as_str().to_owned()).collect();
        let reader = tokio::spawn(read_frames(peer, expected.len() + 1));
        let mut io = SocketIo(wire.clone());
        let mut ping_sent = false;
        loop {
            match wire.write_frames(&mut queue) {
                Flushed::Done => break,
                Flushed::Failed => panic!("socket failed"),
                Flushed::Blocked => {}
            }
            if !ping_sent {
                // A whole frame from the other writer while the socket is full.
                let extra = Frame::from("from the stream".to_owned());
                let mut bytes = [0u8; MAX_HEADER];
                let len = text_header(extra.len(), &mut bytes);
                let mut whole = bytes[..len].to_vec();
                whole.extend_from_slice(extra.as_bytes());
                tokio::io::AsyncWriteExt::write_all(&mut io, &whole)
                    .await
                    .unwrap();
                ping_sent = true;
            }
            std::future::poll_fn(|cx| wire.poll_writable(cx))
                .await
                .unwrap();
        }
        assert!(ping_sent, "the socket filled up at least once");
        std::future::poll_fn(|cx| wire.poll_drain(cx))
            .await
            .unwrap();
        let got = reader.await.unwrap();
        let stream_at = got.iter().position(|f| f == "from the stream").unwrap();
        let mut frames_only = got.clone();
        frames_only.remove(stream_at);
        assert_eq!(frames_only, expected, "every frame, whole and in order");
        assert!(
            stream_at < expected.len(),
            "the stream's frame went out while frames waited"
        );
    }

    /// Every connection holds one: with `Arc`'s two counters it stays within jemalloc's
    /// 80-byte size class.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_wire_fits_in_80_bytes() {
        assert!(std::mem::size_of::<Socket>() + 16 <= 80);
    }

    #[tokio::test]
    async fn reads_come_from_the_socket() {
        let (wire, mut peer) = pair().await;
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"hello")
            .await
            .unwrap();
        let mut io = SocketIo(wire);
        let mut buf = [0u8; 5];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }
}
