//! History and recovery end to end: real gateways (in-process and binaries), real Redis (each
//! test's own), WebSocket clients that disconnect while messages flow and come back with
//! `since`. Every received message is checked as it arrives: its offset is the one after the
//! last, in the same epoch, and its data is what the publisher sent with that offset.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::redis_support::{RedisCluster, RedisServer};
use crate::support::{self, Client, Ended, Lcg, PATIENCE, TestGateway, eventually};

/// History on `h:*` channels: room for every message a test publishes.
const HISTORY: &str =
    "[[namespaces]]\npattern = \"h:*\"\nhistory_size = 100000\nhistory_ttl_secs = 600\n";

fn redis_config(url: &str) -> String {
    format!("[broker]\nredis_url = {url:?}\n{HISTORY}")
}

/// What a subscribe on a channel with history answered: the recovered messages it sent
/// first, then its reply.
struct Subscribed {
    recovered: Vec<Value>,
    reply: Value,
}

async fn subscribe(c: &mut Client, channel: &str, since: Option<Value>) -> Subscribed {
    let mut request = json!({"type": "subscribe", "channel": channel, "id": "s"});
    if let Some(since) = since {
        request["since"] = since;
    }
    c.send(request).await;
    let mut recovered = Vec::new();
    loop {
        let v = c.recv().await;
        if v["type"] == "message" {
            recovered.push(v);
        } else {
            return Subscribed {
                recovered,
                reply: v,
            };
        }
    }
}

/// A subscriber's record of one channel published by one [`Flow`]: where it is, checked as
/// each message arrives.
struct Seen {
    epoch: String,
    last: u64,
    received: u64,
}

impl Seen {
    /// Starts at a `subscribed` reply's position.
    fn at(reply: &Value) -> Self {
        Self {
            epoch: reply["epoch"].as_str().expect("an epoch").to_owned(),
            last: reply["offset"].as_u64().expect("an offset"),
            received: 0,
        }
    }

    /// Takes the next message: nothing lost, nothing twice, in order.
    fn take(&mut self, m: &Value) {
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["epoch"], self.epoch.as_str(), "same epoch: {m}");
        let offset = m["offset"].as_u64().expect("an offset");
        assert_eq!(
            offset,
            self.last + 1,
            "after offset {} came {m}: a gap or a duplicate",
            self.last
        );
        // The flow publishes i = 0, 1, 2... on a fresh channel: offset i + 1.
        assert_eq!(m["data"]["i"], offset - 1, "data at its offset: {m}");
        self.last = offset;
        self.received += 1;
    }

    fn since(&self) -> Value {
        json!({"offset": self.last, "epoch": self.epoch})
    }

    /// Reads live messages until `done` holds.
    async fn read_until(&mut self, c: &mut Client, done: impl Fn(&Seen) -> bool) {
        while !done(self) {
            let m = c.recv().await;
            self.take(&m);
        }
    }
}

/// One client publishing `{"i": n}` for n = 0, 1, 2... on a channel, `per_ms` messages per
/// millisecond, until stopped.
struct Flow {
    /// How many it has sent.
    sent: watch::Receiver<u64>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<u64>,
}

impl Flow {
    fn start(url: String, channel: &str, per_ms: u64) -> Self {
        let (sent_tx, sent) = watch::channel(0);
        let (stop, mut stopped) = oneshot::channel();
        let channel = channel.to_owned();
        let task = tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut i = 0u64;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        for _ in 0..per_ms {
                            c.publish(&channel, json!({"i": i})).await;
                            i += 1;
                        }
                        let _ = sent_tx.send(i);
                    }
                }
            }
            // Acknowledged: every publish before it was accepted (an error reply to any of
            // them would arrive first and fail here).
            c.publish_acked(&channel, json!({"i": i}), 1).await;
            i + 1
        });
        Self { sent, stop, task }
    }

    /// Waits until it has sent `n` messages.
    async fn sent_at_least(&mut self, n: u64) {
        tokio::time::timeout(PATIENCE * 3, self.sent.wait_for(|sent| *sent >= n))
            .await
            .expect("the flow goes on")
            .expect("the flow is running");
    }

    /// Stops it; returns how many messages it published.
    async fn finish(self) -> u64 {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the flow stops")
            .expect("the flow ran")
    }
}

/// The seam test: a subscriber reads live, disconnects for `gap` messages of a 2,000 msg/s
/// flow, and comes back with `since` (alternating between `urls`), `rounds` times; it must
/// receive every message exactly once, in order.
async fn reconnects_lose_nothing(urls: [String; 2], publish_to: String, rounds: u64, gap: u64) {
    let channel = "h:seam";
    let mut c = Client::connect(&urls[0]).await;
    let first = subscribe(&mut c, channel, None).await;
    assert_eq!(first.reply["type"], "subscribed", "{}", first.reply);
    assert_eq!(first.reply["offset"], 0, "a fresh channel: {}", first.reply);
    assert!(first.reply.get("recovered").is_none(), "{}", first.reply);
    let mut seen = Seen::at(&first.reply);
    let mut flow = Flow::start(publish_to, channel, 2);
    let mut recovered = 0;
    for round in 0..rounds {
        seen.read_until(&mut c, |s| s.received >= (round + 1) * 100 + recovered)
            .await;
        let at = *flow.sent.borrow();
        drop(c);
        flow.sent_at_least(at + gap).await;
        c = Client::connect(&urls[((round + 1) % 2) as usize]).await;
        let back = subscribe(&mut c, channel, Some(seen.since())).await;
        assert_eq!(
            back.reply["recovered"], true,
            "round {round}: {}",
            back.reply
        );
        for m in &back.recovered {
            seen.take(m);
        }
        assert_eq!(
            (back.reply["offset"].as_u64(), back.reply["epoch"].as_str()),
            (Some(seen.last), Some(seen.epoch.as_str())),
            "round {round}: the reply continues where the recovered messages end"
        );
        assert!(
            !back.recovered.is_empty(),
            "round {round}: a {gap}-message gap was recovered"
        );
        recovered += back.recovered.len() as u64;
    }
    let total = flow.finish().await;
    seen.read_until(&mut c, |s| s.last == total).await;
    assert_eq!(seen.last, total);
}

#[tokio::test]
async fn the_embedded_broker_recovers_across_reconnects() {
    let gw = TestGateway::start(HISTORY).await;
    let url = gw.url();
    reconnects_lose_nothing([url.clone(), url.clone()], url, 5, 1000).await;
}

#[tokio::test]
async fn two_nodes_recover_a_2s_disconnect_at_2000_msgs_20_times() {
    let redis = RedisServer::start().await;
    let a = TestGateway::start_ready(&redis_config(&redis.url())).await;
    let b = TestGateway::start_ready(&redis_config(&redis.url())).await;
    // 4,000 messages at 2,000 msg/s: disconnected for 2 s.
    reconnects_lose_nothing([b.url(), a.url()], a.url(), 20, 4000).await;
}

/// A first subscribe to a channel that already holds messages starts at its end (the read
/// of the position alone asks Redis for no entries: Redis 7.0 answers that with nil).
#[tokio::test]
async fn a_new_subscriber_starts_at_the_end_of_what_history_holds() {
    let redis = RedisServer::start().await;
    let redis_gw = TestGateway::start_ready(&redis_config(&redis.url())).await;
    let embedded = TestGateway::start(HISTORY).await;
    for gw in [&redis_gw, &embedded] {
        let mut publisher = gw.client().await;
        for n in 1..=3 {
            let reply = publish(&mut publisher, "h:held", json!({"n": n})).await;
            assert_eq!(reply["type"], "published", "{reply}");
        }
        let mut c = gw.client().await;
        let s = subscribe(&mut c, "h:held", None).await;
        assert!(s.recovered.is_empty());
        assert_eq!(s.reply["type"], "subscribed", "{}", s.reply);
        assert_eq!(s.reply["offset"], 3, "{}", s.reply);
        let reply = publish(&mut publisher, "h:held", json!({"n": 4})).await;
        assert_eq!(reply["type"], "published", "{reply}");
        let m = c.recv().await;
        assert_eq!(
            (m["data"]["n"].as_u64(), m["offset"].as_u64()),
            (Some(4), Some(4)),
            "{m}"
        );
    }
}

/// A deliver hook that fails on a live message of a channel with history costs its
/// subscribers nothing: they get it from history (its hook run again), in order, once. One
/// that keeps failing closes the connection (4001) for the client to recover, and the
/// recovery is refused while it fails, rather than skipped past.
#[tokio::test]
async fn a_failed_deliver_hook_is_caught_up_from_history() {
    let redis = RedisServer::start().await;
    let plugins =
        support::with_plugins("[[plugins.bindings]]\npattern = \"h:*\"\nplugin = \"flaky\"\n");
    let on_redis =
        TestGateway::start_ready(&format!("{}{plugins}", redis_config(&redis.url()))).await;
    let embedded = TestGateway::start(&format!("{HISTORY}{plugins}")).await;
    for gw in [&on_redis, &embedded] {
        let mut sub = gw.client().await;
        let s = subscribe(&mut sub, "h:flaky", None).await;
        assert_eq!(s.reply["type"], "subscribed", "{}", s.reply);
        let (start, epoch) = (
            s.reply["offset"].as_u64().unwrap(),
            s.reply["epoch"].clone(),
        );
        let mut publisher = gw.client().await;
        // `flaky` refuses to publish multiples of 5, and fails delivering 3 and 7 once.
        let sent = [1u64, 2, 3, 4, 6, 7, 8, 9];
        for (i, n) in sent.into_iter().enumerate() {
            let data = match n {
                3 | 7 => json!({"n": n, "once": true}),
                _ => json!({"n": n}),
            };
            let reply = publish(&mut publisher, "h:flaky", data).await;
            assert_eq!(reply["type"], "published", "{reply}");
            let m = sub.recv().await;
            assert_eq!(m["data"]["n"], n, "{m}");
            assert_eq!(m["offset"].as_u64(), Some(start + i as u64 + 1), "{m}");
        }
        let reply = publish(&mut publisher, "h:flaky", json!({"n": 11, "always": true})).await;
        assert_eq!(reply["type"], "published", "{reply}");
        match sub.ended().await {
            Ended::Closed(code, reason) => {
                assert_eq!(
                    (code, reason.as_str()),
                    (4001, "fell behind: reconnect and recover")
                )
            }
            other => panic!("expected a close, got {other:?}"),
        }
        let mut back = gw.client().await;
        let since = json!({"offset": start + sent.len() as u64, "epoch": epoch});
        let s = subscribe(&mut back, "h:flaky", Some(since)).await;
        assert_eq!(s.reply["type"], "error", "{}", s.reply);
        assert_eq!(s.reply["code"], "unavailable", "{}", s.reply);
        assert!(
            s.reply["message"]
                .as_str()
                .unwrap()
                .contains("deliver plugin"),
            "{}",
            s.reply
        );
    }
}

async fn publish(c: &mut Client, channel: &str, data: Value) -> Value {
    c.ask(json!({"type": "publish", "channel": channel, "data": data}))
        .await
}

#[tokio::test]
async fn a_drained_node_s_clients_recover_on_the_other() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, redis_config(&redis.url())).unwrap();
    let (_a_child, a_addr) = support::spawn_gateway(Some(&path)).await;
    let (b_child, b_addr) = support::spawn_gateway(Some(&path)).await;
    for addr in [&a_addr, &b_addr] {
        let addr = addr.parse().unwrap();
        eventually("the node to be ready", async || {
            support::http_get(addr, "/readyz").await.0 == 200
        })
        .await;
    }
    let (a, b) = (format!("ws://{a_addr}/ws"), format!("ws://{b_addr}/ws"));
    let channel = "h:seam";
    let mut c = Client::connect(&b).await;
    let mut seen = Seen::at(&subscribe(&mut c, channel, None).await.reply);
    let mut flow = Flow::start(a.clone(), channel, 2);
    seen.read_until(&mut c, |s| s.received >= 200).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &b_child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // What was delivered before the drain's close frame counts; then the client moves.
    let ended = loop {
        match c.next_event().await {
            Ok(m) => seen.take(&m),
            Err(ended) => break ended,
        }
    };
    assert!(matches!(ended, Ended::Closed(1001, _)), "{ended:?}");
    let at = *flow.sent.borrow();
    flow.sent_at_least(at + 1000).await;
    let mut c = Client::connect(&a).await;
    let back = subscribe(&mut c, channel, Some(seen.since())).await;
    assert_eq!(back.reply["recovered"], true, "{}", back.reply);
    assert!(!back.recovered.is_empty());
    for m in &back.recovered {
        seen.take(m);
    }
    let total = flow.finish().await;
    seen.read_until(&mut c, |s| s.last == total).await;
    drop(b_child);
}

#[tokio::test]
async fn a_redis_restart_keeps_history_with_persistence_and_a_flush_changes_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let mut redis = RedisServer::start_with(|_| {
        [
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &data_dir,
        ]
        .map(str::to_owned)
        .to_vec()
    })
    .await;
    let gw = TestGateway::start_ready(&redis_config(&redis.url())).await;
    let mut publisher = gw.client().await;
    let mut c = gw.client().await;
    let start = subscribe(&mut c, "h:r", None).await.reply;
    for i in 0..5 {
        publish(&mut publisher, "h:r", json!({"i": i})).await;
    }
    let mut seen = Seen::at(&start);
    seen.read_until(&mut c, |s| s.last == 5).await;
    drop(c);
    redis.restart().await;
    let node = gw.node.clone();
    eventually("the node to reconnect", async || node.is_ready()).await;
    let mut i = 5;
    while i < 10 {
        // The publishing connection may meet the old socket once before it reconnects.
        let reply = publish(&mut publisher, "h:r", json!({"i": i})).await;
        if reply["type"] == "published" {
            assert_eq!(reply["offset"], i + 1, "{reply}");
            i += 1;
        } else {
            assert_eq!(reply["code"], "unavailable", "{reply}");
        }
    }
    let mut c = gw.client().await;
    let back = subscribe(&mut c, "h:r", Some(seen.since())).await;
    assert_eq!(back.reply["recovered"], true, "{}", back.reply);
    for m in &back.recovered {
        seen.take(m);
    }
    assert_eq!(seen.last, 10);
    // A flushed Redis lost the history: a new epoch, and the old position does not recover.
    let _: () = redis.cmd(&redis::cmd("FLUSHALL")).await;
    let reply = publish(&mut publisher, "h:r", json!({"i": 0})).await;
    assert_eq!(reply["offset"], 1, "{reply}");
    assert_ne!(reply["epoch"], seen.epoch.as_str(), "{reply}");
    let mut c = gw.client().await;
    let lost = subscribe(&mut c, "h:r", Some(seen.since())).await;
    assert!(lost.recovered.is_empty());
    assert_eq!(lost.reply["recovered"], false, "{}", lost.reply);
    assert_eq!(
        (&lost.reply["offset"], &lost.reply["epoch"]),
        (&reply["offset"], &reply["epoch"]),
        "told the channel's position: {}",
        lost.reply
    );
}

/// Trimmed and expired history is reported as lost, never silently skipped.
async fn trimmed_or_expired_is_not_recovered(gw: &TestGateway) {
    let mut c = gw.client().await;
    // Redis trims approximately (whole stream nodes of 100 entries): publish well past that.
    let mut last = Value::Null;
    for i in 0..300 {
        last = publish(&mut c, "t:a", json!({"i": i})).await;
    }
    let epoch = last["epoch"].clone();
    let trimmed = subscribe(&mut c, "t:a", Some(json!({"offset": 2, "epoch": epoch}))).await;
    assert!(trimmed.recovered.is_empty());
    assert_eq!(trimmed.reply["recovered"], false, "{}", trimmed.reply);
    assert_eq!(trimmed.reply["offset"], 300);
    let held = subscribe(&mut c, "t:a", Some(json!({"offset": 297, "epoch": epoch}))).await;
    assert_eq!(held.reply["recovered"], true, "{}", held.reply);
    let offsets: Vec<u64> = held
        .recovered
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [298, 299, 300]);
    // Expiry: one second after the last publish the history is gone, and a new epoch starts.
    let first = publish(&mut c, "x:a", json!(1)).await;
    eventually("the history to expire", async || {
        let h = c.ask(json!({"type": "history", "channel": "x:a"})).await;
        h["epoch"] != first["epoch"]
    })
    .await;
    let expired = subscribe(
        &mut c,
        "x:a",
        Some(json!({"offset": 1, "epoch": first["epoch"]})),
    )
    .await;
    assert_eq!(expired.reply["recovered"], false, "{}", expired.reply);
    assert_eq!(expired.reply["offset"], 0);
}

const SHORT: &str = "[[namespaces]]\npattern = \"t:*\"\nhistory_size = 5\n\
                     [[namespaces]]\npattern = \"x:*\"\nhistory_size = 10\nhistory_ttl_secs = 1\n";

#[tokio::test]
async fn embedded_trimmed_or_expired_history_is_reported_lost() {
    let gw = TestGateway::start(SHORT).await;
    trimmed_or_expired_is_not_recovered(&gw).await;
}

#[tokio::test]
async fn redis_trimmed_or_expired_history_is_reported_lost() {
    let redis = RedisServer::start().await;
    let gw = TestGateway::start_ready(&format!("[broker]\nredis_url = {:?}\n{SHORT}", redis.url()))
        .await;
    trimmed_or_expired_is_not_recovered(&gw).await;
}

#[tokio::test]
async fn a_cluster_recovers_across_a_master_restart() {
    let mut cluster = RedisCluster::start_persistent(3).await;
    let config = format!("[broker]\nredis_cluster = {:?}\n{HISTORY}", cluster.seeds());
    let gw = TestGateway::start_ready(&config).await;
    let channel = "h:cluster";
    let mut publisher = gw.client().await;
    let mut c = gw.client().await;
    let mut seen = Seen::at(&subscribe(&mut c, channel, None).await.reply);
    for i in 0..20 {
        publish(&mut publisher, channel, json!({"i": i})).await;
    }
    seen.read_until(&mut c, |s| s.last == 20).await;
    drop(c);
    for i in 20..40 {
        publish(&mut publisher, channel, json!({"i": i})).await;
    }
    // The master holding the channel's keys and its shard channel restarts from its files.
    let prefix = &gw.node.config.broker.prefix;
    let owner = cluster.owner(&format!("{prefix}{channel}")).await;
    cluster.masters[owner].restart().await;
    cluster.wait_ok().await;
    let node = gw.node.clone();
    eventually("the node to be ready again", async || node.is_ready()).await;
    let mut c = gw.client().await;
    let back = eventually_subscribed(&mut c, channel, seen.since()).await;
    assert_eq!(back.reply["recovered"], true, "{}", back.reply);
    for m in &back.recovered {
        seen.take(m);
    }
    assert_eq!(seen.last, 40);
    let mut i = 40;
    while i < 45 {
        let reply = publish(&mut publisher, channel, json!({"i": i})).await;
        if reply["type"] == "published" {
            i += 1;
        }
    }
    seen.read_until(&mut c, |s| s.last == 45).await;
}

/// Subscribes with `since`, retrying while the broker answers `unavailable` (a cluster that
/// just recovered may refuse a command or two).
async fn eventually_subscribed(c: &mut Client, channel: &str, since: Value) -> Subscribed {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let answer = subscribe(c, channel, Some(since.clone())).await;
        if answer.reply["type"] == "subscribed" || tokio::time::Instant::now() > deadline {
            return answer;
        }
        assert_eq!(answer.reply["code"], "unavailable", "{}", answer.reply);
        assert!(answer.recovered.is_empty(), "nothing half-delivered");
    }
}

#[tokio::test]
async fn bad_history_requests_get_clear_answers() {
    let gw = TestGateway::start(&format!(
        "{HISTORY}[api]\nkeys = [\"k-0123456789abcdef\"]\n"
    ))
    .await;
    let mut c = gw.client().await;
    let published = publish(&mut c, "h:b", json!({"i": 0})).await;
    assert_eq!(published["type"], "published", "{published}");
    assert_eq!(published["offset"], 1);
    let epoch = published["epoch"].as_str().unwrap().to_owned();
    for since in [
        json!(5),
        json!({"offset": -1, "epoch": epoch}),
        json!({"offset": 1}),
        json!({"offset": 1, "epoch": 7}),
    ] {
        let r = c
            .ask(json!({"type": "subscribe", "channel": "h:b", "since": since}))
            .await;
        assert_eq!(r["code"], "invalid_field", "since {since}: {r}");
    }
    let r = c
        .ask(json!({"type": "history", "channel": "h:b", "limit": "x"}))
        .await;
    assert_eq!(r["code"], "invalid_field", "{r}");
    // Ahead of the channel: not recovered, told the position, at once.
    let ahead = subscribe(&mut c, "h:b", Some(json!({"offset": 99, "epoch": epoch}))).await;
    assert_eq!(ahead.reply["recovered"], false, "{}", ahead.reply);
    assert_eq!(ahead.reply["offset"], 1);
    // A limit above the maximum is clamped, and the reply says so.
    let h = c
        .ask(json!({"type": "history", "channel": "h:b", "limit": 5000}))
        .await;
    assert_eq!(
        (&h["limit"], &h["clamped"]),
        (&json!(1000), &json!(true)),
        "{h}"
    );
    assert_eq!(
        h["messages"],
        json!([{"offset": 1, "data": {"i": 0}}]),
        "{h}"
    );
    // A channel without history.
    let r = c.ask(json!({"type": "history", "channel": "plain"})).await;
    assert_eq!(r["code"], "no_history", "{r}");
    let r = c
        .ask(json!({"type": "subscribe", "channel": "plain", "since": {"offset": 1, "epoch": "e"}}))
        .await;
    assert_eq!(
        r,
        json!({"type": "subscribed", "channel": "plain", "id": "q", "recovered": false})
    );
    // The HTTP API: the same answers, behind the key.
    let key = Some("k-0123456789abcdef");
    let (status, body) = support::http(gw.addr, "GET", "/api/history/h:b?limit=5", key, "").await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["messages"],
        json!([{"offset": 1, "data": {"i": 0}}]),
        "{body}"
    );
    assert_eq!(
        (&body["offset"], body["epoch"].as_str()),
        (&json!(1), Some(epoch.as_str()))
    );
    let since = format!("/api/history/h:b?since_offset=0&since_epoch={epoch}");
    let (status, body) = support::http(gw.addr, "GET", &since, key, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"recovered\":true"), "{body}");
    let (status, body) = support::http(gw.addr, "GET", "/api/history/plain", key, "").await;
    assert_eq!((status, body.contains("no_history")), (404, true), "{body}");
    let (status, _) =
        support::http(gw.addr, "GET", "/api/history/h:b?since_offset=1", key, "").await;
    assert_eq!(status, 400);
    let (status, _) = support::http(gw.addr, "GET", "/api/history/h:b", None, "").await;
    assert_eq!(status, 401);
    let (status, body) = support::http(
        gw.addr,
        "POST",
        "/api/publish",
        key,
        r#"{"channel":"h:b","data":2}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["offset"], 2, "{body}");
}

#[tokio::test]
async fn redis_down_during_a_recovering_subscribe_is_unavailable() {
    let mut redis = RedisServer::start().await;
    let gw = TestGateway::start_ready(&redis_config(&redis.url())).await;
    let mut c = gw.client().await;
    let published = publish(&mut c, "h:d", json!({"i": 0})).await;
    let since = json!({"offset": 0, "epoch": published["epoch"]});
    redis.kill().await;
    let answer = subscribe(&mut c, "h:d", Some(since)).await;
    assert!(answer.recovered.is_empty(), "nothing half-delivered");
    assert_eq!(answer.reply["code"], "unavailable", "{}", answer.reply);
}

/// A tenant's subscriber that comes and goes, recovering each time.
struct Roamer {
    client: Option<Client>,
    user: String,
    tenant: usize,
    /// Every message received: offset and data.
    got: Vec<(u64, Value)>,
    epoch: String,
}

impl Roamer {
    /// Reads `n` more messages.
    async fn read(&mut self, n: usize) {
        let client = self.client.as_mut().expect("connected");
        for _ in 0..n {
            let m = client.recv().await;
            assert_eq!(m["type"], "message", "{m}");
            self.got
                .push((m["offset"].as_u64().unwrap(), m["data"].clone()));
        }
    }

    fn last(&self) -> u64 {
        self.got.last().map_or(0, |(offset, _)| *offset)
    }

    /// Reconnects and subscribes from the last message received, which must recover; returns
    /// the subscribe's answer (the recovered messages are recorded).
    async fn come_back(&mut self, gw: &TestGateway, channel: &str, tenant: &str) -> Subscribed {
        let mut client = gw.client_as(&self.user, Some(tenant)).await;
        let since = json!({"offset": self.last(), "epoch": self.epoch});
        let back = subscribe(&mut client, channel, Some(since)).await;
        assert_eq!(back.reply["recovered"], true, "{}", back.reply);
        for m in &back.recovered {
            self.got
                .push((m["offset"].as_u64().unwrap(), m["data"].clone()));
        }
        self.client = Some(client);
        back
    }
}

#[tokio::test]
async fn recovery_never_crosses_a_tenant_filter() {
    let gw = TestGateway::start(&format!(
        "[auth]\nhs256_secret = {:?}\naudience = \"switchyard\"\n{}\
         [[namespaces]]\npattern = \"news:*\"\nhistory_size = 10000\n",
        support::SECRET,
        support::with_plugins(
            "[[plugins.bindings]]\npattern = \"news:*\"\nplugin = \"tenant-guard\"\n"
        )
    ))
    .await;
    let tenants = ["acme", "beta", "cora"];
    let channel = "news:h";
    let mut roamers = Vec::new();
    for (i, t) in tenants.iter().cycle().take(9).enumerate() {
        let user = format!("u{i}");
        let mut client = gw.client_as(&user, Some(t)).await;
        let start = subscribe(&mut client, channel, None).await.reply;
        assert_eq!(start["offset"], 0, "{start}");
        roamers.push(Roamer {
            client: Some(client),
            user,
            tenant: i % tenants.len(),
            got: Vec::new(),
            epoch: start["epoch"].as_str().unwrap().to_owned(),
        });
    }
    // The first three never leave: the live view each recovering subscriber must match.
    let mut publisher = gw.client().await;
    let mut expected: Vec<Vec<(u64, Value)>> = vec![Vec::new(); tenants.len()];
    let mut rng = Lcg(0xc0ffee);
    let mut recovered = 0;
    for step in 0..400u64 {
        let data = match rng.below(3) {
            0 => json!({"n": step}),
            1 => json!({"tenant": tenants[rng.below(tenants.len())], "n": step}),
            _ => {
                let mut views = serde_json::Map::new();
                for t in tenants {
                    if rng.below(2) == 0 {
                        views.insert(t.to_owned(), json!({"n": step, "for": t}));
                    }
                }
                json!({"views": views, "secret": "never delivered"})
            }
        };
        let reply = publish(&mut publisher, channel, data.clone()).await;
        let offset = reply["offset"].as_u64().expect("a position");
        for (t, name) in tenants.iter().enumerate() {
            let view = if let Some(views) = data.get("views") {
                views.get(*name).cloned()
            } else if data.get("tenant").is_some_and(|x| x != name) {
                None
            } else {
                Some(data.clone())
            };
            if let Some(view) = view {
                expected[t].push((offset, view));
            }
        }
        if rng.below(8) != 0 {
            continue;
        }
        let r = 3 + rng.below(roamers.len() - 3);
        let roamer = &mut roamers[r];
        let due = expected[roamer.tenant].len() - roamer.got.len();
        if roamer.client.is_some() {
            // Reads part of what is due, then disconnects.
            roamer.read(rng.below(due + 1)).await;
            roamer.client = None;
        } else {
            let back = roamer.come_back(&gw, channel, tenants[roamer.tenant]).await;
            recovered += back.recovered.len();
            assert_eq!(back.reply["offset"], offset, "{}", back.reply);
        }
    }
    assert!(recovered > 0, "the run recovered messages");
    for roamer in &mut roamers {
        if roamer.client.is_none() {
            roamer.come_back(&gw, channel, tenants[roamer.tenant]).await;
        }
        let due = expected[roamer.tenant].len() - roamer.got.len();
        roamer.read(due).await;
        assert_eq!(
            roamer.got, expected[roamer.tenant],
            "{} of {}: every message its filter lets through, as rewritten, nothing else",
            roamer.user, tenants[roamer.tenant]
        );
    }
}
