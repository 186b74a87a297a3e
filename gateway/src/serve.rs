//! Serving HTTP connections: the accept loop, bounds on connections that are not (yet)
//! WebSocket sessions, and graceful shutdown.
//!
//! axum's own `serve` sets no timeouts and no limit: a client could open connections and send
//! nothing (or one header byte every few seconds) and hold them, and their file descriptors,
//! forever; with a small descriptor limit a few hundred idle sockets locked every client out.
//! Here every connection that is not an upgraded WebSocket session
//! - holds one of `limits.max_http_connections` permits: at the limit the node stops
//!   accepting (connects wait in the kernel's queue) until a connection ends;
//! - must send a complete request head within `limits.http_header_timeout_secs`, counted from
//!   when the server starts waiting for it: for the first request, and between keep-alive
//!   requests (so an idle keep-alive connection is closed after it too);
//! - must have each request (its body read and answered) done within
//!   `limits.http_request_timeout_secs`, else it gets 408 and the connection is closed.
//!
//! A WebSocket upgrade hands its socket to the session and releases the permit: sessions
//! count toward `limits.max_connections` instead.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Limits;
use crate::error::ApiError;

/// Bounds on connections that are not WebSocket sessions; from `[limits]`.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time to send a complete request head, and longest idle time between keep-alive
    /// requests.
    pub header_timeout: Duration,
    /// Time to read a request's body and answer it.
    pub request_timeout: Duration,
    /// Connections at once.
    pub max_connections: usize,
}

impl HttpLimits {
    /// The configured bounds.
    pub fn from_config(limits: &Limits) -> Self {
        Self {
            header_timeout: Duration::from_secs(limits.http_header_timeout_secs),
            request_timeout: Duration::from_secs(limits.http_request_timeout_secs),
            max_connections: limits.max_http_connections,
        }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled, then stops accepting, lets requests
/// in progress finish and waits for their connections to close. `info` makes each
/// connection's [`ConnectInfo`] from its socket and address.
pub async fn serve<L, C>(
    mut listener: L,
    app: Router,
    limits: HttpLimits,
    stop: CancellationToken,
    info: impl Fn(&L::Io, L::Addr) -> C,
) where
    L: Listener,
    C: Clone + Send + Sync + 'static,
{
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.request_timeout,
        request_timeout,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let gauge = metrics::gauge!("switchyard_http_connections");
    loop {
        // At the limit, wait for a connection to end before accepting another: a burst of
        // connects waits in the kernel's queue (`server.listen_backlog`) rather than failing.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let connect_info = ConnectInfo(info(&io, addr));
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(connect_info.clone());
            let app = app.clone();
            tower::ServiceExt::oneshot(app, request)
        });
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let (stop, gauge) = (stop.clone(), gauge.clone());
        gauge.increment(1.0);
        connections.spawn(async move {
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "http connection ended");
            }
            gauge.decrement(1.0);
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

/// Answers 408 when a request (reading its body included) takes longer than `limit`; hyper
/// then closes the connection, as the rest of the body was not read.
async fn request_timeout(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "request not completed within limits.http_request_timeout_secs = {}",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Hands out in-memory connections the test pushes.
    struct Pipes(tokio::sync::mpsc::UnboundedReceiver<DuplexStream>);

    impl Listener for Pipes {
        type Io = DuplexStream;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (DuplexStream, std::net::SocketAddr) {
            match self.0.recv().await {
                Some(io) => (io, ([127, 0, 0, 1], 1).into()),
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
            Ok(([127, 0, 0, 1], 0).into())
        }
    }

    fn limits() -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 2,
        }
    }

    /// Reads what the server sends until it closes the connection.
    async fn until_closed(mut client: DuplexStream) -> String {
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        String::from_utf8_lossy(&got).into_owned()
    }

    /// A connection that never sends a request, one that stops in the middle of its head and
    /// an idle keep-alive one are closed once the header timeout passes (paused clock: the
    /// test does not wait ten seconds). A request body that never completes gets 408.
    #[tokio::test(start_paused = true)]
    async fn timeouts_close_idle_and_unfinished_connections() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let app = Router::new().route(
            "/",
            axum::routing::get(|| async { "ok" })
                .post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(Pipes(rx), app, limits(), stop.clone(), |_, a| a));
        let pipe = || {
            let (client, server) = tokio::io::duplex(4096);
            tx.send(server).unwrap();
            client
        };
        let silent = pipe();
        let mut half = pipe();
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        assert_eq!(until_closed(silent).await, "", "closed without an answer");
        assert_eq!(until_closed(half).await, "");
        let mut keep_alive = pipe();
        keep_alive
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(keep_alive).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
            "{answer}"
        );
        let mut trickle = pipe();
        trickle
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        let answer = until_closed(trickle).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        stop.cancel();
        server.await.unwrap();
    }

    /// At the limit the server accepts no more connections until one ends.
    #[tokio::test(start_paused = true)]
    async fn connections_beyond_the_limit_wait_for_a_place() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(Pipes(rx), app, limits(), stop.clone(), |_, a| a));
        let mut pipes = Vec::new();
        for _ in 0..3 {
            let (client, server) = tokio::io::duplex(4096);
            tx.send(server).unwrap();
            pipes.push(client);
        }
        let mut third = pipes.pop().unwrap();
        third
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        // The two first hold the places until their header timeout (10 s): nothing before.
        let early = tokio::time::timeout(Duration::from_secs(9), third.read(&mut buf)).await;
        assert!(
            early.is_err(),
            "the third was served while two held the places"
        );
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("served once a place is free")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        stop.cancel();
        drop(pipes);
        drop(third);
        server.await.unwrap();
    }
}
