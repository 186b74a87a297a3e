//! Safe plugin rollout: a shadow that shows its disagreements and changes nothing, canaries by
//! tenant and by share of users across two nodes, promotion, and the guard rolling a failing
//! canary back on every node with nothing lost.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};

use crate::plugins_auth;
use crate::redis_support::RedisServer;
use crate::support::{Client, TestGateway, eventually, gateway_bin, http, plugins_dir};

const TOKEN: &str = "admin-token-0123456789";

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(plugins_dir().join(format!("{name}.wasm"))).unwrap()
}

/// A plugins directory where plugin `name` is the built plugin `file`.
fn plugin_dir(plugins: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    for (name, file) in plugins {
        std::fs::write(path.join(format!("{name}.wasm")), wasm(file)).unwrap();
    }
    (dir, path)
}

/// Gateway config binding `pattern` to `plugin` from `dir`, with tokens and the admin API.
fn config(dir: &Path, pattern: &str, plugin: &str, extra: &str) -> String {
    format!(
        "{auth}anonymous = true\n[plugins]\ndir = {dir:?}\ntimeout_ms = 2000\n\
         [[plugins.bindings]]\npattern = \"{pattern}\"\nplugin = \"{plugin}\"\n\
         [admin]\ntoken = \"{TOKEN}\"\n{extra}",
        auth = plugins_auth(),
        dir = dir.display().to_string(),
    )
}

/// The admin list's entry for plugin `name` on `gw`.
async fn status(gw: &TestGateway, name: &str) -> Value {
    let (code, body) = http(gw.addr, "GET", "/admin/plugins", Some(TOKEN), "").await;
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not listed: {body}"))
}

/// Starts a rollout of `file` as plugin `name` with `query` (the plan) on `gw`.
async fn rollout(gw: &TestGateway, name: &str, query: &str, bytes: Vec<u8>) -> (u16, Value) {
    let path = format!("/admin/plugins/{name}/rollout?{query}");
    let (code, body) = http(gw.addr, "PUT", &path, Some(TOKEN), bytes).await;
    (code, serde_json::from_str(&body).unwrap_or(json!(body)))
}

/// Publishes with id `id`, the publisher not being subscribed: the reply, `published` or an
/// error.
async fn publish(c: &mut Client, channel: &str, data: Value, id: u64) -> Value {
    c.send(json!({"type": "publish", "channel": channel, "data": data, "id": id}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["id"], id, "{reply}");
    reply
}

#[tokio::test]
async fn a_shadow_shows_exactly_its_disagreements_and_changes_no_delivery() {
    let (_keep, dir) = plugin_dir(&[("rule", "allow-all")]);
    let gw = TestGateway::start_ready(&config(&dir, "r:*", "rule", "")).await;

    // Bad input first: a plan that says nothing, an unknown plugin, a broken component.
    let mut broken = b"\0asm\x0d\x00\x01\x00".to_vec();
    broken.extend_from_slice(&[0xff; 64]);
    let refusals: [(&str, &str, Vec<u8>, u16, &str); 6] = [
        ("rule", "stage=canary", wasm("deny-closed"), 400, "bad_plan"),
        (
            "rule",
            "stage=shadow&percent=abc",
            wasm("deny-closed"),
            400,
            "bad_plan",
        ),
        (
            "nope",
            "stage=shadow",
            wasm("deny-closed"),
            404,
            "unknown_plugin",
        ),
        (
            "rule",
            "stage=shadow",
            b"not wasm".to_vec(),
            415,
            "not_wasm",
        ),
        ("rule", "stage=shadow", broken, 422, "refused"),
        (
            "rule",
            "stage=shadow",
            wasm("allow-all"),
            409,
            "rollout_conflict",
        ),
    ];
    for (plugin, plan, bytes, status, why) in refusals {
        let (code, body) = rollout(&gw, plugin, plan, bytes).await;
        assert_eq!(
            (code, body["code"].as_str()),
            (status, Some(why)),
            "{plan}: {body}"
        );
    }

    let (code, body) = rollout(
        &gw,
        "rule",
        "stage=shadow&excerpts=true",
        wasm("deny-closed"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["stage"], "shadow");
    // One trial per plugin at a time.
    let (code, body) = rollout(&gw, "rule", "stage=shadow", wasm("flaky")).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (409, Some("rollout_conflict")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("promote or abort it first"),
        "{body}"
    );

    // The live version decides: both subscribes succeed, every message is delivered.
    let mut c = gw.client_as("ann", Some("acme")).await;
    c.subscribe("r:open").await;
    c.subscribe("r:closed").await;
    for n in 0..5 {
        let m = c.publish_own("r:closed", json!({"n": n}), n).await;
        assert_eq!(m["data"], json!({"n": n}));
    }

    // The shadow ran every call: it disagreed on the one subscribe, on nothing else.
    eventually("the shadow to run every call", async || {
        let s = status(&gw, "rule").await;
        let shadow = &s["rollout"]["shadow"];
        shadow["on-subscribe"]["calls"] == 2
            && shadow["on-publish"]["calls"] == 5
            && shadow["on-deliver"]["calls"] == 5
    })
    .await;
    let s = status(&gw, "rule").await;
    let shadow = &s["rollout"]["shadow"];
    assert_eq!(shadow["on-subscribe"]["disagreed"], 1, "{s}");
    assert_eq!(shadow["on-publish"]["agreed"], 5, "{s}");
    assert_eq!(shadow["on-deliver"]["agreed"], 5, "{s}");
    assert_eq!(shadow["on-subscribe"]["shed"], 0, "{s}");
    let seen = s["rollout"]["disagreements"].as_array().unwrap();
    assert_eq!(seen.len(), 1, "{s}");
    assert_eq!(seen[0]["hook"], "on-subscribe");
    assert_eq!(seen[0]["channel"], "r:closed");
    assert_eq!(seen[0]["user"], "ann");
    assert_eq!(seen[0]["tenant"], "acme");
    assert_eq!(seen[0]["live"], "allow");
    assert_eq!(seen[0]["shadow"], "deny: r:closed is closed");
    assert_eq!(
        s["version"].as_str(),
        Some(&hash(&wasm("allow-all"))[..12]),
        "the live version is unchanged"
    );

    // The shadow's calls are counted as such.
    let (_, metrics) = http(gw.addr, "GET", "/metrics", None, "").await;
    let shadow_calls: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("switchyard_plugin_calls_total{")
                && l.contains("role=\"shadow\"")
                && l.contains("hook=\"on-subscribe\"")
        })
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(shadow_calls, 2.0, "{metrics}");

    // The CLI aborts it: the live version alone serves, the outcome is recorded.
    let out = plugin_cli(&gw, &["abort", "rule"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = status(&gw, "rule").await;
    assert_eq!(s["rollout"], Value::Null, "{s}");
    assert_eq!(s["last_rollout"]["outcome"], "aborted", "{s}");
    assert_eq!(s["last_rollout"]["stage"], "shadow", "{s}");
    let (code, body) = http(
        gw.addr,
        "DELETE",
        "/admin/plugins/rule/rollout",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 404, "nothing left to abort: {body}");
}

/// `switchyard plugin <args> --admin <gw>` with the admin token in the environment.
async fn plugin_cli(gw: &TestGateway, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(gateway_bin())
        .arg("plugin")
        .args(args)
        .args(["--admin", &format!("http://{}", gw.addr)])
        .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
        .output()
        .await
        .unwrap()
}

fn hash(bytes: &[u8]) -> String {
    switchyard::plugins::Code::new(bytes.to_vec()).hash
}

/// Two nodes `a` and `b` on one Redis, binding `pattern` to `plugin`, each reporting its
/// version (and so listening for announcements).
async fn two_nodes(
    redis: &RedisServer,
    dir: &Path,
    pattern: &str,
    plugin: &str,
) -> (TestGateway, TestGateway) {
    let broker = format!(
        "[broker]\nredis_url = \"{}\"\nprefix = \"ro:\"\n",
        redis.url()
    );
    let cfg = config(dir, pattern, plugin, &broker);
    let a = TestGateway::start_ready(&format!("{cfg}[server]\nnode_id = \"a\"\n")).await;
    let b = TestGateway::start_ready(&format!("{cfg}[server]\nnode_id = \"b\"\n")).await;
    eventually("both nodes to report their version", async || {
        let s = status(&a, plugin).await;
        s["nodes"]["a"].is_string() && s["nodes"]["b"].is_string()
    })
    .await;
    (a, b)
}

/// Two nodes binding `s:*` to `stamp` (stamp-v1).
async fn stamp_cluster(redis: &RedisServer, dir: &Path) -> (TestGateway, TestGateway) {
    two_nodes(redis, dir, "s:*", "stamp").await
}

/// The version (`v`) of stamp that handled a publish by `user` of `tenant` through `gw`.
async fn stamped_by(gw: &TestGateway, user: &str, tenant: Option<&str>) -> u64 {
    let mut c = gw.client_as(user, tenant).await;
    let channel = format!("s:{user}");
    c.subscribe(&channel).await;
    let m = c.publish_own(&channel, json!({"from": user}), 1).await;
    m["data"]["v"].as_u64().unwrap()
}

/// Starts a canary of `file` as `plugin` on node `a` with `plan` and waits until node `b` runs
/// it too; the candidate's version.
async fn canary_on_both(
    a: &TestGateway,
    b: &TestGateway,
    plugin: &str,
    plan: &str,
    file: &str,
) -> String {
    let (code, body) = rollout(a, plugin, plan, wasm(file)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["cluster"], true, "{body}");
    let version = hash(&wasm(file))[..12].to_owned();
    eventually("node b to run the canary", async || {
        status(b, plugin).await["rollout"]["version"] == version.as_str()
    })
    .await;
    version
}

#[tokio::test]
async fn a_tenant_canary_serves_only_that_tenant_on_every_node_until_promoted() {
    let redis = RedisServer::start().await;
    let (_keep, dir) = plugin_dir(&[("stamp", "stamp-v1")]);
    let (a, b) = stamp_cluster(&redis, &dir).await;

    let v2 = canary_on_both(&a, &b, "stamp", "stage=canary&tenants=acme", "stamp-v2").await;
    let v2 = v2.as_str();
    for gw in [&a, &b] {
        assert_eq!(stamped_by(gw, "ann", Some("acme")).await, 2);
        assert_eq!(stamped_by(gw, "bob", Some("beta")).await, 1);
        assert_eq!(stamped_by(gw, "cy", None).await, 1);
    }

    // A node that starts during the rollout joins it.
    let broker = format!(
        "[broker]\nredis_url = \"{}\"\nprefix = \"ro:\"\n",
        redis.url()
    );
    let late = TestGateway::start_ready(&format!(
        "{}[server]\nnode_id = \"late\"\n",
        config(&dir, "s:*", "stamp", &broker)
    ))
    .await;
    eventually("the late node to join the canary", async || {
        status(&late, "stamp").await["rollout"]["version"] == v2
    })
    .await;
    assert_eq!(stamped_by(&late, "ann", Some("acme")).await, 2);
    assert_eq!(stamped_by(&late, "bob", Some("beta")).await, 1);

    // Promoted through node b: everyone, everywhere, gets v2.
    let (code, body) = http(
        b.addr,
        "POST",
        "/admin/plugins/stamp/rollout/promote",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    for gw in [&a, &b, &late] {
        eventually("v2 to serve everyone", async || {
            let s = status(gw, "stamp").await;
            s["version"] == v2 && s["rollout"].is_null()
        })
        .await;
        assert_eq!(stamp_outcome(gw).await, "promoted");
        assert_eq!(stamped_by(gw, "bob", Some("beta")).await, 2);
    }
}

async fn stamp_outcome(gw: &TestGateway) -> String {
    status(gw, "stamp").await["last_rollout"]["outcome"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_share_canary_serves_about_its_share_of_users_the_same_on_every_node() {
    let redis = RedisServer::start().await;
    let (_keep, dir) = plugin_dir(&[("stamp", "stamp-v1")]);
    let (a, b) = stamp_cluster(&redis, &dir).await;
    canary_on_both(&a, &b, "stamp", "stage=canary&percent=30", "stamp-v2").await;

    let users: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
    let mut first = Vec::new();
    for user in &users {
        first.push(stamped_by(&a, user, None).await);
    }
    // Reconnected, through the other node: each user sees the same version.
    for (user, v) in users.iter().zip(&first) {
        assert_eq!(
            stamped_by(&b, user, None).await,
            *v,
            "{user} changed version"
        );
    }
    let on_v2 = first.iter().filter(|v| **v == 2).count();
    // The share is a stable hash of the user: about 30 of 100 (a fixed figure for these
    // names; the bounds say what "about" means).
    assert!(
        (18..=42).contains(&on_v2),
        "{on_v2} of 100 users on the canary"
    );
    eprintln!("share canary of 30 %: {on_v2} of 100 users on v2, each the same on both nodes");
}

#[tokio::test]
async fn a_canary_failing_one_call_in_five_is_rolled_back_everywhere_losing_nothing() {
    let redis = RedisServer::start().await;
    let (_keep, dir) = plugin_dir(&[("rule", "allow-all")]);
    let (a, b) = two_nodes(&redis, &dir, "r:*", "rule").await;

    // A subscriber on node b, a publisher of tenant acme on node a.
    let mut sub = b.client_as("sam", Some("beta")).await;
    sub.subscribe("r:1").await;
    let mut publisher = a.client_as("ann", Some("acme")).await;
    let plan = "stage=canary&tenants=acme&window_ms=2000&min_calls=10";
    canary_on_both(&a, &b, "rule", plan, "flaky").await;

    // Steady publishing through the rollout and the rollback, then 20 more after it.
    let started = Instant::now();
    let mut accepted = Vec::new();
    let mut failed = Vec::new();
    let mut after = None;
    let mut n = 0u64;
    loop {
        n += 1;
        let reply = publish(&mut publisher, "r:1", json!({"n": n}), n).await;
        match reply["type"].as_str() {
            Some("published") => accepted.push(n),
            Some("error") => {
                assert_eq!(reply["code"], "plugin_error", "{reply}");
                failed.push(n);
            }
            _ => panic!("unexpected reply {reply}"),
        }
        if after.is_none() && n.is_multiple_of(10) {
            let (sa, sb) = (status(&a, "rule").await, status(&b, "rule").await);
            if sa["rollout"].is_null() && sb["rollout"].is_null() {
                after = Some(n);
                for s in [&sa, &sb] {
                    assert_eq!(s["last_rollout"]["outcome"], "rolled_back", "{s}");
                    let reason = s["last_rollout"]["reason"].as_str().unwrap();
                    assert!(reason.contains("error rate"), "{reason}");
                }
                let at = |s: &Value| s["last_rollout"]["at"].as_u64().unwrap();
                eprintln!(
                    "canary rolled back after {} publishes ({:?}); ended on a at {}, on b at {} ({} ms apart): {}",
                    n,
                    started.elapsed(),
                    at(&sa),
                    at(&sb),
                    at(&sa).abs_diff(at(&sb)),
                    sa["last_rollout"]["reason"]
                );
            }
        }
        if after.is_some_and(|a| n >= a + 20) {
            break;
        }
        assert!(n < 100_000, "the guard never rolled the canary back");
    }
    let after = after.unwrap();
    assert!(!failed.is_empty(), "the canary served the publisher");
    assert!(
        failed.iter().all(|n| n % 5 == 0),
        "only the flaky version's failures: {failed:?}"
    );
    assert!(
        failed.iter().all(|f| *f <= after),
        "no failure once rolled back: {failed:?}"
    );

    // Every accepted message reached the subscriber on the other node exactly once, in order.
    let mut got = Vec::new();
    while got.last() != accepted.last() {
        let m = sub.recv().await;
        got.push(m["data"]["n"].as_u64().unwrap());
    }
    assert_eq!(got, accepted, "lost, duplicated or reordered");
    let unique: BTreeSet<_> = got.iter().collect();
    assert_eq!(unique.len(), got.len());
}

#[tokio::test]
async fn a_canary_pushed_by_the_cli_promotes_itself_after_a_clean_window() {
    let (_keep, dir) = plugin_dir(&[("stamp", "stamp-v1"), ("v2", "stamp-v2")]);
    let gw = TestGateway::start_ready(&config(&dir, "s:*", "stamp", "")).await;
    let file = dir.join("v2.wasm").display().to_string();
    let push = async |extra: &[&str]| {
        let mut args = vec!["push", "stamp", file.as_str()];
        args.extend_from_slice(extra);
        plugin_cli(&gw, &args).await
    };
    // Flags that need a stage are refused before anything is sent.
    let out = push(&["--promote-after", "1"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("go with --shadow, --canary or --tenants")
    );
    let out = push(&["--canary", "150%"]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a percent"),
        "{out:?}"
    );

    let out = push(&[
        "--canary",
        "50%",
        "--tenants",
        "acme",
        "--promote-after",
        "1",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"stage\":\"canary\""));
    let v2 = &hash(&wasm("stamp-v2"))[..12];
    let s = status(&gw, "stamp").await;
    assert_eq!(s["rollout"]["plan"]["percent"], 50.0, "{s}");
    assert_eq!(s["rollout"]["plan"]["tenants"], "acme", "{s}");
    assert_eq!(stamped_by(&gw, "ann", Some("acme")).await, 2);

    eventually("the canary to promote itself", async || {
        status(&gw, "stamp").await["version"] == v2
    })
    .await;
    let s = status(&gw, "stamp").await;
    assert_eq!(s["rollout"], Value::Null, "{s}");
    assert_eq!(s["last_rollout"]["outcome"], "promoted", "{s}");
    assert!(
        s["last_rollout"]["reason"]
            .as_str()
            .unwrap()
            .contains("promote_after_ms"),
        "{s}"
    );
    assert_eq!(stamped_by(&gw, "bob", Some("beta")).await, 2);
}
