//! Defects found by trying the gateway as an attacker would (issue 26), one test each: every
//! one failed before its fix.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    Client, PATIENCE, SECRET, TestGateway, eventually, http, http_get, raw_request, scrape,
    upgrade_status, with_plugins,
};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// #1: a token minted by the same key for another service (no `aud`, or no `iss`) was let in
/// although `auth.audience` and `auth.issuer` were configured.
#[tokio::test]
async fn tokens_without_the_configured_audience_or_issuer_are_refused() {
    let gw = TestGateway::start(&format!(
        "[auth]\nanonymous = false\nhs256_secret = {SECRET:?}\naudience = \"switchyard\"\n\
         issuer = \"https://issuer.test\"\n"
    ))
    .await;
    let exp = now() + 600;
    let refused = [
        (
            json!({"sub": "a", "iss": "https://issuer.test", "exp": exp}),
            "lacks the required `aud` claim",
        ),
        (
            json!({"sub": "a", "aud": "switchyard", "exp": exp}),
            "lacks the required `iss` claim",
        ),
        (
            json!({"sub": "a", "aud": "other", "iss": "https://issuer.test", "exp": exp}),
            "audience not accepted",
        ),
        (
            json!({"sub": "a", "aud": "switchyard", "iss": "https://other.test", "exp": exp}),
            "issuer not accepted",
        ),
    ];
    for (claims, reason) in refused {
        let token = mint(claims.clone());
        let (status, body) = upgrade_status(gw.addr, &format!("/ws?token={token}"), "").await;
        assert_eq!(status, 401, "{claims}: {body}");
        assert!(body.contains(reason), "{claims}: {body}");
    }
    let good =
        mint(json!({"sub": "a", "aud": "switchyard", "iss": "https://issuer.test", "exp": exp}));
    let (status, body) = upgrade_status(gw.addr, &format!("/ws?token={good}"), "").await;
    assert_eq!(status, 101, "{body}");
    // The scheme of the Authorization header is case-insensitive, as on /api and /admin.
    let header = format!("authorization: bearer {good}\r\n");
    assert_eq!(upgrade_status(gw.addr, "/ws", &header).await.0, 101);
}

/// The gateway binary with at most `fds` file descriptors, on an ephemeral port.
async fn spawn_with_fd_limit(
    fds: u32,
    config: &str,
) -> (tokio::process::Child, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -n {fds} && exec \"$0\" \"$@\""))
        .arg(crate::support::gateway_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--config",
        ])
        .arg(&path)
        .env_remove("SWITCHYARD_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the gateway binary");
    let addr = crate::support::listening_addr(child.stderr.take().unwrap()).await;
    (child, addr, dir)
}

/// Reads until the server closes the connection (or resets it); writes nothing.
async fn closed_by_server(mut s: TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// #2: connections that never complete a request (bare connects, one header byte every few
/// hundred milliseconds, idle keep-alive) were held forever and counted toward nothing: with
/// 256 file descriptors, 300 of them locked every client out.
#[tokio::test]
async fn idle_and_slow_http_connections_cannot_lock_clients_out() {
    let (_child, addr, _dir) = spawn_with_fd_limit(
        256,
        "[limits]\nmax_connections = 50\nhttp_header_timeout_secs = 1\nmax_http_connections = 100\n",
    )
    .await;
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut attackers = Vec::new();
    for _ in 0..300 {
        let s = TcpStream::connect(addr).await.unwrap();
        attackers.push(tokio::spawn(closed_by_server(s)));
    }
    for _ in 0..30 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        attackers.push(tokio::spawn(async move {
            for b in b"GET /healthz HTTP/1.1\r\nHost: slow\r\n".iter().cycle() {
                if s.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        attackers.push(tokio::spawn(async move {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
                .await
                .unwrap();
            // The answer, then nothing: an idle keep-alive connection.
            closed_by_server(s).await;
        }));
    }
    // Clients that come after them are served.
    let (status, body) = tokio::time::timeout(PATIENCE, http_get(addr, "/healthz"))
        .await
        .expect("/healthz answers despite the idle connections");
    assert_eq!((status, body.as_str()), (200, "ok"));
    let mut c = Client::connect(&format!("ws://{addr}/ws")).await;
    c.subscribe("still-served").await;
    // And every one of the idle and slow connections was closed by the server.
    for attacker in attackers {
        tokio::time::timeout(PATIENCE, attacker)
            .await
            .expect("the server closes idle and slow connections")
            .unwrap();
    }
}

/// #2: a request whose body trickles in is answered 408 once `http_request_timeout_secs`
/// passes, and its connection closed.
#[tokio::test]
async fn a_request_body_that_never_completes_times_out() {
    const KEY: &str = "backend-key-0123456789";
    let gw = TestGateway::start(&format!(
        "[limits]\nhttp_request_timeout_secs = 1\n[api]\nkeys = [\"{KEY}\"]\n"
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Length: 100\r\n\r\n{{\"channel\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut response))
        .await
        .expect("answered and closed in time")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("request_timeout"), "{response}");
}

/// #3 and #9: what a plugin hands back is bounded like forwarded data, and clients are told a
/// plugin failed without its name, version or error text: a 100 kB deny reason reached the
/// client, a 16 MB reject reason became every upgrade's 403 body.
#[tokio::test]
async fn plugin_output_is_capped_and_failures_are_reported_without_details() {
    let gw = TestGateway::start(&with_plugins(
        r#"
[[plugins.bindings]]
pattern = "big:*"
plugin = "hostile"
config = { mode = "oversize", bytes = 100000, hooks = ["subscribe"] }

[[plugins.bindings]]
pattern = "trap:*"
plugin = "hostile"
config = { mode = "trap", hooks = ["publish"] }
"#,
    ))
    .await;
    let mut c = gw.client().await;
    c.send(json!({"type": "subscribe", "channel": "big:1", "id": 1}))
        .await;
    let e = c.expect_error().await;
    assert_eq!(e["code"], "plugin_error", "{e}");
    let text = e["message"].as_str().unwrap();
    assert!(text.len() < 200, "{text}");
    assert!(
        !text.contains("hostile") && !text.contains("xxxx"),
        "{text}"
    );
    c.send(json!({"type": "publish", "channel": "trap:1", "data": 1, "id": 2}))
        .await;
    let e = c.expect_error().await;
    assert_eq!(e["code"], "plugin_error", "{e}");
    let text = e["message"].as_str().unwrap();
    assert!(
        !text.contains("hostile") && !text.contains("unreachable") && !text.contains('@'),
        "no plugin name, version or trap text: {text}"
    );
    assert!(text.contains("on-publish"), "names the hook: {text}");

    // A connect hook's huge reject reason is refused as invalid output: a short answer.
    let connect = TestGateway::start(&with_plugins(
        r#"connect = { plugin = "hostile", config = { mode = "oversize", bytes = 100000, hooks = ["connect"] } }"#,
    ))
    .await;
    let (status, body) = upgrade_status(connect.addr, "/ws", "").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.len() < 300, "{} bytes: {body}", body.len());
    assert!(body.contains("plugin_error"), "{body}");
}

/// #4: invalid output (here: JSON nested 1,000 deep, over `limits.max_json_depth`) and calls
/// that succeed slowly count toward the circuit breaker; before, a call was recorded as a
/// success before its output was checked, and slow calls were never counted.
#[tokio::test]
async fn invalid_output_and_slow_calls_open_the_circuit_breaker() {
    let gw = TestGateway::start(&with_plugins(
        r#"timeout_ms = 200
slow_call_fraction = 0.25

[[plugins.bindings]]
pattern = "deep:*"
plugin = "hostile"
config = { mode = "deep", depth = 1000, hooks = ["deliver"] }

[[plugins.bindings]]
pattern = "slow:*"
plugin = "hostile"
config = { mode = "slow", ms = 80, hooks = ["subscribe"] }
"#,
    ))
    .await;
    let mut sub = gw.client().await;
    sub.subscribe("deep:1").await;
    sub.subscribe("plain").await;
    let mut publisher = gw.client().await;
    for i in 0..7u64 {
        publisher.publish_acked("deep:1", json!(i), i).await;
    }
    // The rewrites were refused: nothing from deep:1 comes before what follows on `plain`.
    publisher.publish_acked("plain", json!("after"), 100).await;
    assert_eq!(sub.recv().await["data"], "after");
    // Five slow subscribes in a row are allowed; they open the breaker for the sixth.
    for i in 0..5 {
        sub.subscribe(&format!("slow:{i}")).await;
    }
    sub.send(json!({"type": "subscribe", "channel": "slow:5"}))
        .await;
    assert_eq!(sub.expect_error().await["code"], "plugin_error");
    let (_, text) = http_get(gw.addr, "/metrics").await;
    let count = |kind: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("switchyard_plugin_errors_total")
                    && l.contains(&format!("kind=\"{kind}\""))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    assert!(count("invalid_output") >= 5.0, "{text}");
    assert!(count("slow") >= 5.0, "{text}");
    assert!(count("circuit_open") >= 2.0, "{text}");
}

/// Receives `n` deliveries, returning each one's `data.i` and its latency (`data.t` is the
/// publisher's clock reading, µs since `base`).
async fn receive(c: &mut Client, n: usize, base: Instant) -> (Vec<u64>, Vec<u64>) {
    let (mut seen, mut latencies) = (Vec::new(), Vec::new());
    while seen.len() < n {
        let m = c.recv().await;
        assert_eq!(m["type"], "message", "{m}");
        seen.push(m["data"]["i"].as_u64().unwrap());
        let sent = m["data"]["t"].as_u64().unwrap();
        latencies.push(base.elapsed().as_micros() as u64 - sent);
    }
    (seen, latencies)
}

fn p99(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Publishes `n` messages on `channel` at `rate` per second, stamped with the time since
/// `base`.
async fn publish_at(c: &mut Client, channel: &str, n: u64, rate: u64, base: Instant) {
    let start = tokio::time::Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(start + Duration::from_micros(i * 1_000_000 / rate)).await;
        let t = base.elapsed().as_micros() as u64;
        c.publish(channel, json!({"i": i, "t": t})).await;
    }
}

/// #5: a deliver hook ran under the hub's shard lock on the broker's receiving task, so one
/// tenant's slow hook (5 ms per call) capped the whole node at ~200 messages per second. Now
/// it moves to an isolation lane: the other tenant gets every message, in order. On a
/// multi-threaded runtime, as the gateway binary runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tenant_hook_does_not_hold_up_other_tenants() {
    // A generous queue: the test's clients, not the gateway, are the slow readers on a
    // loaded machine, and this test is not about slow consumers.
    let gw = TestGateway::start(&format!(
        "[limits]\noutbound_queue = 65536\n{}\n{}",
        with_plugins(
            r#"
[[plugins.bindings]]
pattern = "t:*"
plugin = "allow-all"

[plugins.bindings.tenants.slow]
plugin = "hostile"
config = { mode = "slow", ms = 5, hooks = ["deliver"] }
"#
        ),
        crate::plugins_auth()
    ))
    .await;
    const N: u64 = 4_000;
    const RATE: u64 = 2_000;
    let base = Instant::now();
    let mut fast = gw.client_as("f", Some("fast")).await;
    fast.subscribe("t:1").await;
    let mut publisher = gw.client().await;
    // Warm up (plugin instances, code paths), then the fast tenant alone, for comparison.
    for warm in [200, N] {
        let (_, (seen, _)) = tokio::join!(
            publish_at(&mut publisher, "t:1", warm, RATE, base),
            receive(&mut fast, warm as usize, base)
        );
        assert_eq!(seen, (0..warm).collect::<Vec<_>>());
    }
    let (_, (_, alone)) = tokio::join!(
        publish_at(&mut publisher, "t:1", N, RATE, base),
        receive(&mut fast, N as usize, base)
    );

    // With the slow tenant subscribed too, read as it comes (it would otherwise fill up and be
    // closed as a slow consumer) until the last message.
    let mut slow = gw.client_as("s", Some("slow")).await;
    slow.subscribe("t:1").await;
    let slow_reader = tokio::spawn(async move {
        let (mut last, mut got) = (None, 0u64);
        loop {
            let m = slow.recv().await;
            let i = m["data"]["i"].as_u64().unwrap();
            assert!(last.is_none_or(|l| i > l), "in order: {i} after {last:?}");
            last = Some(i);
            got += 1;
            if i == N {
                return got;
            }
        }
    });
    let (_, (seen, beside)) = tokio::join!(
        publish_at(&mut publisher, "t:1", N, RATE, base),
        receive(&mut fast, N as usize, base)
    );
    assert_eq!(seen, (0..N).collect::<Vec<_>>(), "every message, in order");
    // The slow tenant gets what its lane could prepare, in order; the rest was dropped. Once
    // the lane has caught up, a last message reaches it.
    eventually("the isolation lane to catch up", async || {
        let (_, text) = http_get(gw.addr, "/metrics").await;
        scrape(&text).get("switchyard_isolation_queued") == Some(&0.0)
    })
    .await;
    publisher
        .publish_acked("t:1", json!({"i": N, "t": 0}), 1)
        .await;
    let got = tokio::time::timeout(PATIENCE, slow_reader)
        .await
        .expect("the last message reaches the slow tenant")
        .unwrap();
    eprintln!(
        "isolation: fast tenant p99 alone {} us, beside a 5 ms hook {} us ({:.2}x); slow tenant got {got} of {}",
        p99(alone.clone()),
        p99(beside.clone()),
        p99(beside) as f64 / p99(alone).max(1) as f64,
        N + 1
    );
    let (_, text) = http_get(gw.addr, "/metrics").await;
    assert!(
        scrape(&text)
            .get("switchyard_plugin_isolations_total")
            .is_some_and(|n| *n >= 1.0),
        "the slow hook was isolated: {text}"
    );
}

/// #6: 1,100 requests sent in one write got the client closed as a slow consumer (4001)
/// although it reads: replies now push back on reading, they do not overflow the queue.
#[tokio::test]
async fn a_client_that_pipelines_requests_gets_every_reply() {
    let gw = TestGateway::start("[limits]\noutbound_queue = 64\n").await;
    let mut c = gw.client().await;
    for i in 0..1_100 {
        let frame = json!({"type": "unsubscribe", "channel": format!("c{i}"), "id": i});
        c.ws.feed(Message::text(frame.to_string())).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    for i in 0..1_100 {
        let reply = c.recv().await;
        assert_eq!(
            reply,
            json!({"type": "unsubscribed", "channel": format!("c{i}"), "id": i})
        );
    }
    c.subscribe("still-open").await;
}

/// #7: an empty or non-base64 `Sec-WebSocket-Key` was upgraded (RFC 6455 4.2.1 requires 400).
#[tokio::test]
async fn upgrades_with_a_malformed_key_are_refused() {
    let gw = TestGateway::start("").await;
    for key in [
        "",
        "abc",
        "not base64 at all!!!!!!!",
        "dGhlIHNhbXBsZSBub25jZQ",
    ] {
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        let (status, body) = raw_request(gw.addr, &request).await;
        assert_eq!(status, 400, "{key:?}: {body}");
        assert!(body.contains("Sec-WebSocket-Key"), "{key:?}: {body}");
    }
}

/// #9: `data` nested deeper than `limits.max_json_depth` is refused with `invalid_json`, over
/// WebSocket and over the HTTP API.
#[tokio::test]
async fn deeply_nested_data_is_refused() {
    const KEY: &str = "backend-key-0123456789";
    let gw = TestGateway::start(&format!(
        "[limits]\nmax_json_depth = 64\n[api]\nkeys = [\"{KEY}\"]\n"
    ))
    .await;
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let mut c = gw.client().await;
    c.subscribe("d").await;
    c.send_text(&format!(
        r#"{{"type":"publish","channel":"d","data":{},"id":1}}"#,
        nested(65)
    ))
    .await;
    let e = c.expect_error().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("invalid_json"), Some(1))
    );
    assert!(
        e["message"].as_str().unwrap().contains("max_json_depth"),
        "{e}"
    );
    let ok = c
        .publish_own("d", serde_json::from_str(&nested(64)).unwrap(), 2)
        .await;
    assert_eq!(ok["type"], "message");
    let body = format!(r#"{{"channel":"d","data":{}}}"#, nested(1000));
    let (status, answer) = http(gw.addr, "POST", "/api/publish", Some(KEY), body).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("invalid_json"), "{answer}");
}

/// #9: `POST /api/publish` read up to 2 MB before it looked at the API key. Now a request
/// without the key is refused before its body is read: the 401 comes while the client has
/// sent nothing of the 2 MB it announced.
#[tokio::test]
async fn the_api_key_is_checked_before_the_body_is_read() {
    const KEY: &str = "backend-key-0123456789";
    let gw = TestGateway::start(&format!("[api]\nkeys = [\"{KEY}\"]\n")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /api/publish HTTP/1.1\r\nHost: gw\r\nContent-Length: 2000000\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 12];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut head))
        .await
        .expect("answered without the body")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 401");
    // The scheme is matched without regard to case (one parser for /ws, /api and /admin).
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nauthorization: bearer {KEY}\r\n\
         Content-Length: 24\r\n\r\n{{\"channel\":\"x\",\"data\":1}}"
    );
    let (status, body) = raw_request(gw.addr, &request).await;
    assert_eq!(status, 200, "{body}");
}

/// #9: admin uploads accepted any name of any length; they now follow the configuration's
/// plugin-name rules.
#[tokio::test]
async fn admin_plugin_names_follow_the_configuration_rules() {
    const TOKEN: &str = "admin-token-0123456789";
    let gw = TestGateway::start(&format!("[admin]\ntoken = \"{TOKEN}\"\n")).await;
    for name in ["a".repeat(65), "a.b".to_owned(), "%2e%2e".to_owned()] {
        let (status, body) = http(
            gw.addr,
            "PUT",
            &format!("/admin/plugins/{name}"),
            Some(TOKEN),
            b"\0asm\x0d\x00\x01\x00".to_vec(),
        )
        .await;
        assert_eq!(status, 400, "{name}: {body}");
        assert!(body.contains("invalid_name"), "{name}: {body}");
    }
    // The admin API without a token configured says it is disabled.
    let off = TestGateway::start("").await;
    let (status, body) = http(off.addr, "GET", "/admin/plugins", Some(TOKEN), "").await;
    assert_eq!(status, 401);
    assert!(body.contains("disabled"), "{body}");
}
