//! A byte stream that reads from the socket in large gulps into a per-thread scratch buffer
//! and keeps only what the WebSocket has not taken yet.
//!
//! tungstenite reads at most its read buffer's size per call, and that buffer lives as long as
//! the connection. Most connections are idle subscribers whose only frames are a few small
//! requests, so the buffer is kept tiny ([`super::READ_BUFFER`]); a busy publisher's frames
//! still arrive with one `read` syscall per [`SCRATCH`] bytes instead of one per buffer, the
//! rest waiting here in a leftover that is freed as soon as it is consumed.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes one socket read may take; per worker thread, not per connection.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// `inner` with read-ahead; writes pass straight through.
pub struct ReadAhead<S> {
    inner: S,
    /// Bytes read from the socket and not yet handed out; `None` when idle. Boxed: one
    /// pointer in every connection's task instead of 32 bytes.
    leftover: Option<Box<Bytes>>,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            leftover: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(rest) = &mut this.leftover {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            rest.advance(n);
            if rest.is_empty() {
                this.leftover = None;
            }
            return Poll::Ready(Ok(()));
        }
        SCRATCH_BUF.with_borrow_mut(|scratch| {
            let mut gulp = ReadBuf::new(scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut gulp))?;
            let got = gulp.filled();
            let n = got.len().min(buf.remaining());
            buf.put_slice(&got[..n]);
            if n < got.len() {
                this.leftover = Some(Box::new(Bytes::copy_from_slice(&got[n..])));
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small reads get a large write back in order, whole, with nothing left over after.
    #[tokio::test]
    async fn small_reads_see_every_byte_in_order() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&data).await.unwrap();
        drop(tx);
        let mut reader = ReadAhead::new(rx);
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        loop {
            let n = reader.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
            let held = reader.leftover.as_ref().map_or(0, |rest| rest.len());
            assert!(held <= SCRATCH);
        }
        assert_eq!(got, data);
        assert!(reader.leftover.is_none(), "nothing held once all is read");
    }
}
