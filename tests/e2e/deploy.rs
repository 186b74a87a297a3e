//! Production shape: three nodes and Redis behind nginx; a node drained with 1001 while its
//! clients reconnect through nginx and keep receiving.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use serde_json::json;
use tokio::process::{Child, Command};

use crate::redis_support::RedisServer;
use crate::support::{Client, Ended, TestGateway, eventually};

struct Nginx {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx from the shipped template, in front of `upstreams`.
    async fn start(upstreams: &[std::net::SocketAddr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let template = std::fs::read_to_string(
            crate::support::workspace().join("examples/nginx/nginx.conf.template"),
        )
        .unwrap();
        let servers: String = upstreams
            .iter()
            .map(|a| format!("server {a} max_fails=0; "))
            .collect();
        let prefix = dir.path().display().to_string();
        let conf = template
            .replace("@LISTEN@", &port.to_string())
            .replace("@UPSTREAMS@", &servers)
            .replace("@PREFIX@", &prefix);
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx is installed (.ci/run installs nginx-light)");
        wait_for_port(port, dir.path()).await;
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A SIGKILL of the master (kill_on_drop) leaves its worker running: SIGTERM makes the
        // master stop the worker before it exits.
        let Some(pid) = self.child.id() else { return };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// nginx says nothing when it is ready: wait until its port accepts.
async fn wait_for_port(port: u16, dir: &Path) {
    let log = dir.join("error.log");
    eventually(
        &format!("nginx to listen on {port} (see {})", log.display()),
        async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        },
    )
    .await;
}

#[tokio::test]
async fn three_nodes_behind_nginx_and_a_drained_node() {
    let redis = RedisServer::start().await;
    let cfg = |id: &str| {
        format!(
            "[broker]\nredis_url = \"{}\"\n[server]\nnode_id = \"{id}\"\n",
            redis.url()
        )
    };
    let nodes = vec![
        TestGateway::start_ready(&cfg("n1")).await,
        TestGateway::start_ready(&cfg("n2")).await,
        TestGateway::start_ready(&cfg("n3")).await,
    ];
    let nginx = Nginx::start(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>()).await;

    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut c = Client::connect(&nginx.url()).await;
        c.subscribe("room").await;
        clients.push(c);
    }
    let spread: Vec<usize> = nodes.iter().map(|n| n.node.connections.count()).collect();
    assert!(
        spread.iter().all(|&n| n == 2),
        "least_conn spreads clients over the nodes: {spread:?}"
    );
    clients[0].publish_acked("room", json!("hello"), 1).await;
    for c in clients.iter_mut().skip(1) {
        assert_eq!(c.recv().await["data"], "hello");
    }
    assert_eq!(clients[0].recv().await["data"], "hello");

    // Drain node n1: its two clients are closed with 1001 and reconnect through nginx.
    let mut nodes = nodes;
    let drained = nodes.remove(0);
    drained.shutdown().await;
    // Every client's next event is either the drain's close frame or this message.
    let mut fresh = Client::connect(&nginx.url()).await;
    fresh.subscribe("room").await;
    fresh.publish_acked("room", json!("during"), 2).await;
    let mut closed = 0;
    let mut reconnect_times = Vec::new();
    for c in clients.iter_mut() {
        match c.next_event().await {
            Ok(m) => assert_eq!(m["data"], "during"),
            Err(Ended::Closed(code, _)) => {
                assert_eq!(code, 1001);
                closed += 1;
                let t = Instant::now();
                *c = Client::connect(&nginx.url()).await;
                c.subscribe("room").await;
                reconnect_times.push(t.elapsed());
            }
            Err(Ended::Dropped) => panic!("a drained client must get a 1001 close frame"),
        }
    }
    assert_eq!(closed, 2, "exactly the drained node's clients were closed");
    fresh.publish_acked("room", json!("after drain"), 3).await;
    for c in clients.iter_mut() {
        assert_eq!(c.recv().await["data"], "after drain");
    }
    assert_eq!(
        nodes
            .iter()
            .map(|n| n.node.connections.count())
            .sum::<usize>(),
        7
    );
    eprintln!("drained clients subscribed again through nginx after {reconnect_times:?}");
}
