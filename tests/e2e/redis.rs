//! Scale-out through Redis: several gateway nodes, one private redis-server per test.

use std::time::Duration;

use serde_json::json;

use crate::redis_support::RedisServer;
use crate::support::{Client, TestGateway, eventually, http, http_get};

fn node_config(redis: &RedisServer, prefix: &str) -> String {
    format!(
        "[broker]\nredis_url = \"{}\"\nprefix = \"{prefix}\"\n",
        redis.url()
    )
}

async fn nodes(redis: &RedisServer, n: usize) -> Vec<TestGateway> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TestGateway::start_ready(&node_config(redis, "sy:")).await);
    }
    out
}

#[tokio::test]
async fn messages_cross_nodes_in_both_directions_in_order() {
    let redis = RedisServer::start().await;
    let gws = nodes(&redis, 3).await;
    let mut subs = Vec::new();
    for gw in &gws {
        let mut c = gw.client().await;
        c.subscribe("x").await;
        subs.push(c);
    }
    // Every direction: a publisher on each node, 50 messages each, checked per publisher.
    for (from, gw) in gws.iter().enumerate() {
        let mut publisher = gw.client().await;
        for i in 0..50u64 {
            publisher.publish("x", json!({"from": from, "i": i})).await;
        }
        publisher
            .publish_acked("x", json!({"from": from, "i": 50}), 1)
            .await;
        for sub in &mut subs {
            for i in 0..=50u64 {
                let m = sub.recv().await;
                assert_eq!(
                    (m["data"]["from"].as_u64(), m["data"]["i"].as_u64()),
                    (Some(from as u64), Some(i))
                );
            }
        }
    }
    assert_eq!(
        redis.numsub("sy:x").await,
        3,
        "one redis subscription per node"
    );
}

#[tokio::test]
async fn redis_subscription_released_with_last_local_subscriber() {
    let redis = RedisServer::start().await;
    let gws = nodes(&redis, 1).await;
    let mut a = gws[0].client().await;
    let mut b = gws[0].client().await;
    a.subscribe("rc").await;
    b.subscribe("rc").await;
    assert_eq!(redis.numsub("sy:rc").await, 1);
    a.send(json!({"type": "unsubscribe", "channel": "rc", "id": 1}))
        .await;
    assert_eq!(a.recv().await["type"], "unsubscribed");
    assert_eq!(redis.numsub("sy:rc").await, 1, "b still needs it");
    drop(b);
    eventually("NUMSUB to fall to 0", async || {
        redis.numsub("sy:rc").await == 0
    })
    .await;
}

#[tokio::test]
async fn external_publish_reaches_websocket_clients() {
    let redis = RedisServer::start().await;
    let gws = nodes(&redis, 1).await;
    let mut c = gws[0].client().await;
    c.subscribe("orders:1").await;
    let _: i64 = redis
        .cmd(
            redis::cmd("PUBLISH")
                .arg("sy:orders:1")
                .arg(r#"{"total": 12.5}"#),
        )
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "message", "channel": "orders:1", "data": {"total": 12.5}})
    );
    // Not JSON: delivered as a JSON string rather than breaking the frame.
    let _: i64 = redis
        .cmd(redis::cmd("PUBLISH").arg("sy:orders:1").arg("plain text"))
        .await;
    assert_eq!(c.recv().await["data"], "plain text");
    // A channel without the prefix is not ours.
    let _: i64 = redis
        .cmd(redis::cmd("PUBLISH").arg("orders:1").arg("1"))
        .await;
    assert_eq!(
        c.publish_own("orders:1", json!("marker"), 9).await["data"],
        "marker"
    );
}

#[tokio::test]
async fn survives_a_redis_crash_and_restart() {
    let mut redis = RedisServer::start().await;
    let gws = nodes(&redis, 2).await;
    let mut a = gws[0].client().await;
    let mut b = gws[1].client().await;
    a.subscribe("life").await;
    b.subscribe("life").await;
    b.subscribe("other").await;
    a.publish_acked("life", json!("before"), 1).await;
    assert_eq!(b.recv().await["data"], "before");
    assert_eq!(a.recv().await["data"], "before");

    redis.kill().await;
    for gw in &gws {
        let node = gw.node.clone();
        eventually("readiness to turn false", async || !node.is_ready()).await;
        assert_eq!(http_get(gw.addr, "/readyz").await.0, 503);
    }
    a.send(json!({"type": "publish", "channel": "life", "data": "during", "id": 2}))
        .await;
    let err = a.expect_error().await;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_u64()),
        (Some("unavailable"), Some(2))
    );

    // An outage longer than client libraries' default retry budgets.
    tokio::time::sleep(Duration::from_secs(10)).await;
    redis.restart().await;
    let back = std::time::Instant::now();
    for gw in &gws {
        let node = gw.node.clone();
        eventually("the node to reconnect", async || node.is_ready()).await;
    }
    // A figure for the notes, not an assertion: machines here are shared and noisy.
    eprintln!(
        "redis back -> both nodes resubscribed: {:?}",
        back.elapsed()
    );
    assert_eq!(redis.numsub("sy:life").await, 2, "both nodes resubscribed");
    assert_eq!(redis.numsub("sy:other").await, 1);
    // Same connections, no client action: messages flow again both ways.
    a.publish_acked("life", json!("after"), 3).await;
    assert_eq!(b.recv().await["data"], "after");
    assert_eq!(
        b.publish_own("other", json!("b-side"), 4).await["data"],
        "b-side"
    );
    assert_eq!(
        a.recv().await["data"],
        "after",
        "nothing from the outage was delivered twice"
    );
    assert_eq!(
        gws[0].node.connections.count() + gws[1].node.connections.count(),
        2
    );
}

#[tokio::test]
async fn a_killed_subscriber_connection_is_replaced_and_nothing_is_delivered_twice() {
    let redis = RedisServer::start().await;
    let gws = nodes(&redis, 2).await;
    let mut a = gws[0].client().await;
    let mut b = gws[1].client().await;
    a.subscribe("k").await;
    b.subscribe("k").await;
    assert_eq!(
        a.publish_own("k", json!("before"), 1).await["data"],
        "before"
    );
    assert_eq!(b.recv().await["data"], "before");

    // Redis drops both nodes' subscriber connections while itself staying up: the nodes learn
    // it from redis-rs's disconnection notice, not from a failing command.
    let killed: i64 = redis
        .cmd(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
        .await;
    assert_eq!(killed, 2, "one subscriber connection per node");
    eventually("the nodes to subscribe again", async || {
        redis.numsub("sy:k").await == 2
    })
    .await;

    assert_eq!(a.publish_own("k", json!("after"), 2).await["data"], "after");
    assert_eq!(b.recv().await["data"], "after");
    // A duplicate of "after" (from the dropped connection) would come before this.
    assert_eq!(
        b.publish_own("k", json!("marker"), 3).await["data"],
        "marker"
    );
    assert_eq!(a.recv().await["data"], "marker");
}

#[tokio::test]
async fn node_starts_while_redis_is_down_and_connects_later() {
    let mut redis = RedisServer::start().await;
    redis.kill().await;
    let gw = TestGateway::start(&node_config(&redis, "")).await;
    assert_eq!(http_get(gw.addr, "/readyz").await.0, 503);
    let mut c = gw.client().await;
    c.send(json!({"type": "subscribe", "channel": "s", "id": 1}))
        .await;
    assert_eq!(c.expect_error().await["code"], "unavailable");
    redis.restart().await;
    let node = gw.node.clone();
    eventually("the node to connect", async || node.is_ready()).await;
    c.subscribe("s").await;
    assert_eq!(c.publish_own("s", json!(1), 2).await["data"], 1);
    let _ = Client::connect(&gw.url()).await;
}

const KEY: &str = "backend-key-0123456789";

fn api_config(redis: &RedisServer, node: &str) -> String {
    format!(
        "{}[server]\nnode_id = \"{node}\"\n[api]\nkeys = [\"{KEY}\"]\n[presence]\nttl_secs = 3\n{}",
        node_config(redis, "sy:"),
        crate::plugins_auth()
    )
}

#[tokio::test]
async fn http_publish_with_api_keys() {
    let redis = RedisServer::start().await;
    let a = TestGateway::start_ready(&api_config(&redis, "a")).await;
    let b = TestGateway::start_ready(&api_config(&redis, "b")).await;
    let mut c = b.client().await;
    c.subscribe("feed").await;
    let body = r#"{"channel":"feed","data":{"from":"backend"}}"#;
    assert_eq!(
        http(a.addr, "POST", "/api/publish", Some(KEY), body).await,
        (200, r#"{"published":true}"#.into())
    );
    assert_eq!(c.recv().await["data"]["from"], "backend", "crossed nodes");
    assert_eq!(
        http(a.addr, "POST", "/api/publish", None, body).await.0,
        401
    );
    assert_eq!(
        http(
            a.addr,
            "POST",
            "/api/publish",
            Some("wrong-key-0123456789"),
            body
        )
        .await
        .0,
        401
    );
    let (status, err) = http(
        a.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        r#"{"channel":"bad channel","data":1}"#,
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert!(err.contains("invalid_channel"), "{err}");
    assert_eq!(
        http(a.addr, "POST", "/api/publish", Some(KEY), "{oops")
            .await
            .0,
        400
    );
}

async fn presence_of(gw: &TestGateway, path: &str) -> serde_json::Value {
    let (status, body) = http(gw.addr, "GET", path, Some(KEY), "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn presence_across_nodes_and_after_a_crash() {
    let redis = RedisServer::start().await;
    let a = TestGateway::start_ready(&api_config(&redis, "a")).await;
    let b = TestGateway::start_ready(&api_config(&redis, "b")).await;
    let mut alice_a = a.client_as("alice", None).await;
    let mut alice_b = b.client_as("alice", None).await;
    alice_a.subscribe("room").await;
    alice_b.subscribe("room").await;
    let mut anon = b.client().await;
    anon.subscribe("room").await;

    let v = presence_of(&a, "/api/presence/users/alice").await;
    assert_eq!(v["online"], true);
    let mut nodes: Vec<&str> = v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["node"].as_str().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["a", "b"]);
    let v = presence_of(&b, "/api/presence/channels/room").await;
    assert_eq!(v["count"], 3, "{v}");
    assert_eq!(
        presence_of(&a, "/api/presence/users/nobody").await["online"],
        false
    );
    assert_eq!(
        http(a.addr, "GET", "/api/presence/users/alice", None, "")
            .await
            .0,
        401
    );

    // Leaving a channel and disconnecting are reflected.
    anon.send(json!({"type": "unsubscribe", "channel": "room", "id": 1}))
        .await;
    anon.recv().await;
    drop(alice_b);
    eventually("presence to catch up", async || {
        let users = presence_of(&a, "/api/presence/users/alice").await;
        let room = presence_of(&a, "/api/presence/channels/room").await;
        users["connections"].as_array().unwrap().len() == 1 && room["count"] == 1
    })
    .await;

    // Graceful shutdown removes the node's entries at once.
    a.shutdown().await;
    let v = presence_of(&b, "/api/presence/users/alice").await;
    assert_eq!(v["online"], false, "{v}");
    drop(alice_a);

    // A node killed with SIGKILL: its entries go after the TTL (3 s here).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, api_config(&redis, "c")).unwrap();
    let (mut child, addr) = crate::support::spawn_gateway(Some(&config)).await;
    let mut bob = Client::connect(&format!(
        "ws://{addr}/ws?token={}",
        crate::support::token("bob", None)
    ))
    .await;
    bob.subscribe("room").await;
    eventually("bob to show up", async || {
        presence_of(&b, "/api/presence/users/bob").await["online"] == true
    })
    .await;
    child.kill().await.unwrap();
    let killed = std::time::Instant::now();
    // The user's and the channel's entries are separate keys: each expires on its own.
    eventually("a dead node's entries to expire", async || {
        presence_of(&b, "/api/presence/users/bob").await["online"] == false
            && presence_of(&b, "/api/presence/channels/room").await["count"] == 0
    })
    .await;
    eprintln!(
        "dead node's presence expired after {:?} (ttl 3 s)",
        killed.elapsed()
    );
}

#[tokio::test]
async fn pipelined_publishes_keep_order_and_replies_keep_request_order() {
    let redis = RedisServer::start().await;
    let gws = nodes(&redis, 2).await;
    let mut sub = gws[1].client().await;
    sub.subscribe("p").await;
    let mut publisher = gws[0].client().await;
    // Everything is sent before any reply is read: the session has many publishes in flight.
    for i in 1..=100u64 {
        publisher
            .send(json!({"type": "publish", "channel": "p", "data": {"i": i}, "id": i}))
            .await;
    }
    publisher
        .send(json!({"type": "publish", "channel": "bad channel", "data": 0, "id": 101}))
        .await;
    publisher
        .send(json!({"type": "subscribe", "channel": "q", "id": 102}))
        .await;
    publisher
        .send(json!({"type": "publish", "channel": "p", "data": {"i": 103}, "id": 103}))
        .await;
    for i in 1..=100u64 {
        assert_eq!(
            publisher.recv().await,
            json!({"type": "published", "id": i})
        );
    }
    let e = publisher.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_u64()),
        (Some("error"), Some(101)),
        "{e}"
    );
    assert_eq!(
        publisher.recv().await,
        json!({"type": "subscribed", "channel": "q", "id": 102})
    );
    assert_eq!(
        publisher.recv().await,
        json!({"type": "published", "id": 103})
    );
    for i in (1..=100u64).chain([103]) {
        let m = sub.recv().await;
        assert_eq!(m["data"]["i"], i, "{m}");
    }
}

#[tokio::test]
async fn publishes_sent_just_before_a_close_are_not_lost() {
    let redis = RedisServer::start().await;
    let gws = nodes(&redis, 2).await;
    let mut sub = gws[1].client().await;
    sub.subscribe("p").await;
    let mut publisher = gws[0].client().await;
    for i in 0..50u64 {
        publisher.publish("p", json!({"i": i})).await;
    }
    publisher.ws.close(None).await.unwrap();
    for i in 0..50u64 {
        assert_eq!(sub.recv().await["data"]["i"], i);
    }
}

#[tokio::test]
async fn subscribe_churn_leaves_exactly_the_subscriptions_and_presence_still_needed() {
    // Clients subscribing and unsubscribing the same few channels at once, plus a fresh channel
    // per cycle: the node applies queued SUBSCRIBE/UNSUBSCRIBE requests (and presence updates)
    // in batches, which must keep each channel's own order.
    let redis = RedisServer::start().await;
    let gw = TestGateway::start_ready(&api_config(&redis, "a")).await;
    let mut clients = Vec::new();
    for _ in 0..24 {
        clients.push(gw.client().await);
    }
    let churn = clients.iter_mut().enumerate().map(|(i, c)| async move {
        for k in 0..15u64 {
            for channel in [
                format!("shared{}", (i as u64 + k) % 3),
                format!("fresh{i}-{k}"),
            ] {
                c.subscribe(&channel).await;
                c.send(json!({"type": "unsubscribe", "channel": channel, "id": k + 1}))
                    .await;
                assert_eq!(c.recv().await["type"], "unsubscribed");
            }
        }
        c.subscribe(&format!("shared{}", i % 3)).await;
    });
    futures_util::future::join_all(churn).await;

    for n in 0..3 {
        assert_eq!(redis.numsub(&format!("sy:shared{n}")).await, 1, "shared{n}");
    }
    eventually(
        "the fresh channels' redis subscriptions to go",
        async || {
            let left: Vec<String> = redis
                .cmd(redis::cmd("PUBSUB").arg("CHANNELS").arg("sy:fresh*"))
                .await;
            left.is_empty()
        },
    )
    .await;
    eventually("presence to match the subscriptions left", async || {
        let mut counts = Vec::new();
        for n in 0..3 {
            counts.push(
                presence_of(&gw, &format!("/api/presence/channels/shared{n}")).await["count"]
                    .clone(),
            );
        }
        counts == [json!(8), json!(8), json!(8)]
            && presence_of(&gw, "/api/presence/channels/fresh0-0").await["count"] == 0
    })
    .await;
    // And each one still receives its channel.
    for n in 0..3 {
        let _: i64 = redis
            .cmd(
                redis::cmd("PUBLISH")
                    .arg(format!("sy:shared{n}"))
                    .arg(n.to_string()),
            )
            .await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.recv().await["data"], json!(i % 3), "client {i}");
    }
}
