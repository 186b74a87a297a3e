//! Cluster-wide plugin versions, kept in Redis so every node serves the same code.
//!
//! Layout: `<prefix>{plugins}:blob:<hash>` (the component bytes, by content hash),
//! `<prefix>{plugins}:current` (hash: plugin name -> content hash), and
//! `<prefix>{plugins}:nodes:<name>` (hash: node id -> the content hash that node serves, so
//! drift is visible), and `<prefix>{plugins}:trials` (hash: plugin name -> the shadow or
//! canary on trial, as JSON `{"hash", "plan", "started_at"}`). The `{plugins}` hash tag keeps every key in one Redis Cluster slot, so
//! writing a blob and pointing `current` at it stays one atomic transaction there too. What
//! is stored when, and how nodes learn of it, is `crate::rollout`'s.

use std::collections::HashMap;
use std::time::Duration;

use super::Code;
use crate::redis_link::{RedisConn, RedisTarget};

/// Why the cluster store could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin cluster store: {0}")]
pub struct ClusterError(pub String);

fn err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError(e.to_string())
}

/// The shared plugin store.
#[derive(Clone)]
pub struct ClusterStore {
    con: RedisConn,
    prefix: String,
}

impl ClusterStore {
    /// Connects (lazily) to the store.
    pub fn new(target: &RedisTarget, prefix: &str) -> Result<Self, ClusterError> {
        let con = target.connect(Duration::from_secs(5)).map_err(err)?;
        Ok(Self {
            con,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{{plugins}}:{rest}", self.prefix)
    }

    /// Makes `code` plugin `name`'s current version cluster-wide (the caller announces it).
    pub async fn put(&self, name: &str, code: &Code) -> Result<(), ClusterError> {
        self.put_with(code, "current", name, &code.hash).await
    }

    /// Records `trial` (JSON) as plugin `name`'s shadow or canary, with its candidate's bytes.
    pub async fn put_trial(
        &self,
        name: &str,
        code: &Code,
        trial: &str,
    ) -> Result<(), ClusterError> {
        self.put_with(code, "trials", name, trial).await
    }

    /// Stores `code`'s bytes and sets `field` of hash `key` to `value`, atomically: no node can
    /// read a version (or trial) whose bytes are not there yet.
    async fn put_with(
        &self,
        code: &Code,
        key: &str,
        field: &str,
        value: &str,
    ) -> Result<(), ClusterError> {
        let mut con = self.con.clone();
        redis::pipe()
            .atomic()
            .set(
                self.key(&format!("blob:{}", code.hash)),
                code.bytes.as_ref(),
            )
            .ignore()
            .hset(self.key(key), field, value)
            .ignore()
            .query_async::<()>(&mut con)
            .await
            .map_err(err)
    }

    /// Forgets plugin `name`'s trial.
    pub async fn clear_trial(&self, name: &str) -> Result<(), ClusterError> {
        let mut con = self.con.clone();
        redis::cmd("HDEL")
            .arg(self.key("trials"))
            .arg(name)
            .query_async::<i64>(&mut con)
            .await
            .map(drop)
            .map_err(err)
    }

    /// Every trial in the cluster: plugin name -> its JSON.
    pub async fn trials(&self) -> Result<HashMap<String, String>, ClusterError> {
        let mut con = self.con.clone();
        redis::cmd("HGETALL")
            .arg(self.key("trials"))
            .query_async(&mut con)
            .await
            .map_err(err)
    }

    /// The code stored under `hash`.
    pub async fn blob(&self, hash: &str) -> Result<Code, ClusterError> {
        let mut con = self.con.clone();
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.key(&format!("blob:{hash}")))
            .query_async(&mut con)
            .await
            .map_err(err)?;
        let code = Code::new(bytes.ok_or_else(|| ClusterError(format!("no blob {hash}")))?);
        if code.hash != hash {
            return Err(ClusterError(format!("blob {hash} does not match its hash")));
        }
        Ok(code)
    }

    /// Every plugin's current cluster version.
    pub async fn current(&self) -> Result<HashMap<String, Code>, ClusterError> {
        let mut con = self.con.clone();
        let names: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key("current"))
            .query_async(&mut con)
            .await
            .map_err(err)?;
        let mut out = HashMap::new();
        for (name, hash) in names {
            out.insert(name, self.blob(&hash).await?);
        }
        Ok(out)
    }

    /// Records that `node` serves `hash` for plugin `name`.
    pub async fn report(&self, node: &str, name: &str, hash: &str) {
        let mut con = self.con.clone();
        let result = redis::cmd("HSET")
            .arg(self.key(&format!("nodes:{name}")))
            .arg(node)
            .arg(hash)
            .query_async::<i64>(&mut con)
            .await;
        if let Err(e) = result {
            tracing::warn!(plugin = name, error = %e, "cannot record this node's plugin version");
        }
    }

    /// The version each node reports for plugin `name`.
    pub async fn nodes(&self, name: &str) -> Result<HashMap<String, String>, ClusterError> {
        let mut con = self.con.clone();
        redis::cmd("HGETALL")
            .arg(self.key(&format!("nodes:{name}")))
            .query_async(&mut con)
            .await
            .map_err(err)
    }
}
