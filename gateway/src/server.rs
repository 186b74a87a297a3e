//! HTTP server: routes, the node's background tasks, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::config::{Config, ServerConfig, Source};
use crate::node::{Background, Node, StartError};
use crate::ws::socket::SocketListener;
use crate::{api, ws};

/// How often histogram samples are folded into buckets (the exporter's own default).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Builds the HTTP router for `node`, its sessions written by `lanes`.
pub fn router(node: Arc<Node>, lanes: Arc<ws::lanes::Lanes>) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .with_state(node.clone())
        .merge(api::router(node.clone()))
        .merge(ws::router(ws::Endpoint { node, lanes }))
}

/// A bound, not yet serving gateway node.
pub struct Gateway {
    node: Arc<Node>,
    background: Background,
    listener: TcpListener,
    admin: Option<TcpListener>,
    reload: Option<Source>,
}

impl Gateway {
    /// Binds the configured listen address and sets up the node.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let addr = config.server.listen;
        let listener = listen(addr, config.server.listen_backlog)
            .map_err(|source| StartError::Bind { addr, source })?;
        let admin = match config.admin.listen {
            Some(addr) => Some(
                listen(addr, config.server.listen_backlog)
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let (node, background) = Node::start(config).await?;
        Ok(Self {
            node,
            background,
            listener,
            admin,
            reload: None,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Re-reads the configuration from `source` on SIGHUP and when its file changes.
    pub fn reload_from(mut self, source: Source) -> Self {
        self.reload = Some(source);
        self
    }

    /// The admin listener's address, when it has its own.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The node, for inspection.
    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// Serves until `shutdown` resolves, then drains: readiness goes false, the listener
    /// stops accepting, every client is closed with 1001, and sessions get
    /// `server.shutdown_grace_secs` to finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let Gateway {
            node,
            background,
            listener,
            admin,
            reload,
        } = self;
        tracing::info!(
            node = %node.id,
            addr = %listener.local_addr()?,
            broker = node.broker.kind(),
            "switchyard listening"
        );
        tokio::spawn(close_sessions_on_shutdown(node.clone()));
        tokio::spawn(metrics_upkeep(node.clone()));
        tokio::spawn(post_status(node.clone()));
        tokio::spawn(crate::commands::run(
            node.revocations.clone(),
            node.clone(),
            background.subscriptions.clone(),
            background.commands,
            node.shutdown.clone(),
        ));
        tokio::spawn(node.rollout.clone().run(
            background.subscriptions,
            background.control,
            node.shutdown.clone(),
        ));
        // Without a plugins directory there is nothing to watch (a node with no plugins).
        if node.config.admin.watch
            && node.config.plugins.dir.is_dir()
            && let Err(e) = crate::watch::spawn(
                node.rollout.clone(),
                &node.config.plugins.dir,
                reload.clone(),
                node.shutdown.clone(),
            )
        {
            tracing::warn!(error = %e, dir = %node.config.plugins.dir.display(), "cannot watch plugins directory; hot swap from files is off");
        }
        #[cfg(unix)]
        if let Some(source) = reload {
            tokio::spawn(reload_on_sighup(node.clone(), source));
        }
        let limits = crate::serve::HttpLimits::from_config(&node.config.limits);
        let lanes = Arc::new(ws::lanes::Lanes::start(node.config.limits.outbound_queue));
        let mut app = router(node.clone(), lanes);
        match admin {
            Some(listener) => {
                let admin_app = crate::admin::router(node.clone());
                let (limits, stop) = (limits.clone(), node.shutdown.clone());
                tokio::spawn(async move {
                    crate::serve::serve(listener, admin_app, limits, stop, |_, addr| addr).await
                });
            }
            None => app = app.merge(crate::admin::router(node.clone())),
        }
        tokio::spawn(drain_then_stop(node.clone(), shutdown));
        crate::serve::serve(
            SocketListener(listener),
            app,
            limits,
            node.shutdown.clone(),
            |io, remote| io.peer(remote),
        )
        .await;
        node.shutdown.cancel();
        node.sessions.close();
        let grace = Duration::from_secs(node.config.server.shutdown_grace_secs);
        if tokio::time::timeout(grace, node.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = node.sessions.len(),
                "shutdown grace expired with sessions open"
            );
        }
        node.presence.shutdown().await;
        node.board.withdraw(&node.id).await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Waits for `shutdown`, leaves readiness, waits `server.drain_secs` (still serving), then
/// starts shutting down: the listener stops and every client is closed.
async fn drain_then_stop(node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    tokio::select! {
        () = shutdown => {}
        // Shut down by other means (an embedding test): nothing to drain.
        () = node.shutdown.cancelled() => return,
    }
    node.draining.cancel();
    let drain = Duration::from_secs(node.config.server.drain_secs);
    if !drain.is_zero() {
        tracing::info!(
            secs = drain.as_secs(),
            "draining: readiness is false; still serving"
        );
        tokio::time::sleep(drain).await;
    }
    tracing::info!("shutting down: closing clients");
    node.shutdown.cancel();
}

/// Closes every session once the node starts shutting down, whoever cancelled the token.
async fn close_sessions_on_shutdown(node: Arc<Node>) {
    node.shutdown.cancelled().await;
    node.connections.close_all();
}

/// Folds recorded histogram samples into their buckets every [`METRICS_UPKEEP`] until the node
/// shuts down. The Prometheus recorder keeps every sample until then: without this, a node
/// nobody scrapes grew by 8 bytes per publish, fan-out and plugin call.
async fn metrics_upkeep(node: Arc<Node>) {
    let mut every = tokio::time::interval(METRICS_UPKEEP);
    loop {
        tokio::select! {
            _ = every.tick() => node.metrics.run_upkeep(),
            () = node.shutdown.cancelled() => return,
        }
    }
}

/// Samples this node's counters and posts its status for the cluster's console every
/// [`crate::status::POST_EVERY`] until the node shuts down (the status is withdrawn once it
/// has stopped). Without Redis the samples are kept all the same, for `GET /admin/cluster`.
async fn post_status(node: Arc<Node>) {
    let mut every = tokio::time::interval(crate::status::POST_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = node.shutdown.cancelled() => return,
        }
        let mut status = node.status().await;
        node.board.record(crate::status::Sample::of(&status));
        status.recent = node.board.recent();
        match node.board.post(&status).await {
            Ok(()) => failing = false,
            // Once per outage: the broker's reconnect logs tell the rest.
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot post this node's status");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

#[cfg(unix)]
async fn reload_on_sighup(node: Arc<Node>, source: Source) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading configuration");
        crate::watch::reload_bindings(&node.rollout, &source).await;
    }
}

/// Builds the tokio runtime `server.worker_threads` asks for.
pub fn runtime(config: &ServerConfig) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match config.worker_threads {
        // The node runs inside `block_on` on the calling thread, as a single-threaded server.
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
    };
    builder.enable_all().build()
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Binds a listener (clients', admin's) with `backlog` (`TcpListener::bind` queues only 128:
/// a burst of reconnects, say after a node restart, overflowed it and clients waited out a 1 s
/// SYN retry).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std's listeners do: a restarted node can bind while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing accepts here, so every connect must wait in the kernel's queue: with the 128 of
    /// `TcpListener::bind` the SYNs past it are dropped and those connects never complete.
    #[tokio::test]
    async fn the_listener_queues_a_burst_of_connects_larger_than_128() {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)), 1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..300).map(|_| tokio::net::TcpStream::connect(addr));
        // A guard against hanging forever, not a measurement: connects that fit the queue
        // complete at once, the others never.
        let all = tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::future::try_join_all(connects),
        )
        .await
        .expect("connects beyond the listen backlog never complete");
        assert_eq!(all.unwrap().len(), 300);
    }
}
