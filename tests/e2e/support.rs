//! Shared test harness: gateways on ephemeral loopback ports and WebSocket clients.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard::node::Node;
use switchyard::{Config, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound on waiting for an event that should come; only guards against a hung test.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A gateway served in-process on 127.0.0.1 with an ephemeral port.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    /// Starts a gateway from TOML config text (the listen address is forced to port 0).
    pub async fn start(toml: &str) -> Self {
        let mut config = Config::from_toml(toml).expect("test config is valid");
        config.log.filter = "warn".to_owned();
        switchyard::telemetry::init(&config.log);
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.server.shutdown_grace_secs = 2;
        let gateway = Gateway::bind(config).await.expect("gateway binds");
        let addr = gateway.local_addr();
        let node = gateway.node();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            gateway
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("gateway runs");
        });
        Self {
            addr,
            node,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts a gateway and waits until it is ready (its broker connected).
    pub async fn start_ready(toml: &str) -> Self {
        let gw = Self::start(toml).await;
        let node = gw.node.clone();
        eventually("the node to be ready", async || node.is_ready()).await;
        gw
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// Starts graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Starts graceful shutdown and waits for the gateway to finish.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        tokio::time::timeout(PATIENCE, self.task.take().unwrap())
            .await
            .expect("gateway stops in time")
            .expect("gateway task ok");
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A WebSocket client speaking the JSON protocol.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Deliveries that arrived while [`Client::publish_acked`] waited for its acknowledgement
    /// (a delivery may overtake it), handed out by [`Client::recv`] first.
    held: std::collections::VecDeque<Value>,
}

/// What ended a connection from the client's point of view.
#[derive(Debug)]
pub enum Ended {
    /// A close frame with this code and reason.
    Closed(u16, String),
    /// The stream ended or failed without a close frame.
    Dropped,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("websocket connects");
        Self {
            ws,
            held: Default::default(),
        }
    }

    /// Connects with a tiny socket receive buffer, so a client that stops reading backs up
    /// the server quickly (loopback buffers can otherwise absorb tens of megabytes).
    pub async fn connect_small_rcvbuf(addr: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.expect("tcp connect");
        let url = format!("ws://{addr}/ws");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("websocket connects");
        Self {
            ws,
            held: Default::default(),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// Next data frame as JSON (control frames are skipped); panics if the connection ends.
    pub async fn recv(&mut self) -> Value {
        if let Some(held) = self.held.pop_front() {
            return held;
        }
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame arrives in time")
                .expect("connection open")
                .expect("frame readable");
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str()).expect("server sends JSON");
                }
                Message::Binary(_) => panic!("server sent a binary frame"),
                Message::Close(c) => panic!("connection closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next data frame as JSON, or how the connection ended.
    pub async fn next_event(&mut self) -> Result<Value, Ended> {
        loop {
            match tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("an event in time")
            {
                Some(Ok(Message::Text(t))) => {
                    return Ok(serde_json::from_str(t.as_str()).expect("JSON"));
                }
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Err(Ended::Closed(code.into(), reason.to_string()));
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Err(Ended::Dropped),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads until the connection ends, discarding data frames.
    pub async fn ended(&mut self) -> Ended {
        loop {
            match tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("connection ends in time")
            {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Ended::Closed(code.into(), reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Ended::Dropped,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// After [`Client::ended`] saw the server's close frame: sends the close reply tungstenite
    /// queued (it leaves on the next read) and reads until the server drops the connection, as
    /// a well-behaved client does. Without it the server waits out its drain timeout.
    pub async fn finish_close(&mut self) {
        while let Some(Ok(_)) = tokio::time::timeout(PATIENCE, self.ws.next())
            .await
            .expect("the server ends the connection in time")
        {}
    }

    /// Sends `request` with the id `"q"` and returns the reply, which must be the next frame
    /// (no delivery may come meanwhile).
    pub async fn ask(&mut self, mut request: Value) -> Value {
        request["id"] = json!("q");
        self.send(request).await;
        let reply = self.recv().await;
        assert_eq!(reply["id"], "q", "{reply}");
        reply
    }

    pub async fn subscribe(&mut self, channel: &str) {
        self.send(json!({"type": "subscribe", "channel": channel}))
            .await;
        let reply = self.recv().await;
        assert_eq!(reply, json!({"type": "subscribed", "channel": channel}));
    }

    pub async fn publish(&mut self, channel: &str, data: Value) {
        self.send(json!({"type": "publish", "channel": channel, "data": data}))
            .await;
    }

    /// Publishes with an id and waits for the broker's acknowledgement. Deliveries that
    /// arrive meanwhile are held for [`Client::recv`]: the protocol does not order a
    /// publisher's own deliveries against its acknowledgements.
    pub async fn publish_acked(&mut self, channel: &str, data: Value, id: u64) {
        self.send(json!({"type": "publish", "channel": channel, "data": data, "id": id}))
            .await;
        let mut early = Vec::new();
        loop {
            let v = self.recv().await;
            if v["type"] == "published" {
                assert_eq!(v["id"], id);
                break;
            }
            assert_eq!(v["type"], "message", "unexpected reply {v}");
            early.push(v);
        }
        // Behind anything held before, ahead of what is still to be read.
        self.held.extend(early);
    }

    /// Deliveries held by [`Client::publish_acked`] and not yet received.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Publishes with an id on a channel this client is subscribed to; returns its own
    /// delivery, which may arrive before or after the acknowledgement.
    pub async fn publish_own(&mut self, channel: &str, data: Value, id: u64) -> Value {
        self.publish_acked(channel, data, id).await;
        self.recv().await
    }

    /// Next error reply's code (other frames are not expected).
    pub async fn expect_error(&mut self) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], "error", "expected an error, got {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v
    }
}

/// A plain HTTP/1.1 GET over a raw socket: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, None, "").await
}

/// A plain HTTP/1.1 request with an optional bearer key: (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: impl AsRef<[u8]>,
) -> (u16, String) {
    let body = body.as_ref();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (e.g. 413) and close before reading a large body.
    let _ = s.write_all(body).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .expect("response in time");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Sends `request` on a fresh connection; returns the status and everything after the head.
pub async fn raw_request(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Reads an HTTP response head from `s`: the head, and whatever bytes came after it.
pub async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let head_end = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before a response head: {got:?}");
            got.extend_from_slice(&chunk[..n]);
            if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                return at + 4;
            }
        }
    })
    .await
    .expect("a response in time");
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    (head, got[head_end..].to_vec())
}

/// Sends a WebSocket upgrade request for `path` (with its query) with a valid key and the
/// extra header lines `headers` (each ending in `\r\n`); returns the status and, when the
/// upgrade is refused, the body.
pub async fn upgrade_status(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut s).await;
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    if status == 101 {
        return (status, String::new());
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = rest;
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .expect("the body in time")
            .unwrap();
        assert!(n > 0, "closed in the middle of the body");
        body.extend_from_slice(&chunk[..n]);
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Parses Prometheus text exposition: every non-comment line is `name{labels} value`.
pub fn scrape(text: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix('#') {
            assert!(
                c.starts_with(" HELP ") || c.starts_with(" TYPE "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line:?}"
            );
        }
        // Sum series of one name across labels.
        *out.entry(name.to_owned()).or_insert(0.0) += value;
    }
    out
}

/// Waits until `cond` holds, polling state the test cannot be notified of (server counters,
/// readiness, a Redis command's answer) every 10 ms; bounded by [`PATIENCE`], after which the
/// test fails naming `what`. The one polling helper of the suite: `cond` may await.
pub async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Path of the gateway binary built for this test run.
pub fn gateway_bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

/// The workspace root.
pub fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Directory of the example plugins built as WebAssembly components, built once per test
/// run (cargo makes a repeat build a no-op).
pub fn plugins_dir() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace();
            let out = std::process::Command::new("bash")
                .arg(root.join("scripts/build-plugins.sh"))
                .current_dir(&root)
                .output()
                .expect("run scripts/build-plugins.sh");
            assert!(
                out.status.success(),
                "building plugins failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            root.join("target/plugins")
        })
        .clone()
}

/// A `[plugins]` section pointing at the built example plugins, followed by `rest`.
pub fn with_plugins(rest: &str) -> String {
    // Deadlines are wall-clock: a loaded CI machine running debug builds must not turn a slow
    // but healthy call into a timeout. Tests about deadlines set their own.
    let timeout = if rest.contains("timeout_ms") {
        ""
    } else {
        "timeout_ms = 1000\n"
    };
    format!(
        "[plugins]\ndir = {:?}\n{timeout}{rest}",
        plugins_dir().display().to_string()
    )
}

/// Shared HS256 secret of the test gateways.
pub const SECRET: &str = "test-secret-0123456789";

/// A signed HS256 token for `user` (and `tenant`) valid for an hour, audience `switchyard`.
pub fn token(user: &str, tenant: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({"sub": user, "aud": "switchyard", "exp": now + 3600});
    if let Some(t) = tenant {
        claims["tenant"] = json!(t);
    }
    sign(&claims)
}

/// `claims` signed as an HS256 token with the harness's secret.
pub fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

impl TestGateway {
    /// Connects as `user` with a token in the query string.
    pub async fn client_as(&self, user: &str, tenant: Option<&str>) -> Client {
        Client::connect(&format!("{}?token={}", self.url(), token(user, tenant))).await
    }
}

/// Reads a JSON-logging gateway's stderr until its "listening" line; returns the address and
/// keeps draining the rest so the child never blocks on a full pipe.
pub async fn listening_addr(stderr: tokio::process::ChildStderr) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let addr = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["message"] == "switchyard listening" {
                return v["addr"].as_str().unwrap().to_owned();
            }
        }
        panic!("gateway exited before listening");
    })
    .await
    .expect("gateway starts");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    addr
}

/// Starts the real `switchyard` binary on an ephemeral port (JSON logs, optional config file);
/// returns the child (killed on drop) and the address it listens on.
pub async fn spawn_gateway(config: Option<&std::path::Path>) -> (tokio::process::Child, String) {
    let mut cmd = tokio::process::Command::new(gateway_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .env_remove("SWITCHYARD_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = config {
        cmd.arg("--config").arg(path);
    }
    let mut child = cmd.spawn().expect("spawn the gateway binary");
    let addr = listening_addr(child.stderr.take().unwrap()).await;
    (child, addr)
}

/// A tiny deterministic generator: randomized tests stay reproducible.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}
