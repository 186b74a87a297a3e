//! The operations console's data and page: `GET /admin/cluster` across nodes, the page served
//! without data, and the Grafana dashboard's queries against the series the gateway exports.
//! (The page itself is driven in a browser by tests/browser/console.test.mjs.)

use std::collections::BTreeSet;

use serde_json::Value;

use crate::redis_support::RedisServer;
use tokio::io::AsyncWriteExt;

use crate::support::{
    TestGateway, eventually, http, http_get, raw_request, read_head, with_plugins, workspace,
};

const TOKEN: &str = "admin-token-0123456789";

async fn cluster(gw: &TestGateway) -> Value {
    let (status, body) = http(gw.addr, "GET", "/admin/cluster", Some(TOKEN), "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn ids(cluster: &Value) -> Vec<String> {
    cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_cluster_endpoint_shows_every_node_and_drops_one_that_stops() {
    let redis = RedisServer::start().await;
    let config = |id: &str| {
        format!(
            "[server]\nnode_id = \"{id}\"\n[broker]\nredis_url = \"{}\"\n[admin]\ntoken = \"{TOKEN}\"\n",
            redis.url()
        )
    };
    let a = TestGateway::start_ready(&config("a")).await;
    let mut b = TestGateway::start_ready(&config("b")).await;

    let (status, _) = http_get(a.addr, "/admin/cluster").await;
    assert_eq!(status, 401, "no token, no data");
    let (status, _) = http(
        a.addr,
        "GET",
        "/admin/cluster",
        Some("wrong-token-0123456789"),
        "",
    )
    .await;
    assert_eq!(status, 401);

    // Each node posts every 2 s; a's answer includes b once b has posted.
    eventually("a to list both nodes", async || {
        ids(&cluster(&a).await) == ["a", "b"]
    })
    .await;
    let mut client = b.client().await;
    client.subscribe("news").await;
    eventually("b's connection and channel to show on a", async || {
        let c = cluster(&a).await;
        let b = &c["nodes"][1];
        b["connections"] == 1 && b["channels"] == 1
    })
    .await;
    let c = cluster(&a).await;
    assert_eq!(c["node"], "a");
    for n in c["nodes"].as_array().unwrap() {
        assert_eq!(n["ready"], true, "{n}");
        assert_eq!(n["draining"], false, "{n}");
        assert_eq!(n["stale"], false, "{n}");
        assert_eq!(n["broker"], "redis", "{n}");
        assert_eq!(n["broker_connected"], true, "{n}");
        assert!(
            n["started_ms"].as_u64().unwrap() <= n["at_ms"].as_u64().unwrap(),
            "{n}"
        );
    }

    // A node that stops cleanly withdraws its status.
    drop(client);
    b.begin_shutdown();
    b.shutdown().await;
    eventually("a to list only itself", async || {
        ids(&cluster(&a).await) == ["a"]
    })
    .await;
}

#[tokio::test]
async fn an_embedded_node_reports_itself_and_counts_traffic() {
    let gw = TestGateway::start(&format!("[admin]\ntoken = \"{TOKEN}\"\n")).await;
    let mut c = gw.client().await;
    c.subscribe("m").await;
    c.publish_own("m", serde_json::json!(1), 1).await;
    let status = cluster(&gw).await;
    assert!(status.get("error").is_none(), "{status}");
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["broker"], "memory");
    assert_eq!(nodes[0]["connections"], 1);
    // The process's counters (shared by every in-process test gateway): at least this one's.
    assert!(
        nodes[0]["published_total"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        nodes[0]["delivered_total"].as_u64().unwrap() >= 1,
        "{status}"
    );
}

#[tokio::test]
async fn the_console_page_is_served_without_data_and_without_a_token() {
    // Admin API disabled: the page still loads and says so when it asks.
    let gw = TestGateway::start("").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /admin/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    let (status, page) = http_get(gw.addr, "/admin/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Switchyard console</title>"), "{page}");
    let (status, body) = http_get(gw.addr, "/admin/console.js").await;
    assert_eq!(status, 200);
    assert!(body.contains("/admin/cluster"));
    let (status, _) = raw_request(
        gw.addr,
        "GET /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 308);
    let (status, body) = http_get(gw.addr, "/admin/cluster").await;
    assert_eq!(status, 401);
    assert!(body.contains("admin API disabled"), "{body}");
}

/// Series names a PromQL expression reads: `switchyard_...`, a histogram's `_bucket`, `_sum`
/// and `_count` folded into the histogram's name.
fn series_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("switchyard_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(name.to_owned());
        rest = &tail[end..];
    }
    out
}

/// Every `expr` and templating query in the dashboard.
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_grafana_dashboard_reads_only_series_the_gateway_exports() {
    let root = workspace();
    let text =
        std::fs::read_to_string(root.join("examples/grafana/switchyard-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");

    // What a gateway exports after traffic through a plugin: the families in `# TYPE` lines.
    let gw = TestGateway::start(&with_plugins(
        "[[plugins.bindings]]\npattern = \"s:*\"\nplugin = \"allow-all\"\n",
    ))
    .await;
    let mut c = gw.client().await;
    c.subscribe("s:1").await;
    c.publish_own("s:1", serde_json::json!(1), 1).await;
    let (_, metrics) = http_get(gw.addr, "/metrics").await;
    let live: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    // Series that appear only once their event happened (an error of some kind, a swap, a
    // drop): named in the gateway's source and documented in the README's metrics section.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let documented = &readme[readme.find("## Metrics").unwrap()..];
    let documented = &documented[..documented[3..].find("\n## ").unwrap()];
    for expr in &exprs {
        for name in series_in(expr) {
            assert!(
                live.contains(name.as_str()) || documented.contains(&format!("`{name}")),
                "the dashboard's {expr:?} reads {name}, which the gateway neither exported here nor documents"
            );
            assert!(
                documented.contains(&name),
                "{name} is not in the README's metrics section"
            );
        }
    }
    // The core series must really be exported, not only documented.
    for name in [
        "switchyard_connections",
        "switchyard_messages_published_total",
        "switchyard_messages_delivered_total",
        "switchyard_plugin_calls_total",
        "switchyard_plugin_call_seconds",
        "switchyard_publish_seconds",
    ] {
        assert!(live.contains(name), "{name} not in /metrics:\n{metrics}");
    }
}
