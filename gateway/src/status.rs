//! Node status for the operations console and scripts (`GET /admin/cluster`): what a node
//! reports about itself, and, with Redis, the board where every node posts its report so any
//! node can answer for the whole cluster.
//!
//! Layout: `<prefix>{nodes}` (hash: node id -> the node's [`NodeStatus`] as JSON). A node posts
//! every [`POST_EVERY`] and removes its entry when it stops; an entry not refreshed for
//! [`STALE_AFTER`] belongs to a node that died, and is reported as `stale` until it is
//! [`FORGOTTEN_AFTER`] old, then deleted by whichever node reads it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::redis_link::{RedisConn, RedisTarget};

/// How often a node posts its status.
pub const POST_EVERY: Duration = Duration::from_secs(2);
/// A status older than this belongs to a node that stopped posting.
pub const STALE_AFTER: Duration = Duration::from_secs(10);
/// A status older than this is deleted.
pub const FORGOTTEN_AFTER: Duration = Duration::from_secs(300);
/// Samples a node keeps of its own counters: five minutes at [`POST_EVERY`].
pub const RECENT: usize = 150;

/// One node's report about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// The node's id.
    pub node: String,
    /// When this report was made (ms since the Unix epoch).
    pub at_ms: u64,
    /// When the node started (ms since the Unix epoch).
    pub started_ms: u64,
    /// Readiness as `/readyz` reports it.
    pub ready: bool,
    /// Draining: readiness off, clients about to be closed with 1001.
    pub draining: bool,
    /// The broker: `memory` (embedded), `redis` or `redis-cluster`.
    pub broker: String,
    /// Whether the broker is connected.
    pub broker_connected: bool,
    /// Open WebSocket connections.
    pub connections: u64,
    /// Channels with at least one local subscriber.
    pub channels: u64,
    /// Messages published through this node since it started.
    pub published_total: u64,
    /// Messages delivered to this node's clients since it started.
    pub delivered_total: u64,
    /// Failed plugin calls on this node since their versions loaded.
    pub plugin_errors_total: u64,
    /// The slowest plugin's p99 call time on this node, µs (upper bound).
    pub plugin_p99_us: u64,
    /// Plugin name -> the version (first 12 hex digits of its hash) this node serves.
    pub plugins: BTreeMap<String, String>,
    /// This node's counters every [`POST_EVERY`] over the last minutes, oldest first: what
    /// rates and charts are computed from (the change between two samples over their time).
    #[serde(default)]
    pub recent: Vec<Sample>,
    /// Set by the reader: the report is older than [`STALE_AFTER`] (the node died or hangs).
    #[serde(default)]
    pub stale: bool,
}

/// A node's counters at one moment.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// [`NodeStatus::published_total`] then.
    pub published_total: u64,
    /// [`NodeStatus::delivered_total`] then.
    pub delivered_total: u64,
    /// [`NodeStatus::plugin_errors_total`] then.
    pub plugin_errors_total: u64,
    /// [`NodeStatus::plugin_p99_us`] then.
    pub plugin_p99_us: u64,
}

impl Sample {
    /// The counters of `status`.
    pub fn of(status: &NodeStatus) -> Self {
        Self {
            at_ms: status.at_ms,
            published_total: status.published_total,
            delivered_total: status.delivered_total,
            plugin_errors_total: status.plugin_errors_total,
            plugin_p99_us: status.plugin_p99_us,
        }
    }
}

/// Why the board could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("node status board: {0}")]
pub struct BoardError(String);

/// Where nodes post their status: Redis when the node has it, else nowhere (one node).
pub struct Board {
    con: Option<RedisConn>,
    key: String,
    started_ms: u64,
    /// This node's last [`RECENT`] samples, oldest first.
    recent: std::sync::Mutex<std::collections::VecDeque<Sample>>,
}

impl Board {
    /// The board of the cluster behind `target` (none: a single node).
    pub fn new(target: Option<&RedisTarget>, prefix: &str) -> Result<Self, BoardError> {
        let con = target
            .map(|t| t.connect(Duration::from_secs(2)))
            .transpose()
            .map_err(|e| BoardError(e.to_string()))?;
        Ok(Self {
            con,
            key: format!("{prefix}{{nodes}}"),
            started_ms: now_ms(),
            recent: Default::default(),
        })
    }

    /// When this node started (ms since the Unix epoch): when its board was made.
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Keeps `sample` as this node's newest (the oldest goes beyond [`RECENT`]).
    pub fn record(&self, sample: Sample) {
        let mut recent = self.recent.lock().expect("recent samples lock");
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(sample);
    }

    /// This node's samples, oldest first.
    pub fn recent(&self) -> Vec<Sample> {
        self.recent
            .lock()
            .expect("recent samples lock")
            .iter()
            .copied()
            .collect()
    }

    /// Every node's latest status with `own` (this node's, fresh) in place of what it last
    /// posted, sorted by node id. Without Redis, or when Redis fails, only `own` (and the
    /// error, for the caller to show).
    pub async fn read(&self, own: NodeStatus) -> (Vec<NodeStatus>, Option<BoardError>) {
        let Some(con) = &self.con else {
            return (vec![own], None);
        };
        let mut con = con.clone();
        let posted: Result<BTreeMap<String, String>, _> = redis::cmd("HGETALL")
            .arg(&self.key)
            .query_async(&mut con)
            .await;
        let posted = match posted {
            Ok(posted) => posted,
            Err(e) => return (vec![own], Some(BoardError(e.to_string()))),
        };
        let (now, own_id) = (own.at_ms, own.node.clone());
        let mut out = vec![own];
        let mut forget = Vec::new();
        for (id, text) in posted {
            if id == own_id {
                continue;
            }
            let Ok(mut status) = serde_json::from_str::<NodeStatus>(&text) else {
                forget.push(id);
                continue;
            };
            let age = now.saturating_sub(status.at_ms);
            if age > FORGOTTEN_AFTER.as_millis() as u64 {
                forget.push(id);
                continue;
            }
            status.stale = age > STALE_AFTER.as_millis() as u64;
            out.push(status);
        }
        if !forget.is_empty() {
            let _: Result<i64, _> = redis::cmd("HDEL")
                .arg(&self.key)
                .arg(&forget)
                .query_async(&mut con)
                .await;
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        (out, None)
    }

    /// Posts `status` (its node's own) for the other nodes to read.
    pub async fn post(&self, status: &NodeStatus) -> Result<(), BoardError> {
        let Some(con) = &self.con else { return Ok(()) };
        let text = serde_json::to_string(status).expect("status serialises");
        let mut con = con.clone();
        redis::cmd("HSET")
            .arg(&self.key)
            .arg(&status.node)
            .arg(text)
            .query_async::<i64>(&mut con)
            .await
            .map(drop)
            .map_err(|e| BoardError(e.to_string()))
    }

    /// Removes node `id`'s status: it stopped cleanly (a missing node is gone, not stale).
    pub async fn withdraw(&self, id: &str) {
        let Some(con) = &self.con else { return };
        let mut con = con.clone();
        let _: Result<i64, _> = redis::cmd("HDEL")
            .arg(&self.key)
            .arg(id)
            .query_async(&mut con)
            .await;
    }
}
