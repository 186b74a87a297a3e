//! The `switchyard` binary: `--check`, and SIGTERM drain.

use std::process::Command;

use serde_json::json;

use crate::support::{Client, Ended, PATIENCE, eventually, gateway_bin, workspace};

fn check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(gateway_bin())
        .args(["--check", "--config"])
        .arg(&path)
        .env_remove("SWITCHYARD_CONFIG")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_accepts_the_shipped_example() {
    crate::support::plugins_dir();
    let out = Command::new(gateway_bin())
        .arg("--check")
        .arg("--config")
        .arg(workspace().join("examples/switchyard.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(
        stdout.contains("chat:* -> chat-router@"),
        "plugins were loaded: {stdout}"
    );
}

#[test]
fn check_rejects_bad_configs_precisely() {
    let cases = [
        ("[limits]\nmax_subscribtions = 1\n", "max_subscribtions"),
        (
            "[limits]\nmax_subscriptions = \"many\"\n",
            "max_subscriptions",
        ),
        (
            "[limits]\nmax_subscriptions = 0\n",
            "limits.max_subscriptions",
        ),
        ("[server]\nlisten = \"nowhere\"\n", "listen"),
        ("[broker]\nredis_url = \"http://x\"\n", "broker.redis_url"),
        ("this is not toml", "line 1"),
    ];
    for (config, needle) in cases {
        let (code, text) = check(config);
        assert_eq!(code, 2, "{config:?} -> {text}");
        assert!(
            text.contains(needle),
            "{config:?}: message {text:?} should mention {needle}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(gateway_bin())
        .args(["--check", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[tokio::test]
async fn sigterm_drains_clients_with_1001_and_exits_zero() {
    // Both runtimes: one worker per core (the default) and the single-threaded node.
    let single = tempfile::tempdir().unwrap();
    let single_config = single.path().join("single.toml");
    std::fs::write(&single_config, "[server]\nworker_threads = 1\n").unwrap();
    for config in [None, Some(single_config.as_path())] {
        let (mut child, addr) = crate::support::spawn_gateway(config).await;
        let mut c = Client::connect(&format!("ws://{addr}/ws")).await;
        c.subscribe("x").await;
        assert_eq!(
            c.publish_own("x", json!(1), 1).await["data"],
            1,
            "{config:?}"
        );
        let status = Command::new("kill")
            .args(["-TERM", &child.id().unwrap().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        match c.ended().await {
            Ended::Closed(code, _) => assert_eq!(code, 1001, "{config:?}"),
            Ended::Dropped => panic!("expected a 1001 close frame ({config:?})"),
        }
        let exit = tokio::time::timeout(PATIENCE, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.code(), Some(0), "{config:?}");
    }
}

#[test]
fn check_loads_plugins_and_caches_compiled_components() {
    let plugins = crate::support::plugins_dir();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let config = format!(
        "[plugins]\ndir = {:?}\ncache_dir = {:?}\n[[plugins.bindings]]\npattern = \"chat:*\"\nplugin = \"chat-router\"\n",
        plugins.display().to_string(),
        cache.display().to_string()
    );
    let (code, text) = check(&config);
    assert_eq!(code, 0, "{text}");
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        cached.len(),
        1,
        "one compiled component, named by content hash: {cached:?}"
    );
    assert!(cached[0].extension().is_some_and(|e| e == "cwasm"));
    // A second process loads the compiled component from the cache.
    let (code, text) = check(&config);
    assert_eq!(code, 0, "{text}");
    // A corrupt cache entry is ignored (recompiled), never trusted or fatal.
    std::fs::write(&cached[0], b"not a compiled component").unwrap();
    let (code, text) = check(&config);
    assert_eq!(code, 0, "{text}");

    let failing = format!(
        "[plugins]\ndir = {:?}\n[[plugins.bindings]]\npattern = \"x:*\"\nplugin = \"hostile\"\nconfig = {{ mode = \"init-fail\" }}\n",
        plugins.display().to_string()
    );
    let (code, text) = check(&failing);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("plugins.bindings[0]") && text.contains("init failed"),
        "{text}"
    );
}

/// Publishes `{"n": n}` on `s:1` and tells whether a stamp plugin handled it.
async fn stamped(c: &mut Client, n: u64) -> bool {
    c.publish_acked("s:1", json!({"n": n}), n).await;
    c.recv().await["data"].get("v").is_some()
}

#[tokio::test]
async fn config_file_changes_rebind_plugins_without_restart() {
    let plugins = crate::support::plugins_dir();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let write = |pattern: &str| {
        let text = format!(
            "[plugins]\ndir = {:?}\n[[plugins.bindings]]\npattern = \"{pattern}\"\nplugin = \"stamp-v1\"\n",
            plugins.display().to_string()
        );
        let tmp = dir.path().join("next.toml");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    write("s:*");
    let (child, addr) = crate::support::spawn_gateway(Some(&path)).await;
    let mut c = Client::connect(&format!("ws://{addr}/ws")).await;
    c.subscribe("s:1").await;
    assert!(stamped(&mut c, 1).await, "bound at start");
    // Rebind elsewhere: s:* falls back to the default policy, no plugin.
    write("other:*");
    let mut n = 1;
    eventually("the edited config to be applied", async || {
        n += 1;
        !stamped(&mut c, n).await
    })
    .await;
    // SIGHUP re-reads the file too.
    write("s:*");
    let status = Command::new("kill")
        .args(["-HUP", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("the SIGHUP reload to be applied", async || {
        n += 1;
        stamped(&mut c, n).await
    })
    .await;
}

/// In its own process the node installs the metrics recorder itself, so counters taken before
/// that would silently record nothing (the in-process tests share one recorder installed by
/// whichever gateway started first, and cannot see this).
#[tokio::test]
async fn a_fresh_process_counts_deliveries_in_its_metrics() {
    let (_child, addr) = crate::support::spawn_gateway(None).await;
    let mut c = Client::connect(&format!("ws://{addr}/ws")).await;
    c.subscribe("m").await;
    assert_eq!(c.publish_own("m", json!(1), 1).await["data"], 1);
    let (status, text) = crate::support::http_get(addr.parse().unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit_once(' '))
            .map_or(0.0, |(_, v)| v.parse::<f64>().unwrap())
    };
    assert_eq!(value("switchyard_messages_delivered_total"), 1.0, "{text}");
    assert_eq!(value("switchyard_fanout_seconds_count"), 1.0, "{text}");
}
