//! Example plugins end to end: real compiled components, a real gateway, real clients.

use serde_json::json;

use crate::support::{Client, SECRET, TestGateway, with_plugins};

fn auth() -> String {
    format!("[auth]\nhs256_secret = {SECRET:?}\naudience = \"switchyard\"\n")
}

#[tokio::test]
async fn allow_all_passes_every_hook() {
    let gw = TestGateway::start(&with_plugins(
        "[[plugins.bindings]]\npattern = \"*\"\nplugin = \"allow-all\"\n",
    ))
    .await;
    let mut a = gw.client().await;
    let mut b = gw.client().await;
    b.subscribe("any:thing").await;
    a.publish_acked("any:thing", json!({"k": [1, 2, 3]}), 1)
        .await;
    assert_eq!(b.recv().await["data"], json!({"k": [1, 2, 3]}));
}

#[tokio::test]
async fn chat_router_validates_stamps_and_routes_mentions() {
    let config = with_plugins(
        "[[plugins.bindings]]\npattern = \"chat:*\"\nplugin = \"chat-router\"\n\
         [[plugins.bindings]]\npattern = \"user:*\"\nplugin = \"user-channels\"\n",
    ) + &auth();
    let gw = TestGateway::start(&config).await;
    let mut alice = gw.client_as("alice", None).await;
    let mut bob = gw.client_as("bob", None).await;
    bob.subscribe("user:bob").await;
    bob.subscribe("chat:lobby").await;
    alice.subscribe("chat:lobby").await;

    alice
        .send(json!({"type": "publish", "channel": "chat:lobby", "data": {"text": ""}, "id": 1}))
        .await;
    let err = alice.expect_error().await;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_u64()),
        (Some("forbidden"), Some(1))
    );

    let before = now_ms();
    alice
        .publish_acked("chat:lobby", json!({"text": "hi @bob and @carol"}), 2)
        .await;
    let room = bob.recv().await;
    let mention = bob.recv().await;
    let (room, mention) = if room["channel"] == "chat:lobby" {
        (room, mention)
    } else {
        (mention, room)
    };
    assert_eq!(room["data"]["text"], "hi @bob and @carol");
    let ts = room["data"]["ts"].as_u64().expect("server time stamped");
    assert!(ts >= before, "ts {ts} is server time");
    assert_eq!(mention["channel"], "user:bob");
    assert_eq!(mention["data"], room["data"]);
}

#[tokio::test]
async fn user_channels_only_for_their_user() {
    let config =
        with_plugins("[[plugins.bindings]]\npattern = \"user:*\"\nplugin = \"user-channels\"\n")
            + &auth();
    let gw = TestGateway::start(&config).await;
    let mut alice = gw.client_as("alice", None).await;
    alice.subscribe("user:alice").await;
    alice
        .send(json!({"type": "subscribe", "channel": "user:bob", "id": "x"}))
        .await;
    let err = alice.expect_error().await;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_str()),
        (Some("forbidden"), Some("x"))
    );
    let mut anon = gw.client().await;
    anon.send(json!({"type": "subscribe", "channel": "user:alice"}))
        .await;
    assert_eq!(anon.expect_error().await["code"], "forbidden");
    // Channels outside the namespace are unaffected.
    anon.subscribe("news").await;
}

#[tokio::test]
async fn redact_masks_emails_and_card_numbers() {
    let gw = TestGateway::start(&with_plugins(
        "[[plugins.bindings]]\npattern = \"support:*\"\nplugin = \"redact\"\n",
    ))
    .await;
    let mut agent = gw.client().await;
    agent.subscribe("support:42").await;
    let mut customer = gw.client().await;
    customer
        .publish_acked(
            "support:42",
            json!({"body": "mail ann.lee@example.com, card 4111 1111-1111 1111", "n": 7}),
            1,
        )
        .await;
    let got = agent.recv().await;
    let body = got["data"]["body"].as_str().unwrap();
    assert!(!body.contains("ann.lee@example.com"), "{body}");
    assert!(!body.contains("4111"), "{body}");
    assert!(body.starts_with("mail "), "{body}");
    assert_eq!(got["data"]["n"], 7, "non-string values untouched");
}

#[tokio::test]
async fn hostile_plugins_are_contained() {
    let bind = |pattern: &str, mode: &str, hooks: &str| {
        format!(
            "[[plugins.bindings]]\npattern = \"{pattern}\"\nplugin = \"hostile\"\nconfig = {{ mode = \"{mode}\", hooks = [{hooks}] }}\n"
        )
    };
    let config = with_plugins(
        &[
            "timeout_ms = 500\nmax_memory_bytes = 16777216\n".to_owned(),
            bind("loop:*", "loop", "\"publish\""),
            bind("mem:*", "memory", "\"publish\""),
            bind("trap:*", "trap", "\"publish\", \"subscribe\""),
            bind("big:*", "oversize", "\"publish\"").replace(" }", ", bytes = 2097152 }"),
            bind("dloop:*", "loop", "\"deliver\""),
        ]
        .concat(),
    );
    let gw = TestGateway::start(&config).await;
    let mut watcher = gw.client().await;
    watcher.subscribe("calm").await;
    let mut c = gw.client().await;
    let cases = [
        ("loop:1", "timeout"),
        ("mem:1", "memory"),
        ("trap:1", "trap"),
        ("big:1", "invalid_output"),
    ];
    for (round, (channel, kind)) in cases.iter().enumerate() {
        c.send(json!({"type": "publish", "channel": channel, "data": 1, "id": round}))
            .await;
        let err = c.expect_error().await;
        assert_eq!(err["code"], "plugin_error", "{channel}: {err}");
        // The client learns which hook failed; what failed, and which plugin, is the
        // operator's to read, in the log and the metrics.
        let msg = err["message"].as_str().unwrap();
        assert!(
            msg.contains("on-publish") && !msg.contains("hostile"),
            "{channel}: {msg}"
        );
        let (_, metrics) = crate::support::http_get(gw.addr, "/metrics").await;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("switchyard_plugin_errors_total")
                    && l.contains("plugin=\"hostile\"")
                    && l.contains(&format!("kind=\"{kind}\""))),
            "{channel}: counted as {kind}"
        );
        // The node keeps serving other channels, and this very connection.
        c.publish_acked("calm", json!(round), 100 + round as u64)
            .await;
        assert_eq!(watcher.recv().await["data"], json!(round));
    }
    // The same plugin keeps failing cleanly: its broken instance was replaced, not reused.
    c.send(json!({"type": "publish", "channel": "trap:2", "data": 1, "id": "again"}))
        .await;
    assert_eq!(c.expect_error().await["code"], "plugin_error");
    c.send(json!({"type": "subscribe", "channel": "trap:3"}))
        .await;
    assert_eq!(c.expect_error().await["code"], "plugin_error");

    // A deliver hook that never returns delivers nothing, and blocks nothing else.
    let mut victim = gw.client().await;
    victim.subscribe("dloop:1").await;
    victim.subscribe("calm").await;
    c.publish_acked("dloop:1", json!("lost"), 200).await;
    c.publish_acked("calm", json!("after"), 201).await;
    assert_eq!(victim.recv().await["data"], "after");
}

/// The error `Gateway::bind` gives for `config`, or `None` when it starts.
async fn start_error(config: &str) -> Option<String> {
    let parsed = switchyard::Config::from_toml(config).unwrap();
    switchyard::Gateway::bind(parsed)
        .await
        .err()
        .map(|e| e.to_string())
}

/// Interpreted plugins (JS, Python) start far slower than they run and are many core modules:
/// a fresh instance's init has its own deadline, and the store limits are settings, per plugin.
#[tokio::test]
async fn init_has_its_own_deadline_and_store_limits_are_per_plugin() {
    let slow = "[[plugins.bindings]]\npattern = \"x:*\"\nplugin = \"hostile\"\n\
                config = { mode = \"init-slow\", ms = 60 }\n";
    // An init of 60 ms where calls get 20: within the default init deadline (1 s).
    let gw = TestGateway::start(&with_plugins(&format!("timeout_ms = 20\n{slow}"))).await;
    let mut c = gw.client().await;
    c.subscribe("x:1").await;
    assert_eq!(
        c.publish_own("x:1", json!({"a": 1}), 1).await["data"],
        json!({"a": 1})
    );
    gw.shutdown().await;

    let tight = format!("timeout_ms = 20\n[plugins.limits.hostile]\ninit_timeout_ms = 10\n{slow}");
    let err = start_error(&with_plugins(&tight))
        .await
        .expect("init over its deadline");
    assert!(err.contains("init: timed out after 10 ms"), "{err}");

    // Store limits: a component needs more than one instance; the refusal names the setting.
    let one = "[plugins.limits.allow-all]\nmax_instances = 1\n\
               [[plugins.bindings]]\npattern = \"y:*\"\nplugin = \"allow-all\"\n";
    let err = start_error(&with_plugins(one))
        .await
        .expect("over the instance limit");
    assert!(err.contains("instance count too high"), "{err}");
    assert!(err.contains("plugins.limits.<name>.max_instances"), "{err}");

    let bad = "[plugins.limits.allow-all]\nmax_tables = 0\n";
    let err = switchyard::Config::from_toml(&with_plugins(bad))
        .unwrap_err()
        .to_string();
    assert!(err.contains("plugins.limits.allow-all.max_tables"), "{err}");
}

/// A version compiles once: the compiled component is kept under `<plugins.dir>/.cache` by
/// default (a JS or Python component takes 10-30 s to compile), not with `cache = false`.
#[tokio::test]
async fn compiled_components_are_cached_beside_the_plugins_by_default() {
    let bytes = std::fs::read(crate::support::plugins_dir().join("allow-all.wasm")).unwrap();
    let hash = switchyard::plugins::Code::new(bytes.clone()).hash;
    for cache in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("allow-all.wasm"), &bytes).unwrap();
        let config = format!(
            "[plugins]\ndir = {:?}\ncache = {cache}\n[[plugins.bindings]]\npattern = \"a:*\"\nplugin = \"allow-all\"\n",
            dir.path().display().to_string()
        );
        let gw = TestGateway::start(&config).await;
        let cached = dir.path().join(".cache").join(format!("{hash}.cwasm"));
        assert_eq!(cached.exists(), cache, "{}", cached.display());
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn init_failure_refuses_the_plugin_at_start() {
    let config = with_plugins(
        "[[plugins.bindings]]\npattern = \"x:*\"\nplugin = \"hostile\"\nconfig = { mode = \"init-fail\" }\n",
    );
    let parsed = switchyard::Config::from_toml(&config).unwrap();
    let err = match switchyard::Gateway::bind(parsed).await {
        Ok(_) => panic!("a plugin whose init fails must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("plugins.bindings[0]") && err.contains("init failed"),
        "{err}"
    );

    let missing = with_plugins("[[plugins.bindings]]\npattern = \"x:*\"\nplugin = \"nope\"\n");
    let parsed = switchyard::Config::from_toml(&missing).unwrap();
    let err = switchyard::Gateway::bind(parsed)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope.wasm"), "{err}");
}

#[tokio::test]
async fn tokens_are_checked_at_the_upgrade() {
    let config = format!(
        "{}anonymous = false\nallowed_origins = [\"https://app.example\"]\n",
        auth()
    );
    let gw = TestGateway::start(&config).await;
    let refused = |status: u16, body: &str| (status, body.to_owned());
    let attempt = |req: tokio_tungstenite::tungstenite::handshake::client::Request| async move {
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => (101, String::new()),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (
                resp.status().as_u16(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
            ),
            Err(e) => panic!("{e}"),
        }
    };
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let req = |suffix: &str| {
        format!("{}{suffix}", gw.url())
            .into_client_request()
            .unwrap()
    };
    assert_eq!(
        attempt(req("")).await,
        refused(401, "authentication required")
    );
    assert_eq!(attempt(req("?token=garbage")).await.0, 401);
    let good = crate::support::token("ann", None);
    assert_eq!(attempt(req(&format!("?token={good}"))).await.0, 101);
    let mut bearer = req("");
    bearer
        .headers_mut()
        .insert("authorization", format!("Bearer {good}").parse().unwrap());
    assert_eq!(attempt(bearer).await.0, 101);
    let mut evil = req(&format!("?token={good}"));
    evil.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(
        attempt(evil).await,
        refused(403, "origin \"https://evil.example\" not allowed")
    );
    let _ok = Client::connect(&format!("{}?token={good}", gw.url())).await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
