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
    Add { key: String, member: Member },
    Remove { key: String, member: Member },
    Shutdown(oneshot::Sender<()>),
}

/// One of this node's sorted-set members, without its text: the writer keeps every local
/// member for the node's lifetime (one per connection and one per subscription), so it keeps
/// 24 bytes and writes the JSON text only when it sends the member.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Member {
    /// In `presence:user:<user>`.
    Connection { conn: ConnId, connected_at: u64 },
    /// In `presence:channel:<channel>`.
    Subscriber {
        conn: ConnId,
        user: Option<Box<str>>,
    },
}

impl Member {
    /// The member's text in Redis (a [`ConnectionEntry`] or [`SubscriberEntry`]).
    fn text(&self, node: &str) -> String {
        match self {
            Self::Connection { conn, connected_at } => serde_json::to_string(&ConnectionEntry {
                node: node.to_owned(),
                conn: *conn,
                connected_at: *connected_at,
            }),
            Self::Subscriber { conn, user } => serde_json::to_string(&SubscriberEntry {
                node: node.to_owned(),
                conn: *conn,
                user: user.as_deref().map(str::to_owned),
            }),
        }
        .expect("entry serialises")
    }
}

/// Presence shared by every node on one Redis.
pub struct RedisPresence {
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
        tokio::spawn(writer(con.clone(), rx, ttl, node.to_owned()));
        Ok(Self {
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

    fn user_member(conn: ConnId, connected_at: u64) -> Member {
        Member::Connection { conn, connected_at }
    }

    fn channel_member(conn: ConnId, user: Option<&str>) -> Member {
        Member::Subscriber {
            conn,
            user: user.map(Box::from),
        }
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
            member: Self::user_member(conn, since_ms),
        });
    }

    fn disconnected(&self, conn: ConnId, user: &str, since_ms: u64) {
        self.send(Update::Remove {
            key: self.user_key(user),
            member: Self::user_member(conn, since_ms),
        });
    }

    fn joined(&self, conn: ConnId, channel: &str, user: Option<&str>) {
        self.send(Update::Add {
            key: self.channel_key(channel),
            member: Self::channel_member(conn, user),
        });
    }

    fn left(&self, conn: ConnId, channel: &str, user: Option<&str>) {
        self.send(Update::Remove {
            key: self.channel_key(channel),
            member: Self::channel_member(conn, user),
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

/// Keys whose heartbeat pipelines are built and sent together.
const HEARTBEAT_CHUNK: usize = 4 * CONCURRENCY;

/// Updates applied in one round of pipelines at most.
const MAX_UPDATES_BATCH: usize = 1024;

/// Applies updates in order and refreshes this node's entries every third of the TTL.
async fn writer(
    con: RedisConn,
    mut rx: mpsc::UnboundedReceiver<Update>,
    ttl: Duration,
    node: String,
) {
    // This node's live members per key, re-added by every heartbeat. Sets, so that a member
    // leaves a channel thousands share without a scan of them all.
    let mut own: HashMap<String, HashSet<Member>> = HashMap::new();
    let mut heartbeat = tokio::time::interval(ttl / 3);
    heartbeat.reset();
    let ttl_ms = ttl.as_millis() as u64;
    loop {
        tokio::select! {
            update = rx.recv() => {
                let Some(first) = update else { return };
                // Everything queued meanwhile goes in the same round: a connect storm or
                // subscribe churn queues updates faster than one round trip each drains them.
                let mut batch = Batch::default();
                let mut next = Some(first);
                let mut shutdown = None;
                while let Some(update) = next.take() {
                    match update {
                        Update::Add { key, member } => {
                            own.entry(key.clone()).or_default().insert(member.clone());
                            batch.push(key, Op::Add(member));
                        }
                        Update::Remove { key, member } => {
                            if let Some(members) = own.get_mut(&key) {
                                members.remove(&member);
                                if members.is_empty() {
                                    own.remove(&key);
                                }
                            }
                            batch.push(key, Op::Remove(member));
                        }
                        Update::Shutdown(done) => {
                            shutdown = Some(done);
                            break;
                        }
                    }
                    if batch.len < MAX_UPDATES_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                send_each(&con, batch.pipelines(&node, ttl_ms)).await;
                if let Some(done) = shutdown {
                    let pipes = own.drain().map(|(key, members)| {
                        let mut pipe = redis::pipe();
                        let texts: Vec<String> = members.iter().map(|m| m.text(&node)).collect();
                        pipe.cmd("ZREM").arg(key).arg(texts).ignore();
                        pipe
                    });
                    send_each(&con, pipes.collect::<Vec<_>>()).await;
                    let _ = done.send(());
                }
            }
            _ = heartbeat.tick() => {
                // In chunks, each built just before it is sent: with 100,000 channels,
                // writing every member's text up front held the node's one thread for
                // ~100 ms, and deliveries waited behind it.
                let mut keys = own.iter();
                loop {
                    let chunk: Vec<redis::Pipeline> = keys
                        .by_ref()
                        .take(HEARTBEAT_CHUNK)
                        .map(|(key, members)| {
                            let texts: Vec<String> =
                                members.iter().map(|m| m.text(&node)).collect();
                            add(key, &texts, ttl_ms)
                        })
                        .collect();
                    if chunk.is_empty() {
                        break;
                    }
                    send_each(&con, chunk).await;
                }
            }
        }
    }
}

/// One change to a key's members.
enum Op {
    Add(Member),
    Remove(Member),
}

/// Updates drained together, per key in their order (keys are independent of each other).
#[derive(Default)]
struct Batch {
    keys: HashMap<String, Vec<Op>>,
    len: usize,
}

impl Batch {
    fn push(&mut self, key: String, op: Op) {
        self.len += 1;
        let ops = self.keys.entry(key).or_default();
        // A member that joins and leaves within one batch never needs to reach Redis.
        if let Op::Remove(m) = &op
            && let Some(i) = ops
                .iter()
                .rposition(|o| matches!(o, Op::Add(a) | Op::Remove(a) if a == m))
            && matches!(ops[i], Op::Add(_))
        {
            ops.remove(i);
            return;
        }
        ops.push(op);
    }

    /// One single-key pipeline per key: its adds and removes in order, consecutive ones of a
    /// kind as one command, and the key's TTL refreshed when anything was added.
    fn pipelines(self, node: &str, ttl_ms: u64) -> Vec<redis::Pipeline> {
        let expires = now_ms() + ttl_ms;
        let mut out = Vec::with_capacity(self.keys.len());
        for (key, ops) in self.keys {
            if ops.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            let mut added = false;
            let mut i = 0;
            while i < ops.len() {
                let adding = matches!(ops[i], Op::Add(_));
                pipe.cmd(if adding { "ZADD" } else { "ZREM" }).arg(&key);
                while let Some(op) = ops.get(i) {
                    match (op, adding) {
                        (Op::Add(m), true) => pipe.arg(expires).arg(m.text(node)),
                        (Op::Remove(m), false) => pipe.arg(m.text(node)),
                        _ => break,
                    };
                    i += 1;
                }
                pipe.ignore();
                added |= adding;
            }
            if added {
                pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms * 2).ignore();
            }
            out.push(pipe);
        }
        out
    }
}

/// Sends one single-key pipeline each, [`CONCURRENCY`] at a time (on a cluster each goes to
/// its key's shard). Failures are dropped: the next heartbeat writes every entry again.
async fn send_each(con: &RedisConn, pipes: impl IntoIterator<Item = redis::Pipeline>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(conn: ConnId) -> Member {
        Member::Subscriber { conn, user: None }
    }

    /// Each pipeline's commands as words: `ZADD key`, `ZREM key`, with their member count.
    fn words(batch: Batch) -> Vec<Vec<String>> {
        let mut pipes: Vec<Vec<String>> = batch
            .pipelines("n1", 30_000)
            .iter()
            .map(|p| {
                p.cmd_iter()
                    .map(|c| {
                        let args: Vec<String> = c
                            .args_iter()
                            .map(|a| match a {
                                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                                _ => "?".into(),
                            })
                            .collect();
                        format!("{} {} ({} args)", args[0], args[1], args.len() - 2)
                    })
                    .collect()
            })
            .collect();
        pipes.sort();
        pipes
    }

    #[test]
    fn a_member_that_joins_and_leaves_within_a_batch_never_reaches_redis() {
        let mut b = Batch::default();
        b.push("k".into(), Op::Add(sub(1)));
        b.push("k".into(), Op::Remove(sub(1)));
        assert!(words(b).is_empty());
    }

    #[test]
    fn a_batch_keeps_each_keys_order_and_joins_runs_of_a_kind() {
        let mut b = Batch::default();
        // conn 1 was added by an earlier batch: its removal must still be sent, before the
        // re-add that follows it.
        b.push("a".into(), Op::Remove(sub(1)));
        b.push("a".into(), Op::Add(sub(1)));
        b.push("a".into(), Op::Add(sub(2)));
        b.push("b".into(), Op::Remove(sub(3)));
        assert_eq!(
            words(b),
            vec![
                vec![
                    "ZREM a (1 args)".to_owned(),
                    "ZADD a (4 args)".to_owned(),
                    "PEXPIRE a (1 args)".to_owned()
                ],
                vec!["ZREM b (1 args)".to_owned()],
            ]
        );
    }
}
