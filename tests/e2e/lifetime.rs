//! Connection lifetime: token expiry, the warning before it, and refresh over the connection.
//!
//! Tokens here live a few seconds: the tests wait for the gateway's own frames (`expiring`,
//! the 4003 close), never for a fixed time.

use serde_json::{Value, json};

use crate::redis_support::RedisServer;
use crate::support::{Client, Ended, TestGateway, eventually, http, sign, upgrade_status};

/// Auth that closes right at `exp` and warns one second before it.
fn config() -> String {
    format!(
        "{}leeway_secs = 0\nexpiry_warning_secs = 1\n",
        crate::plugins_auth()
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `user` (tenant `acme`) that expires `secs` from now; its `exp`.
fn token_for(user: &str, secs: u64) -> (String, u64) {
    let exp = unix_now() + secs;
    let claims = json!({"sub": user, "tenant": "acme", "aud": "switchyard", "exp": exp});
    (sign(&claims), exp)
}

async fn connect(gw: &TestGateway, token: &str) -> Client {
    Client::connect(&format!("{}?token={token}", gw.url())).await
}

/// The next frame, which must be the `expiring` warning for `exp`.
async fn expect_warning(c: &mut Client, exp: u64) {
    let v = c.recv().await;
    assert_eq!(v["type"], "expiring", "{v}");
    assert_eq!(v["expires_at"], exp, "{v}");
    assert!(v["in_secs"].as_u64().is_some_and(|s| s <= 1), "{v}");
}

/// How the connection ends, which must be the 4003 close, not before `exp`.
async fn expect_expired(c: &mut Client, exp: u64) {
    match c.ended().await {
        Ended::Closed(code, reason) => {
            assert_eq!((code, reason.as_str()), (4003, "token expired"));
        }
        other => panic!("expected close 4003, got {other:?}"),
    }
    assert!(unix_now() >= exp, "closed before the token expired");
}

#[tokio::test]
async fn a_connection_is_warned_then_closed_when_its_token_expires() {
    let gw = TestGateway::start(&config()).await;
    let (token, exp) = token_for("ann", 2);
    let mut c = connect(&gw, &token).await;
    c.subscribe("news").await;
    expect_warning(&mut c, exp).await;
    expect_expired(&mut c, exp).await;
    // Anonymous connections have no token and do not expire: one opened beside it still works.
    let mut anon = gw.client().await;
    anon.subscribe("news").await;
}

#[tokio::test]
async fn a_refresh_moves_the_deadline() {
    let gw = TestGateway::start(&config()).await;
    let (first, first_exp) = token_for("ann", 2);
    let mut c = connect(&gw, &first).await;
    let (second, second_exp) = token_for("ann", 4);
    c.send(json!({"type": "refresh", "token": second, "id": 7}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "refreshed", "id": 7, "expires_at": second_exp})
    );
    // Had the first deadline stood, the close would come before this warning.
    assert!(second_exp > first_exp);
    expect_warning(&mut c, second_exp).await;
    expect_expired(&mut c, second_exp).await;
}

#[tokio::test]
async fn a_refused_refresh_leaves_the_old_deadline() {
    let gw = TestGateway::start(&config()).await;
    let (token, exp) = token_for("ann", 2);
    let mut c = connect(&gw, &token).await;
    let refusals: [(Value, &str); 4] = [
        (json!(token_for("bob", 3600).0), "another user"),
        (json!("not.a.token"), "malformed"),
        (
            json!(sign(
                &json!({"sub": "ann", "tenant": "other", "aud": "switchyard", "exp": unix_now() + 3600})
            )),
            "another tenant",
        ),
        (
            json!(sign(
                &json!({"sub": "ann", "tenant": "acme", "aud": "switchyard", "exp": unix_now() - 60})
            )),
            "expired",
        ),
    ];
    for (i, (token, why)) in refusals.into_iter().enumerate() {
        c.send(json!({"type": "refresh", "token": token, "id": i}))
            .await;
        let e = c.expect_error().await;
        assert_eq!((&e["code"], &e["id"]), (&json!("unauthorized"), &json!(i)));
        assert!(e["message"].as_str().unwrap().contains(why), "{e}");
    }
    c.send(json!({"type": "refresh", "id": "x"})).await;
    assert_eq!(c.expect_error().await["code"], "invalid_field");
    expect_warning(&mut c, exp).await;
    expect_expired(&mut c, exp).await;
}

#[tokio::test]
async fn an_anonymous_connection_has_nothing_to_refresh() {
    let gw = TestGateway::start(&config()).await;
    let mut c = gw.client().await;
    let (token, _) = token_for("ann", 60);
    c.send(json!({"type": "refresh", "token": token})).await;
    let e = c.expect_error().await;
    assert_eq!(e["code"], "unauthorized", "{e}");
}

// ---- Server-side control through the backend API, across two nodes ----

const KEY: &str = "control-key-0123456789";

fn node_config(redis: &RedisServer, node: &str) -> String {
    format!(
        "[broker]\nredis_url = \"{}\"\nprefix = \"sy:\"\n[server]\nnode_id = \"{node}\"\n[api]\nkeys = [\"{KEY}\"]\n{}",
        redis.url(),
        crate::plugins_auth()
    )
}

async fn two_nodes(redis: &RedisServer) -> (TestGateway, TestGateway) {
    (
        TestGateway::start_ready(&node_config(redis, "a")).await,
        TestGateway::start_ready(&node_config(redis, "b")).await,
    )
}

/// `POST path` with the API key; the status and the JSON body.
async fn call(gw: &TestGateway, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = http(gw.addr, "POST", path, Some(KEY), body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Waits until presence lists `n` connections of `user`, so the API's counts are settled.
async fn online(gw: &TestGateway, user: &str, n: usize) {
    let path = format!("/api/presence/users/{user}");
    eventually("presence to list the connections", async || {
        let (_, body) = http(gw.addr, "GET", &path, Some(KEY), "").await;
        serde_json::from_str::<Value>(&body)
            .is_ok_and(|v| v["connections"].as_array().is_some_and(|c| c.len() == n))
    })
    .await;
}

/// The close code and reason that ended `c`.
async fn closed(c: &mut Client) -> (u16, String) {
    match c.ended().await {
        Ended::Closed(code, reason) => (code, reason),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn disconnect_by_api_on_one_node_closes_the_users_connections_on_both() {
    let redis = RedisServer::start().await;
    let (a, b) = two_nodes(&redis).await;
    let mut ann_a = a.client_as("ann", None).await;
    let mut ann_b = b.client_as("ann", None).await;
    let mut bob = b.client_as("bob", None).await;
    bob.subscribe("room").await;
    online(&a, "ann", 2).await;
    let (status, reply) = call(
        &a,
        "/api/disconnect",
        json!({"user": "ann", "reason": "account closed", "reconnect": false}),
    )
    .await;
    assert_eq!((status, reply), (200, json!({"connections": 2})));
    for c in [&mut ann_a, &mut ann_b] {
        assert_eq!(closed(c).await, (4006, "account closed".to_owned()));
    }
    // Another user's connection is untouched.
    assert_eq!(bob.publish_own("room", json!(1), 1).await["data"], 1);

    // One connection, by node and id (as presence lists them), with the default reason.
    let mut one = b.client_as("cy", None).await;
    let mut other = a.client_as("cy", None).await;
    online(&a, "cy", 2).await;
    let (_, body) = http(a.addr, "GET", "/api/presence/users/cy", Some(KEY), "").await;
    let listed: Value = serde_json::from_str(&body).unwrap();
    let on_b = listed["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["node"] == "b")
        .unwrap()
        .clone();
    let (status, reply) = call(
        &a,
        "/api/disconnect",
        json!({"user": "cy", "node": "b", "conn": on_b["conn"]}),
    )
    .await;
    assert_eq!((status, reply), (200, json!({"connections": 1})));
    assert_eq!(
        closed(&mut one).await,
        (4005, "disconnected by server".to_owned())
    );
    other.subscribe("still-here").await;
}

#[tokio::test]
async fn unsubscribe_and_subscribe_by_api_reach_connections_on_the_other_node() {
    let redis = RedisServer::start().await;
    let (a, b) = two_nodes(&redis).await;
    let mut ann = b.client_as("ann", None).await;
    ann.subscribe("news").await;
    online(&a, "ann", 1).await;
    let mut publisher = a.client().await;

    let (status, reply) = call(
        &a,
        "/api/subscribe",
        json!({"user": "ann", "channel": "alerts"}),
    )
    .await;
    assert_eq!((status, reply), (200, json!({"connections": 1})));
    assert_eq!(
        ann.recv().await,
        json!({"type": "subscribed", "channel": "alerts", "server": true})
    );
    publisher.publish_acked("alerts", json!("fire"), 1).await;
    assert_eq!(ann.recv().await["data"], "fire");

    eventually("presence to list the subscription", async || {
        let (_, body) = http(a.addr, "GET", "/api/presence/channels/news", Some(KEY), "").await;
        body.contains("\"ann\"")
    })
    .await;
    let (status, reply) = call(
        &a,
        "/api/unsubscribe",
        json!({"user": "ann", "channel": "news"}),
    )
    .await;
    assert_eq!((status, reply), (200, json!({"connections": 1})));
    assert_eq!(
        ann.recv().await,
        json!({"type": "unsubscribed", "channel": "news", "server": true})
    );
    // A message on the channel it left does not arrive; one on the channel it kept does.
    publisher.publish_acked("news", json!("old"), 2).await;
    publisher.publish_acked("alerts", json!("new"), 3).await;
    assert_eq!(ann.recv().await["data"], "new");

    // Unknown users are not an error: nobody was reached.
    let (status, reply) = call(
        &a,
        "/api/unsubscribe",
        json!({"user": "nobody", "channel": "news"}),
    )
    .await;
    assert_eq!((status, reply), (200, json!({"connections": 0})));
}

#[tokio::test]
async fn the_control_calls_refuse_bad_input() {
    let redis = RedisServer::start().await;
    let (a, _b) = two_nodes(&redis).await;
    let bad: [(&str, &str, &str); 9] = [
        ("/api/disconnect", "{oops", "invalid_json"),
        ("/api/disconnect", r#"{"user":""}"#, "invalid_field"),
        (
            "/api/disconnect",
            r#"{"user":"a","code":1000}"#,
            "invalid_field",
        ),
        (
            "/api/disconnect",
            r#"{"user":"a","code":4500,"reconnect":true}"#,
            "invalid_field",
        ),
        (
            "/api/disconnect",
            r#"{"user":"a","conn":3}"#,
            "invalid_field",
        ),
        (
            "/api/subscribe",
            r#"{"user":"a","channel":"bad channel"}"#,
            "invalid_channel",
        ),
        ("/api/unsubscribe", r#"{"user":"a"}"#, "invalid_json"),
        ("/api/revoke", r#"{"jti":"j","user":"a"}"#, "invalid_field"),
        ("/api/revoke", r#"{"user":"a","extra":1}"#, "invalid_json"),
    ];
    for (path, body, code) in bad {
        let (status, text) = http(a.addr, "POST", path, Some(KEY), body).await;
        assert_eq!(status, 400, "{path} {body}: {text}");
        assert!(text.contains(code), "{path} {body}: {text}");
    }
    for path in [
        "/api/disconnect",
        "/api/unsubscribe",
        "/api/subscribe",
        "/api/revoke",
    ] {
        let (status, _) = http(a.addr, "POST", path, None, r#"{"user":"a"}"#).await;
        assert_eq!(status, 401, "{path}");
    }
}

/// A token for `user` with `jti` and `iat`, valid for an hour.
fn token_with(user: &str, jti: &str, iat: u64) -> String {
    sign(
        &json!({"sub": user, "aud": "switchyard", "exp": unix_now() + 3600, "iat": iat, "jti": jti}),
    )
}

/// The status of an upgrade with `token`.
async fn upgrade_with(gw: &TestGateway, token: &str) -> u16 {
    upgrade_status(gw.addr, &format!("/ws?token={token}"), "")
        .await
        .0
}

#[tokio::test]
async fn revocation_closes_live_connections_on_both_nodes_and_outlives_a_restart() {
    let redis = RedisServer::start().await;
    let (a, b) = two_nodes(&redis).await;
    let old = unix_now() - 100;
    let by_jti = token_with("ann", "t-1", old);
    let kept = token_with("ann", "t-2", old);
    let mut revoked_a = connect(&a, &by_jti).await;
    let mut revoked_b = connect(&b, &by_jti).await;
    let mut survivor = connect(&b, &kept).await;
    let (status, reply) = call(&a, "/api/revoke", json!({"jti": "t-1"})).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["revoked"], true);
    for c in [&mut revoked_a, &mut revoked_b] {
        assert_eq!(closed(c).await, (4004, "token revoked".to_owned()));
    }
    survivor.subscribe("still").await;
    // Refused at connect on both nodes, and as a refresh.
    eventually("both nodes to refuse the token", async || {
        upgrade_with(&a, &by_jti).await == 401 && upgrade_with(&b, &by_jti).await == 401
    })
    .await;
    survivor
        .send(json!({"type": "refresh", "token": by_jti, "id": 1}))
        .await;
    let e = survivor.expect_error().await;
    assert_eq!(
        (&e["code"], &e["message"]),
        (&json!("unauthorized"), &json!("token revoked"))
    );

    // Everything ann was issued before now: the survivor goes too; a newer token does not.
    let (status, _) = call(
        &b,
        "/api/revoke",
        json!({"user": "ann", "issued_before": old + 1}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        closed(&mut survivor).await,
        (4004, "token revoked".to_owned())
    );
    let newer = token_with("ann", "t-3", old + 1);
    let mut fresh = connect(&a, &newer).await;
    fresh.subscribe("fine").await;

    // Both nodes restart: the revocations are still in force (kept in Redis).
    drop((a, b));
    let (a, b) = two_nodes(&redis).await;
    for gw in [&a, &b] {
        assert_eq!(upgrade_with(gw, &by_jti).await, 401);
        assert_eq!(upgrade_with(gw, &kept).await, 401);
        assert_eq!(upgrade_with(gw, &newer).await, 101);
    }
}

#[tokio::test]
async fn revocation_on_the_embedded_broker() {
    let gw = TestGateway::start(&format!(
        "{}[api]\nkeys = [\"{KEY}\"]\n",
        crate::plugins_auth()
    ))
    .await;
    let token = token_with("ann", "e-1", unix_now() - 10);
    let mut c = connect(&gw, &token).await;
    let (status, _) = call(&gw, "/api/revoke", json!({"jti": "e-1"})).await;
    assert_eq!(status, 200);
    assert_eq!(closed(&mut c).await, (4004, "token revoked".to_owned()));
    assert_eq!(upgrade_with(&gw, &token).await, 401);
}

#[tokio::test]
async fn the_per_user_limit_holds_across_two_nodes() {
    let redis = RedisServer::start().await;
    let limited = |node: &str| {
        format!(
            "{}[limits]\nmax_connections_per_user = 2\n",
            node_config(&redis, node)
        )
    };
    let a = TestGateway::start_ready(&limited("a")).await;
    let b = TestGateway::start_ready(&limited("b")).await;
    let token = crate::support::token("ann", None);
    let _first = connect(&a, &token).await;
    let _second = connect(&b, &token).await;
    online(&a, "ann", 2).await;
    let (status, reason) = upgrade_status(a.addr, &format!("/ws?token={token}"), "").await;
    assert_eq!(status, 429, "{reason}");
    assert!(reason.contains("max_connections_per_user"), "{reason}");
    // Other users are not limited by ann's connections.
    let _bob = connect(&b, &crate::support::token("bob", None)).await;
}

// ---- Join and leave events ----

/// Two-node config where `room:*` announces joins and leaves, keeps history, and is bound to
/// the tenant filter.
fn rooms_config(redis: &RedisServer, node: &str) -> String {
    format!(
        "{}[[namespaces]]\npattern = \"room:*\"\njoin_leave = true\nhistory_size = 100\n{}",
        node_config(redis, node),
        crate::support::with_plugins(
            "[[plugins.bindings]]\npattern = \"room:*\"\nplugin = \"tenant-guard\"\n"
        )
    )
}

/// Subscribes `c` to `room` and reads its own join, which follows the reply.
async fn enter(c: &mut Client, room: &str, user: Option<&str>) {
    let reply = c.ask(json!({"type": "subscribe", "channel": room})).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(c.recv().await, event("join", room, user));
}

fn event(kind: &str, room: &str, user: Option<&str>) -> Value {
    json!({"type": kind, "channel": room, "user": user})
}

#[tokio::test]
async fn join_and_leave_events_cross_nodes_pass_a_tenant_filter_and_stay_out_of_history() {
    let redis = RedisServer::start().await;
    let a = TestGateway::start_ready(&rooms_config(&redis, "a")).await;
    let b = TestGateway::start_ready(&rooms_config(&redis, "b")).await;
    let room = "room:1";
    let mut acme = a.client_as("watcher-acme", Some("acme")).await;
    enter(&mut acme, room, Some("watcher-acme")).await;
    let mut beta = a.client_as("watcher-beta", Some("beta")).await;
    enter(&mut beta, room, Some("watcher-beta")).await;

    // A join on the other node reaches the joiner's tenant only: the deliver hook sees the
    // event's tenant as it sees a message's.
    let mut alice = b.client_as("alice", Some("acme")).await;
    enter(&mut alice, room, Some("alice")).await;
    assert_eq!(acme.recv().await, event("join", room, Some("alice")));
    let mut bob = b.client_as("bob", Some("beta")).await;
    enter(&mut bob, room, Some("bob")).await;
    assert_eq!(
        beta.recv().await,
        event("join", room, Some("bob")),
        "alice's join (published first, on the same node) was kept from tenant beta"
    );

    // Leaves: an unsubscribe, and a connection that goes away without one. The leaver does
    // not get its own leave.
    let reply = alice
        .ask(json!({"type": "unsubscribe", "channel": room}))
        .await;
    assert_eq!(reply["type"], "unsubscribed", "{reply}");
    assert_eq!(
        acme.recv().await,
        event("leave", room, Some("alice")),
        "bob's join was kept from tenant acme"
    );
    drop(bob);
    assert_eq!(beta.recv().await, event("leave", room, Some("bob")));

    // An anonymous connection has no tenant: every tenant sees it, as `"user": null`.
    let mut anon = b.client().await;
    enter(&mut anon, room, None).await;
    assert_eq!(acme.recv().await, event("join", room, None));
    assert_eq!(beta.recv().await, event("join", room, None));

    // Events are neither stored nor numbered: the first message is offset 1 and history
    // holds only it.
    let mut publisher = a.client().await;
    let published = publisher
        .ask(json!({"type": "publish", "channel": room, "data": {"n": 1}}))
        .await;
    assert_eq!(published["offset"], 1, "{published}");
    for c in [&mut anon, &mut acme, &mut beta] {
        let m = c.recv().await;
        assert_eq!(
            (m["type"].as_str(), m["offset"].as_u64()),
            (Some("message"), Some(1)),
            "{m}"
        );
    }
    let history = acme.ask(json!({"type": "history", "channel": room})).await;
    assert_eq!(
        history["messages"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );

    // A channel outside the namespace announces nothing: the next frame is the message.
    acme.subscribe("lobby").await;
    let mut carol = b.client_as("carol", Some("acme")).await;
    carol.subscribe("lobby").await;
    carol.publish_acked("lobby", json!("hi"), 1).await;
    let m = acme.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["data"].as_str()),
        (Some("message"), Some("hi")),
        "{m}"
    );
}
