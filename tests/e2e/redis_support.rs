//! A private `redis-server` per test, on a free loopback port, killed on drop.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::PATIENCE;

/// A redis-server child process owned by one test.
pub struct RedisServer {
    pub port: u16,
    /// Arguments beyond the defaults (cluster mode, its files).
    extra: Vec<String>,
    child: Option<Child>,
}

/// A free loopback port (free now; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(|_| Vec::new()).await
    }

    /// Starts with extra arguments chosen knowing the port.
    pub async fn start_with(extra: impl FnOnce(u16) -> Vec<String>) -> Self {
        let port = free_port();
        let mut server = Self {
            port,
            extra: extra(port),
            child: None,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("Ready to accept connections") {
                    return;
                }
            }
            panic!("redis-server exited before it was ready");
        })
        .await
        .expect("redis-server starts");
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    /// SIGKILL: no goodbye to clients, as in a crash.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
            child.wait().await.unwrap();
        }
    }

    /// Starts again on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// Runs a command through a fresh connection.
    pub async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let client = redis::Client::open(self.url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        cmd.query_async(&mut con).await.unwrap()
    }

    /// Runs a command, or `None` if the server cannot be reached or refuses it.
    pub async fn try_cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        cmd.query_async(&mut con).await.ok()
    }

    /// `PUBSUB NUMSUB channel`.
    pub async fn numsub(&self, channel: &str) -> i64 {
        let v: Vec<(String, i64)> = self
            .cmd(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel))
            .await;
        v[0].1
    }
}

/// A Redis Cluster of masters without replicas, each a [`RedisServer`] with its own files.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `n` masters with `--cluster-enabled yes` and joins them with
    /// `redis-cli --cluster create`; returns once every node reports `cluster_state:ok`.
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, false).await
    }

    /// As [`RedisCluster::start`], with every write in an append-only file synced at once, so
    /// a restarted master comes back with its data.
    pub async fn start_persistent(n: usize) -> Self {
        Self::start_with(n, true).await
    }

    async fn start_with(n: usize, persistent: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut masters = Vec::new();
        for _ in 0..n {
            let path = dir.path().to_str().unwrap().to_owned();
            masters.push(
                RedisServer::start_with(|port| {
                    let aof = if persistent { "yes" } else { "no" };
                    [
                        "--appendonly",
                        aof,
                        "--appendfsync",
                        "always",
                        "--appendfilename",
                        &format!("appendonly-{port}.aof"),
                        "--appenddirname",
                        &format!("aof-{port}"),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &format!("nodes-{port}.conf"),
                        "--dir",
                        &path,
                        "--cluster-port",
                        &free_port().to_string(),
                        "--cluster-node-timeout",
                        "1000",
                        // The other shards keep serving while one master is down.
                        "--cluster-require-full-coverage",
                        "no",
                    ]
                    .map(str::to_owned)
                    .to_vec()
                })
                .await,
            );
        }
        let mut create = tokio::process::Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for m in &masters {
            create.arg(format!("127.0.0.1:{}", m.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { masters, _dir: dir };
        cluster.wait_ok().await;
        cluster
    }

    /// Seed URLs for the gateway's `broker.redis_cluster`.
    pub fn seeds(&self) -> Vec<String> {
        self.masters.iter().map(RedisServer::url).collect()
    }

    /// Waits until every master is up and says `cluster_state:ok`.
    pub async fn wait_ok(&self) {
        tokio::time::timeout(PATIENCE, async {
            for m in &self.masters {
                loop {
                    let info: Option<String> = m.try_cmd(redis::cmd("CLUSTER").arg("INFO")).await;
                    if info.is_some_and(|i| i.contains("cluster_state:ok")) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        })
        .await
        .expect("cluster state ok in time");
    }

    /// Index of the master that owns `key`'s slot.
    pub async fn owner(&self, key: &str) -> usize {
        let slot: i64 = self.masters[0]
            .cmd(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await;
        for (i, m) in self.masters.iter().enumerate() {
            let ranges: Vec<(i64, i64)> = m
                .cmd::<Vec<Vec<redis::Value>>>(redis::cmd("CLUSTER").arg("SLOTS"))
                .await
                .into_iter()
                .filter(|r| {
                    matches!(&r[2], redis::Value::Array(node)
                        if matches!(node.get(1), Some(redis::Value::Int(p)) if *p == i64::from(m.port)))
                })
                .map(|r| match (&r[0], &r[1]) {
                    (redis::Value::Int(a), redis::Value::Int(b)) => (*a, *b),
                    other => panic!("unexpected CLUSTER SLOTS entry {other:?}"),
                })
                .collect();
            if ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)) {
                return i;
            }
        }
        panic!("no master owns slot {slot}");
    }

    /// `PUBSUB SHARDNUMSUB channel` on the master owning it.
    pub async fn shardnumsub(&self, channel: &str) -> i64 {
        let owner = &self.masters[self.owner(channel).await];
        let v: Vec<(String, i64)> = owner
            .cmd(redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel))
            .await;
        v[0].1
    }
}
