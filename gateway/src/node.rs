//! A running gateway node: the handles its sessions, HTTP handlers and background tasks share,
//! and [`Node::start`], which builds them in an order where nothing points back.
//!
//! Construction: the broker's subscription queue, then the hub (holding its sending end),
//! then the dispatcher (holding the hub), then the broker (delivering to the dispatcher). The
//! control messages the dispatcher sets aside go to the rollout task ([`Background`]).

use std::sync::Arc;

use bytes::Bytes;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::broker::{self, Broker, Subscriptions};
use crate::commands::{self, Command, Revocations};
use crate::config::Config;
use crate::connections::Connections;
use crate::dispatch::{Control, Dispatcher};
use crate::history::Namespaces;
use crate::hub::{ConnId, Hub};
use crate::plugins::cluster::ClusterStore;
use crate::plugins::registry::PluginRegistry;
use crate::presence::Presence;
use crate::publish::Publisher;
use crate::redis_link::RedisTarget;
use crate::replay::Replay;
use crate::rollout::Rollout;
use crate::status::NodeStatus;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configured broker or presence store could not be set up.
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
    /// The auth configuration is unusable (a key file cannot be read or parsed).
    #[error("auth: {0}")]
    Auth(String),
    /// A bound plugin could not be loaded.
    #[error("plugins: {0}")]
    Plugins(#[from] crate::plugins::LoadError),
    /// The server failed while running.
    #[error("server: {0}")]
    Serve(#[from] std::io::Error),
}

/// Everything shared by the sessions and HTTP handlers of one node: handles only.
pub struct Node {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// This node's id.
    pub id: String,
    /// Local subscriptions and the fan-out.
    pub hub: Arc<Hub>,
    /// Where publishes go.
    pub broker: Arc<dyn Broker>,
    /// The publish path of clients and backends.
    pub publisher: Publisher,
    /// History reads of clients and backends.
    pub replay: Replay,
    /// Plugins bound to channel namespaces, hot-swappable.
    pub plugins: Arc<PluginRegistry>,
    /// Plugin versions: deploy, rollback, unbind, cluster-wide.
    pub rollout: Arc<Rollout>,
    /// Who is connected and subscribed, across nodes.
    pub presence: Arc<dyn Presence>,
    /// WebSocket connections: count, numbers, the shutdown registry.
    pub connections: Connections,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Verifies tokens and origins on upgrade.
    pub auth: Authenticator,
    /// Tokens revoked, checked at connect and refresh.
    pub revocations: Arc<Revocations>,
    /// Cancelled when the node leaves readiness, before it stops accepting.
    pub draining: CancellationToken,
    /// Cancelled when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// Tracks live sessions so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Where this node posts its status and reads the cluster's (the console's data).
    pub board: crate::status::Board,
}

/// What a started node's background tasks need, handed to the server that runs them.
pub struct Background {
    /// Another handle on the broker's subscription queue (for the control channel).
    pub subscriptions: Subscriptions,
    /// Control-channel messages the dispatcher set aside.
    pub control: mpsc::UnboundedReceiver<Control>,
    /// Connection commands the dispatcher set aside.
    pub commands: mpsc::UnboundedReceiver<Bytes>,
}

/// Holds one of the node's connection slots; released on drop.
pub struct ConnectionSlot {
    /// The node the connection is on.
    pub node: Arc<Node>,
    /// The connection's id.
    pub id: ConnId,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.node.connections.release(self.id);
    }
}

impl Node {
    /// Builds a node for `config`: its backends, plugins (the cluster's versions first, with
    /// Redis) and hub; messages its broker receives reach its hub from the start.
    pub async fn start(config: Config) -> Result<(Arc<Self>, Background), StartError> {
        let node_id = config.node_id();
        let target = RedisTarget::from_config(&config.broker);
        let prefix = &config.broker.prefix;
        let broker_err = |e: &dyn std::fmt::Display| StartError::Broker(e.to_string());
        // Before anything takes metric handles: those taken earlier would record nothing.
        let metrics = crate::metrics::handle(&node_id);
        let auth = Authenticator::new(&config.auth).map_err(|e| StartError::Auth(e.to_string()))?;
        let ttl = std::time::Duration::from_secs(config.presence.ttl_secs);
        let presence = crate::presence::start(target.as_ref(), prefix, &node_id, ttl)
            .map_err(|e| broker_err(&e))?;
        let store = match &target {
            Some(t) => Some(ClusterStore::new(t, prefix).map_err(|e| broker_err(&e))?),
            None => None,
        };
        // A node that starts later serves the versions the cluster runs, not its own files.
        let overrides = Rollout::cluster_versions(store.as_ref()).await;
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
        let (subscriptions, requests) = broker::subscriptions();
        let inline_max = std::time::Duration::from_micros(config.plugins.deliver_inline_max_us);
        let hub = Arc::new(
            Hub::new(subscriptions.clone()).with_deliver_hook(plugins.clone(), inline_max),
        );
        let (control_tx, control) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let inbox = Arc::new(Dispatcher::new(hub.clone(), control_tx, commands_tx));
        let revocations =
            Arc::new(Revocations::new(target.as_ref(), prefix).map_err(|e| broker_err(&e))?);
        // Before the node serves: a revoked token must not slip in while they load.
        if let Err(e) = revocations.load().await {
            tracing::warn!(error = %e, "cannot load revocations; retrying in the background");
        }
        let broker = broker::start(target.as_ref(), prefix, &node_id, requests, inbox)
            .map_err(|e| broker_err(&e))?;
        let rollout = Arc::new(Rollout::new(
            &node_id,
            plugins.clone(),
            store,
            broker.clone(),
        ));
        let namespaces = Arc::new(Namespaces::new(&config.namespaces));
        let board =
            crate::status::Board::new(target.as_ref(), prefix).map_err(|e| broker_err(&e))?;
        let node = Arc::new(Self {
            publisher: Publisher::new(
                broker.clone(),
                plugins.clone(),
                namespaces.clone(),
                &config.limits,
            ),
            replay: Replay::new(broker.clone(), hub.clone(), plugins.clone(), namespaces),
            connections: Connections::new(config.limits.max_connections),
            metrics,
            id: node_id,
            presence,
            config: Arc::new(config),
            hub,
            broker,
            plugins,
            rollout,
            auth,
            revocations,
            draining: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            board,
        });
        Ok((
            node,
            Background {
                subscriptions,
                control,
                commands,
            },
        ))
    }

    /// Takes a connection slot, or `None` when the node is at `limits.max_connections`.
    pub fn try_connect(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let id = self.connections.try_open()?;
        Some(ConnectionSlot {
            node: self.clone(),
            id,
        })
    }

    /// Whether a connection of `identity` holding `grant` may be opened or refreshed.
    pub fn allows(&self, identity: &crate::identity::Identity, grant: &crate::auth::Grant) -> bool {
        self.revocations.allows(identity.user.as_deref(), grant)
    }

    /// This node's status now, as the console and `GET /admin/cluster` show it.
    pub async fn status(&self) -> NodeStatus {
        let text = crate::metrics::render(&self.metrics);
        let listed = self.plugins.list().await;
        let plugin_errors_total = listed.iter().map(|p| p.errors).sum();
        let plugin_p99_us = listed.iter().map(|p| p.p99_us).max().unwrap_or(0);
        let plugins = listed
            .into_iter()
            .filter_map(|p| Some((p.name, p.version?)))
            .collect();
        NodeStatus {
            node: self.id.clone(),
            at_ms: crate::clock::now_ms(),
            started_ms: self.board.started_ms(),
            ready: self.is_ready(),
            draining: self.draining.is_cancelled(),
            broker: self.broker.kind().to_owned(),
            broker_connected: self.broker.is_ready(),
            connections: self.connections.count() as u64,
            channels: self.hub.channel_count() as u64,
            published_total: crate::metrics::total(&text, "switchyard_messages_published_total"),
            delivered_total: crate::metrics::total(&text, "switchyard_messages_delivered_total"),
            plugin_errors_total,
            plugin_p99_us,
            plugins,
            recent: self.board.recent(),
            stale: false,
        }
    }

    /// Ready to serve: not shutting down and the broker is connected.
    pub fn is_ready(&self) -> bool {
        !self.draining.is_cancelled() && !self.shutdown.is_cancelled() && self.broker.is_ready()
    }
}

impl commands::Apply for Node {
    fn apply(&self, command: &Command) {
        let affected = match command {
            Command::Revoke(revocation) => self.connections.revoke(revocation),
            command => self.connections.command(&self.id, command),
        };
        tracing::debug!(?command, affected, "connection command applied");
    }
}
