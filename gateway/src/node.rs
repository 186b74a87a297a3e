//! A running gateway node: configuration, broker, hub and the bookkeeping sessions share.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::redis_cluster::RedisClusterBroker;
use crate::broker::{self, Broker};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::error::CloseReason;
use crate::hub::{ConnId, Hub};
use crate::outbox::{Lanes, Outbox};
use crate::plugins::Code;
use crate::plugins::cluster::{CONTROL_CHANNEL, ClusterStore};
use crate::plugins::registry::{Origin, PluginRegistry, Version};
use crate::identity::Identity;
use crate::plugins::Routed;
use crate::presence::Presence;
use crate::presence::memory::MemoryPresence;
use crate::presence::redis::RedisPresence;
use crate::protocol::{self, ErrorCode, Rejection};
use crate::redis_link::RedisTarget;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configured broker is not available in this build or could not be set up.
    #[error("broker: {0}")]
    Broker(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The auth configuration is unusable.
    #[error("auth: {0}")]
    Auth(String),
    /// A bound plugin could not be loaded.
    #[error("plugins: {0}")]
    Plugins(#[from] crate::plugins::LoadError),
    /// The server failed while running.
    #[error("server: {0}")]
    Serve(#[from] std::io::Error),
}

/// Everything shared by the sessions and HTTP handlers of one node.
pub struct Node {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// This node's id.
    pub id: String,
    /// Local subscriptions.
    pub hub: Arc<Hub>,
    /// The tasks that write deliveries to the sessions' sockets.
    pub lanes: Lanes,
    /// Where publishes go.
    pub broker: Arc<dyn Broker>,
    /// Plugins bound to channel namespaces, hot-swappable.
    pub plugins: Arc<PluginRegistry>,
    /// Cluster-wide plugin versions (with Redis).
    pub cluster: Option<ClusterStore>,
    /// Who is connected and subscribed, across nodes.
    pub presence: Arc<dyn Presence>,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Verifies tokens and origins on upgrade.
    pub auth: Authenticator,
    /// Cancelled when the node leaves readiness, before it stops accepting.
    pub draining: CancellationToken,
    /// Cancelled when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// Tracks live sessions so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Every live session's outbox, keyed by connection, so shutdown can close them all.
    open: Mutex<HashMap<ConnId, Outbox>>,
    connections: AtomicUsize,
    next_conn: AtomicU64,
    publish_metrics: Arc<PublishMetrics>,
}

/// Metric handles every publish records into, looked up once: the `metrics` macros look the
/// name up in the registry on every call.
struct PublishMetrics {
    published: metrics::Counter,
    seconds: Arc<crate::metrics::Latency>,
    failed: metrics::Counter,
}

impl PublishMetrics {
    /// Registers the handles; call after the recorder is installed.
    fn new() -> Self {
        Self {
            published: metrics::counter!("switchyard_messages_published_total"),
            seconds: crate::metrics::Latency::get("switchyard_publish_seconds", &[]),
            failed: metrics::counter!("switchyard_messages_dropped_total", "reason" => "broker_unavailable"),
        }
    }
}

/// A publish handed to [`Node::start_publish`]: resolves once the broker accepted every
/// message it made. Not boxed in the common case (one message), for the reason
/// [`broker::Ack`] is not.
pub struct PublishAck(Sending);

enum Sending {
    /// Nothing to wait for (the publish hook dropped the message).
    Done,
    /// One message, timed for the publish metrics.
    One {
        ack: broker::Ack,
        started: Instant,
        metrics: Arc<PublishMetrics>,
    },
    /// A hook forwarded it to several channels.
    Many(BoxFuture<'static, Result<(), Rejection>>),
}

impl Future for PublishAck {
    type Output = Result<(), Rejection>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Sending::Done => Poll::Ready(Ok(())),
            Sending::One {
                ack,
                started,
                metrics,
            } => Pin::new(ack).poll(cx).map(|result| match result {
                Ok(()) => {
                    metrics.published.increment(1);
                    metrics.seconds.record(started.elapsed());
                    Ok(())
                }
                Err(e) => {
                    metrics.failed.increment(1);
                    Err(Rejection::new(ErrorCode::Unavailable, e.to_string()))
                }
            }),
            Sending::Many(all) => all.as_mut().poll(cx),
        }
    }
}

/// Holds one of the node's connection slots; released on drop.
pub struct ConnectionSlot {
    /// The node the connection is on.
    pub node: Arc<Node>,
    /// The connection's id.
    pub id: ConnId,
}

impl ConnectionSlot {
    /// Registers the session's outbox, so that a shutdown closes the session with 1001
    /// (`going away`). One registry instead of a waiter on [`Node::shutdown`] in each session:
    /// such a waiter is 72 bytes in every connection's task. A session that registers after
    /// the shutdown began is closed at once.
    pub fn register(&self, outbox: &Outbox) {
        self.node.open_sessions().insert(self.id, outbox.clone());
        // After the insert: a shutdown that began before it did not see this session.
        if self.node.shutdown.is_cancelled() {
            outbox.close(CloseReason::ShuttingDown);
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.node.open_sessions().remove(&self.id);
        self.node.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("switchyard_connections").decrement(1.0);
    }
}

impl Node {
    /// Builds a node for `config`; messages its broker receives go to its hub from the start.
    pub async fn new(config: Config) -> Result<Arc<Self>, StartError> {
        let node_id = config.node_id();
        let ttl = std::time::Duration::from_secs(config.presence.ttl_secs);
        let target = RedisTarget::from_config(&config.broker);
        let prefix = &config.broker.prefix;
        let broker_err = |e: &dyn std::fmt::Display| StartError::Broker(e.to_string());
        // Before anything takes metric handles: those taken earlier would record nothing.
        let metrics = crate::metrics::handle(&node_id);
        let inbox = Arc::new(Dispatcher::new());
        let broker: Arc<dyn Broker> = match &target {
            None => Arc::new(MemoryBroker::new(inbox.clone())),
            Some(RedisTarget::Single(url)) => Arc::new(
                RedisBroker::start(url, prefix, &node_id, inbox.clone())
                    .map_err(|e| broker_err(&e))?,
            ),
            Some(RedisTarget::Cluster(seeds)) => Arc::new(
                RedisClusterBroker::start(seeds, prefix, &node_id, inbox.clone())
                    .map_err(|e| broker_err(&e))?,
            ),
        };
        let presence: Arc<dyn Presence> = match &target {
            None => Arc::new(MemoryPresence::new(&node_id)),
            Some(t) => Arc::new(
                RedisPresence::start(t, prefix, &node_id, ttl).map_err(|e| broker_err(&e))?,
            ),
        };
        let auth = Authenticator::new(&config.auth).map_err(|e| StartError::Auth(e.to_string()))?;
        let cluster = match &target {
            Some(t) => Some(ClusterStore::new(t, prefix).map_err(|e| broker_err(&e))?),
            None => None,
        };
        // A node that starts later serves the versions the cluster runs, not its own files.
        let mut overrides = HashMap::new();
        if let Some(c) = &cluster {
            match tokio::time::timeout(std::time::Duration::from_secs(5), c.current()).await {
                Ok(Ok(current)) => {
                    for (name, code) in current {
                        overrides.insert(
                            name,
                            Version {
                                code,
                                source: Origin::Cluster,
                                loaded_at: crate::presence::now_ms(),
                            },
                        );
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read cluster plugin versions; using local files")
                }
                Err(_) => tracing::warn!("cluster plugin versions timed out; using local files"),
            }
        }
        let plugins = {
            let (plugins, depth) = (config.plugins.clone(), config.limits.max_json_depth);
            tokio::task::spawn_blocking(move || PluginRegistry::load(plugins, depth, overrides))
                .await
                .map_err(|e| StartError::Broker(format!("plugin loader failed: {e}")))??
        };
        let plugins = Arc::new(plugins);
        for binding in plugins.current().describe() {
            tracing::info!(%binding, "plugin bound");
        }
        let inline_max = std::time::Duration::from_micros(config.plugins.deliver_inline_max_us);
        let hub = Arc::new(Hub::new(broker.clone()).with_deliver_hook(plugins.clone(), inline_max));
        let node = Arc::new(Self {
            metrics,
            publish_metrics: Arc::new(PublishMetrics::new()),
            id: node_id,
            presence,
            config: Arc::new(config),
            hub,
            lanes: Lanes::start(),
            broker,
            plugins,
            cluster,
            auth,
            draining: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            open: Mutex::default(),
            connections: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
        });
        inbox.attach(&node);
        Ok(node)
    }

    /// Takes a connection slot, or `None` when the node is at `limits.max_connections`.
    pub fn try_connect(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.config.limits.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        metrics::gauge!("switchyard_connections").increment(1.0);
        metrics::counter!("switchyard_connections_total").increment(1);
        Some(ConnectionSlot {
            node: self.clone(),
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Asks every registered session to close with 1001; call once [`Node::shutdown`] is
    /// cancelled.
    pub fn close_sessions(&self) {
        for outbox in self.open_sessions().values() {
            outbox.close(CloseReason::ShuttingDown);
        }
    }

    fn open_sessions(&self) -> MutexGuard<'_, HashMap<ConnId, Outbox>> {
        // Inserts and removes cannot leave the map half-updated.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open WebSocket connections.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Checks a channel name against the configured limits.
    pub fn check_channel(&self, channel: &str) -> Result<(), Rejection> {
        let l = &self.config.limits;
        protocol::validate_channel(channel, l.max_channel_len, &l.channel_chars)
    }

    /// The publish path shared by WebSocket clients and the HTTP API: channel check, the
    /// namespace's publish hook, then the broker. Resolves once the broker accepted every
    /// resulting message.
    pub async fn publish(
        &self,
        who: &Identity,
        channel: &str,
        data: &str,
    ) -> Result<(), Rejection> {
        self.start_publish(who, channel, data)?.await
    }

    /// [`Node::publish`] in two steps, so a connection can have several publishes in flight:
    /// checks, the publish hook and the hand-over to the broker happen now, so calls reach
    /// the broker in call order (the embedded broker delivers right then); the
    /// returned future resolves once the broker accepted every message.
    pub fn start_publish(
        &self,
        who: &Identity,
        channel: &str,
        data: &str,
    ) -> Result<PublishAck, Rejection> {
        self.check_channel(channel)?;
        protocol::check_depth(data.as_bytes(), self.config.limits.max_json_depth)?;
        match self.plugins.current().publish(who, channel, data)? {
            Routed::Pass => Ok(self.send_to_broker(channel, data)),
            Routed::Drop => Ok(PublishAck(Sending::Done)),
            Routed::Forward(list) => {
                // Check every destination before publishing any, so a bad route publishes nothing.
                for (to, _) in &list {
                    self.check_channel(to).map_err(|r| {
                        Rejection::new(
                            ErrorCode::PluginError,
                            format!("plugin forwarded to an invalid channel: {}", r.message),
                        )
                    })?;
                }
                let acks: Vec<PublishAck> = list
                    .iter()
                    .map(|(to, data)| self.send_to_broker(to, data))
                    .collect();
                Ok(PublishAck(Sending::Many(
                    futures_util::future::join_all(acks)
                        .map(|results| results.into_iter().collect())
                        .boxed(),
                )))
            }
        }
    }

    fn send_to_broker(&self, channel: &str, data: &str) -> PublishAck {
        let started = Instant::now();
        let ack = self
            .broker
            .publish(channel, Bytes::copy_from_slice(data.as_bytes()));
        PublishAck(Sending::One {
            ack,
            started,
            metrics: self.publish_metrics.clone(),
        })
    }

    /// Makes plugin `name`'s version `code` the cluster's (store + announce); returns whether
    /// it reached the cluster (`false` without Redis or when Redis failed, which is logged).
    pub async fn publish_plugin_version(&self, name: &str, code: &Code) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        if let Err(e) = cluster.put(name, code).await {
            tracing::warn!(plugin = name, error = %e, "version not shared with the cluster");
            return false;
        }
        cluster.report(&self.id, name, &code.hash).await;
        let note = serde_json::json!({"plugin": name, "hash": code.hash}).to_string();
        match self
            .broker
            .publish(CONTROL_CHANNEL, Bytes::from(note))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(plugin = name, error = %e, "version stored but not announced; nodes get it at their next start");
                false
            }
        }
    }

    /// Handles a control message from the broker (a version announced by some node).
    pub async fn on_control(self: Arc<Self>, payload: Bytes) {
        #[derive(serde::Deserialize)]
        struct Note {
            plugin: String,
            hash: String,
        }
        let Ok(note) = serde_json::from_slice::<Note>(&payload) else {
            tracing::warn!("ignoring malformed plugin announcement");
            return;
        };
        let Some(cluster) = &self.cluster else { return };
        if self.plugins.current_hash(&note.plugin).await.as_deref() == Some(note.hash.as_str()) {
            cluster.report(&self.id, &note.plugin, &note.hash).await;
            return;
        }
        match cluster.blob(&note.hash).await {
            Ok(code) => match self
                .plugins
                .install(&note.plugin, code, Origin::Cluster)
                .await
            {
                Ok(_) => cluster.report(&self.id, &note.plugin, &note.hash).await,
                Err(e) => {
                    tracing::warn!(plugin = %note.plugin, error = %e, "announced version refused")
                }
            },
            Err(e) => {
                tracing::warn!(plugin = %note.plugin, error = %e, "announced version unavailable")
            }
        }
    }

    /// Ready to serve: not shutting down and the broker is connected.
    pub fn is_ready(&self) -> bool {
        !self.draining.is_cancelled() && !self.shutdown.is_cancelled() && self.broker.is_ready()
    }
}
