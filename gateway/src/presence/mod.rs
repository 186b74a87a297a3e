//! Presence: who is connected (per user) and who is subscribed (per channel), across nodes.
//!
//! Sessions report changes without waiting (presence must never slow messaging); queries are
//! answered from the shared store. The embedded backend knows this node only; the Redis
//! backend shares entries between nodes, each refreshed by its node's heartbeat and expiring
//! when a node dies.

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::hub::ConnId;

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use crate::redis_link::RedisTarget;

/// Starts the presence store `target` names (none: this node's memory) for node `node`;
/// entries live `ttl` without a heartbeat.
pub fn start(
    target: Option<&RedisTarget>,
    prefix: &str,
    node: &str,
    ttl: Duration,
) -> Result<Arc<dyn Presence>, PresenceError> {
    Ok(match target {
        None => Arc::new(memory::MemoryPresence::new(node)),
        Some(t) => Arc::new(redis::RedisPresence::start(t, prefix, node, ttl)?),
    })
}

/// One live connection of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConnectionEntry {
    /// Node holding the connection.
    pub node: String,
    /// Connection id on that node.
    pub conn: ConnId,
    /// Connect time, ms since the Unix epoch.
    pub connected_at: u64,
}

/// One subscriber of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SubscriberEntry {
    /// Node holding the connection.
    pub node: String,
    /// Connection id on that node.
    pub conn: ConnId,
    /// The subscriber's user, if authenticated.
    pub user: Option<String>,
}

/// Why a presence query failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("presence store unavailable: {0}")]
pub struct PresenceError(pub String);

/// Tracks and answers presence.
pub trait Presence: Send + Sync + 'static {
    /// A connection of `user` opened at `since_ms`.
    fn connected(&self, conn: ConnId, user: &str, since_ms: u64);
    /// A connection of `user`, opened at `since_ms`, closed.
    fn disconnected(&self, conn: ConnId, user: &str, since_ms: u64);
    /// A connection subscribed to `channel`.
    fn joined(&self, conn: ConnId, channel: &str, user: Option<&str>);
    /// A connection left `channel`.
    fn left(&self, conn: ConnId, channel: &str, user: Option<&str>);
    /// Live connections of `user`, on every node.
    fn user(&self, user: &str) -> BoxFuture<'static, Result<Vec<ConnectionEntry>, PresenceError>>;
    /// Live subscribers of `channel`, on every node.
    fn channel(
        &self,
        channel: &str,
    ) -> BoxFuture<'static, Result<Vec<SubscriberEntry>, PresenceError>>;
    /// Removes every entry of this node (graceful shutdown).
    fn shutdown(&self) -> BoxFuture<'static, ()>;
}
