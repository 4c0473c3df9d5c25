//! A socket whose writes must make progress: hyper has no write timeout, so
//! a client that stops reading its responses (its receive window shut)
//! would hold its connection, and a connection slot, forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Wraps a stream so that buffered output that cannot all be handed to the
/// kernel within `timeout` fails the connection with `TimedOut`.
///
/// The clock starts when a write or flush first has to wait (the peer's
/// window is full) and stops when a flush completes, i.e. when everything
/// hyper had to send (one response, or several pipelined ones) is out.
/// Trickling a few bytes now and then does not restart it.
pub struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteTimeout<S> {
    /// `inner`, whose writes may wait at most `timeout` each flush.
    pub fn new(inner: S, timeout: Duration) -> WriteTimeout<S> {
        WriteTimeout { inner, timeout, deadline: None }
    }

    /// Called when the inner stream said "not now": pending until the
    /// deadline, then the error.
    fn wait<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let deadline = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read its response in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.wait(cx),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.wait(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.deadline = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => self.wait(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.wait(cx),
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_peer_that_stops_reading_fails_the_write_in_time() {
        // A 4 KiB pipe: the writer blocks once it is full and nobody reads.
        let (near, mut far) = tokio::io::duplex(4096);
        let mut timed = WriteTimeout::new(near, Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = timed.write_all(&[b'x'; 64 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(5), "{waited:?}");
        // What fitted was delivered.
        let mut got = vec![0u8; 4096];
        assert_eq!(far.read(&mut got).await.unwrap(), 4096);
    }

    #[tokio::test]
    async fn a_peer_that_reads_is_never_cut_off() {
        let (near, mut far) = tokio::io::duplex(4096);
        let mut timed = WriteTimeout::new(near, Duration::from_secs(1));
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = [0u8; 1024];
            // Slower than the pipe, but each flush completes in time.
            while total < 3 * 16 * 1024 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                total += far.read(&mut buf).await.unwrap();
            }
            total
        });
        // Idle time between flushes, longer than the timeout, never counts.
        for _ in 0..3 {
            timed.write_all(&[b'x'; 16 * 1024]).await.unwrap();
            timed.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        assert_eq!(reader.await.unwrap(), 3 * 16 * 1024);
    }
}
