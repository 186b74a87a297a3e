//! Presence shared through Redis.
//!
//! Layout (no KEYS or SCAN needed: every lookup is by key):
//! - `<prefix>presence:user:<user>`: sorted set; member = JSON `{"node","conn","connected_at"}`,
//!   score = the time (ms) the entry expires.
//! - `<prefix>presence:channel:<channel>`: sorted set; member = JSON `{"node","conn","user"}`,
//!   score likewise.
//!
//! Each node remembers its own members and re-adds them with a fresh expiry every third of the
//! TTL; readers drop members whose score has passed, so a node killed without a goodbye
//! disappears within one TTL. Keys also carry a key-level TTL so abandoned sets vanish.
//! Updates go through one task, in order, and never block a session. Every pipeline touches
//! one key, so the same code runs on a Redis Cluster (keys spread over its slots).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::{ConnectionEntry, Presence, PresenceError, SubscriberEntry};
use crate::clock::now_ms;
use crate::hub::ConnId;
use crate::redis_link::{RedisConn, RedisTarget};

/// Per-key pipelines in flight at once during a heartbeat or shutdown.
const CONCURRENCY: usize = 64;

enum Update {
    Add { key: String, member: String },
    Remove { key: String, member: String },
    Shutdown(oneshot::Sender<()>),
}

/// Presence shared by every node on one Redis.
pub struct RedisPresence {
    node: String,
    prefix: String,
    ttl: Duration,
    con: RedisConn,
    updates: mpsc::UnboundedSender<Update>,
}

impl RedisPresence {
    /// Starts the presence writer for node `node`; entries live `ttl` without a heartbeat.
    pub fn start(
        target: &RedisTarget,
        prefix: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Self, PresenceError> {
        let con = target
            .connect(Duration::from_secs(2))
            .map_err(|e| PresenceError(e.to_string()))?;
        let (updates, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(con.clone(), rx, ttl));
        Ok(Self {
            node: node.to_owned(),
            prefix: prefix.to_owned(),
            ttl,
            con,
            updates,
        })
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}presence:user:{user}", self.prefix)
    }

    fn channel_key(&self, channel: &str) -> String {
        format!("{}presence:channel:{channel}", self.prefix)
    }

    fn user_member(&self, conn: ConnId, connected_at: u64) -> String {
        member(&ConnectionEntry {
            node: self.node.clone(),
            conn,
            connected_at,
        })
    }

    fn channel_member(&self, conn: ConnId, user: Option<&str>) -> String {
        member(&SubscriberEntry {
            node: self.node.clone(),
            conn,
            user: user.map(str::to_owned),
        })
    }

    fn send(&self, u: Update) {
        let _ = self.updates.send(u);
    }

    fn read<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: String,
    ) -> BoxFuture<'static, Result<Vec<T>, PresenceError>> {
        let mut con = self.con.clone();
        async move {
            let now = now_ms();
            let (_, members): ((), Vec<String>) = redis::pipe()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now)
                .ignore()
                .cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut con)
                .await
                .map(|(members,): (Vec<String>,)| ((), members))
                .map_err(|e| PresenceError(e.to_string()))?;
            Ok(members
                .iter()
                .filter_map(|m| serde_json::from_str(m).ok())
                .collect())
        }
        .boxed()
    }
}

impl Presence for RedisPresence {
    fn connected(&self, conn: ConnId, user: &str, since_ms: u64) {
        self.send(Update::Add {
            key: self.user_key(user),
            member: self.user_member(conn, since_ms),
        });
    }

    fn disconnected(&self, conn: ConnId, user: &str, since_ms: u64) {
        self.send(Update::Remove {
            key: self.user_key(user),
            member: self.user_member(conn, since_ms),
        });
    }

    fn joined(&self, conn: ConnId, channel: &str, user: Option<&str>) {
        self.send(Update::Add {
            key: self.channel_key(channel),
            member: self.channel_member(conn, user),
        });
    }

    fn left(&self, conn: ConnId, channel: &str, user: Option<&str>) {
        self.send(Update::Remove {
            key: self.channel_key(channel),
            member: self.channel_member(conn, user),
        });
    }

    fn user(&self, user: &str) -> BoxFuture<'static, Result<Vec<ConnectionEntry>, PresenceError>> {
        self.read(self.user_key(user))
    }

    fn channel(
        &self,
        channel: &str,
    ) -> BoxFuture<'static, Result<Vec<SubscriberEntry>, PresenceError>> {
        self.read(self.channel_key(channel))
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let (done, wait) = oneshot::channel();
        self.send(Update::Shutdown(done));
        let ttl = self.ttl;
        async move {
            let _ = tokio::time::timeout(ttl.min(Duration::from_secs(3)), wait).await;
        }
        .boxed()
    }
}

/// Applies updates in order and refreshes this node's entries every third of the TTL.
async fn writer(mut con: RedisConn, mut rx: mpsc::UnboundedReceiver<Update>, ttl: Duration) {
    // This node's live members per key, re-added by every heartbeat. Sets, so that a member
    // leaves a channel thousands share without a scan of them all.
    let mut own: HashMap<String, HashSet<String>> = HashMap::new();
    let mut heartbeat = tokio::time::interval(ttl / 3);
    heartbeat.reset();
    let ttl_ms = ttl.as_millis() as u64;
    loop {
        tokio::select! {
            update = rx.recv() => match update {
                None => return,
                Some(Update::Add { key, member }) => {
                    let _ = add(&key, std::slice::from_ref(&member), ttl_ms).query_async::<()>(&mut con).await;
                    own.entry(key).or_default().insert(member);
                }
                Some(Update::Remove { key, member }) => {
                    if let Some(members) = own.get_mut(&key) {
                        members.remove(&member);
                        if members.is_empty() {
                            own.remove(&key);
                        }
                    }
                    let _ = redis::cmd("ZREM").arg(&key).arg(&member).query_async::<i64>(&mut con).await;
                }
                Some(Update::Shutdown(done)) => {
                    let pipes = own.drain().map(|(key, members)| {
                        let mut pipe = redis::pipe();
                        pipe.cmd("ZREM").arg(key).arg(members).ignore();
                        pipe
                    });
                    send_each(&con, pipes.collect()).await;
                    let _ = done.send(());
                }
            },
            _ = heartbeat.tick() => {
                let pipes = own.iter().map(|(key, members)| add(key, members, ttl_ms));
                send_each(&con, pipes.collect()).await;
            }
        }
    }
}

/// A sorted-set member's text. The writer keeps every local member for the node's lifetime,
/// so it is trimmed to its length: serde_json starts at 128 bytes, twice a typical entry.
fn member(entry: &impl serde::Serialize) -> String {
    let mut text = serde_json::to_string(entry).expect("entry serialises");
    text.shrink_to_fit();
    text
}

/// Sends one single-key pipeline each, [`CONCURRENCY`] at a time (on a cluster each goes to
/// its key's shard). Failures are dropped: the next heartbeat writes every entry again.
async fn send_each(con: &RedisConn, pipes: Vec<redis::Pipeline>) {
    futures_util::stream::iter(pipes)
        .map(|pipe| {
            let mut con = con.clone();
            async move {
                let _ = pipe.query_async::<()>(&mut con).await;
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<()>()
        .await;
}

/// Adds (or refreshes) `members` of `key` with a fresh expiry, and the key's own TTL.
fn add<'a>(
    key: &str,
    members: impl IntoIterator<Item = &'a String>,
    ttl_ms: u64,
) -> redis::Pipeline {
    let expires = now_ms() + ttl_ms;
    let mut pipe = redis::pipe();
    pipe.cmd("ZADD").arg(key);
    for m in members {
        pipe.arg(expires).arg(m);
    }
    pipe.ignore()
        .cmd("PEXPIRE")
        .arg(key)
        .arg(ttl_ms * 2)
        .ignore();
    pipe
}
