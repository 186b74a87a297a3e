//! How a node reaches Redis: one server by URL, or a Redis Cluster through its seed nodes.
//!
//! [`RedisConn`] hides the difference for plain commands (presence, the plugin store): both
//! kinds reconnect on their own and are created lazily, so a node starts while Redis is down.
//! Commands sent together in one pipeline must touch keys of one hash slot, which is why the
//! modules using it keep their multi-key pipelines on one key or one `{hash tag}`.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

use crate::config::BrokerConfig;

/// Connect timeout for every Redis connection the node opens.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a broker command may take: a Redis that does not answer within it counts as down.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis server (`broker.redis_url`).
    Single(String),
    /// A Redis Cluster, reached through any of these seed nodes (`broker.redis_cluster`).
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// The configured target, or `None` for the embedded broker.
    pub fn from_config(broker: &BrokerConfig) -> Option<Self> {
        if !broker.redis_cluster.is_empty() {
            return Some(Self::Cluster(broker.redis_cluster.clone()));
        }
        broker.redis_url.clone().map(Self::Single)
    }

    /// A cluster client builder with the node's timeouts, for callers that add more options.
    pub fn cluster_builder(seeds: &[String], response_timeout: Duration) -> ClusterClientBuilder {
        ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response_timeout)
            .retries(2)
            .min_retry_wait(50)
            .max_retry_wait(500)
    }

    /// A lazily connecting command connection; commands fail once `response_timeout` passes.
    pub fn connect(&self, response_timeout: Duration) -> Result<RedisConn, redis::RedisError> {
        match self {
            Self::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(1);
                Ok(RedisConn::Single(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            Self::Cluster(seeds) => {
                let client = Self::cluster_builder(seeds, response_timeout).build()?;
                Ok(RedisConn::Cluster(LazyCluster::new(client)))
            }
        }
    }
}

/// A command connection to either kind of Redis.
#[derive(Clone)]
pub enum RedisConn {
    /// One server, through redis-rs's reconnecting manager.
    Single(ConnectionManager),
    /// A cluster, routed by slot (MOVED/ASK handled by redis-rs).
    Cluster(LazyCluster),
}

/// A cluster connection made on first use, and retried on the next use if that failed.
#[derive(Clone)]
pub struct LazyCluster {
    inner: Arc<(ClusterClient, OnceCell<ClusterConnection>)>,
}

impl LazyCluster {
    /// Wraps `client`; nothing connects until the first command.
    pub fn new(client: ClusterClient) -> Self {
        Self {
            inner: Arc::new((client, OnceCell::new())),
        }
    }

    /// The shared connection, connecting now if needed.
    pub async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        let (client, con) = &*self.inner;
        con.get_or_try_init(|| client.get_async_connection())
            .await
            .cloned()
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(l) => Box::pin(async move {
                let mut con = l.get().await?;
                con.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(l) => Box::pin(async move {
                let mut con = l.get().await?;
                con.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

/// Runs a Redis command future with [`COMMAND_TIMEOUT`], flattening both failures into a message.
pub async fn bounded<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}
