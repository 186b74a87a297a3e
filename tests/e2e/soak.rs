//! A soak test, on demand (not in CI): minutes of mixed traffic against the gateway binary,
//! then checks that nothing leaked and nothing was lost.
//!
//! ```sh
//! SOAK_SECS=300 cargo test -p switchyard --test e2e -- --ignored soak --nocapture
//! ```
//!
//! Two rounds of churn (SOAK_SECS in all, default 120), each followed by a quiet moment in
//! which the gateway's resident memory and open file descriptors are read from /proc:
//! - well-behaved publishers (numbered messages, acknowledged) and subscribers on channels
//!   bound to plugins (`redact`, `allow-all`), who must receive every message, in order;
//! - clients that connect, subscribe, publish a little and leave, many per second;
//! - slow readers that subscribe to a busy channel and never read (closed as slow consumers);
//! - a hostile tenant whose own plugins loop on publish (deadline) and take 5 ms per delivery
//!   (isolation lane), publishing and subscribing all along.
//!
//! After the second round the descriptors must be back where they were after the first, and
//! memory must not have grown by more than 10 % + 4 MiB (a leak grows with the traffic).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::{Client, plugins_dir, token};

const TENANT_GOOD: &str = "good";
const TENANT_EVIL: &str = "evil";
const CHANNELS: [&str; 4] = ["room:0", "room:1", "feed:0", "feed:1"];

fn config() -> String {
    format!(
        r#"[limits]
outbound_queue = 256
[plugins]
dir = {:?}
timeout_ms = 50
[[plugins.bindings]]
pattern = "room:*"
plugin = "redact"
[plugins.bindings.tenants.{TENANT_EVIL}]
plugin = "hostile"
config = {{ mode = "loop", hooks = ["publish"] }}
[[plugins.bindings]]
pattern = "feed:*"
plugin = "allow-all"
[plugins.bindings.tenants.{TENANT_EVIL}]
plugin = "hostile"
config = {{ mode = "slow", ms = 5, hooks = ["deliver"] }}
{}"#,
        plugins_dir().display().to_string(),
        crate::plugins_auth()
    )
}

/// Resident memory (KiB) and open descriptors of process `pid`.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

async fn connect(url: &str, user: &str, tenant: &str) -> Client {
    Client::connect(&format!("{url}?token={}", token(user, Some(tenant)))).await
}

/// A well-behaved publisher: numbered messages on every channel, acknowledged, until `stop`.
async fn publisher(url: String, id: u64, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let mut c = connect(&url, &format!("pub{id}"), TENANT_GOOD).await;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for ch in CHANNELS {
            c.publish_acked(ch, json!({"from": id, "n": n}), n).await;
        }
        n += 1;
        sent.store(n, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A well-behaved subscriber: every publisher's messages on every channel arrive in order,
/// none missing, until each publisher's last number.
async fn subscriber(
    url: String,
    id: u64,
    mut done: tokio::sync::watch::Receiver<bool>,
    last: Arc<Vec<AtomicU64>>,
) {
    let mut c = connect(&url, &format!("sub{id}"), TENANT_GOOD).await;
    for ch in CHANNELS {
        c.subscribe(ch).await;
    }
    let mut next: HashMap<(String, u64), u64> = HashMap::new();
    loop {
        let complete = *done.borrow_and_update()
            && CHANNELS.iter().all(|ch| {
                last.iter().enumerate().all(|(p, l)| {
                    let want = l.load(Ordering::Relaxed);
                    next.get(&(ch.to_string(), p as u64)).copied().unwrap_or(0) >= want
                })
            });
        if complete {
            return;
        }
        let m = tokio::select! {
            m = c.recv() => m,
            // The publishers are done: look again whether everything has arrived.
            _ = done.changed() => continue,
        };
        assert_eq!(m["type"], "message", "{m}");
        if m["data"].get("from").is_none() {
            // A churning client's message.
            continue;
        }
        let key = (
            m["channel"].as_str().unwrap().to_owned(),
            m["data"]["from"].as_u64().unwrap(),
        );
        let n = m["data"]["n"].as_u64().unwrap();
        let expected = next.entry(key.clone()).or_insert(n);
        assert_eq!(n, *expected, "subscriber {id}: {key:?} skipped or repeated");
        *expected += 1;
    }
}

/// Clients that come and go until `stop`: connect, subscribe, publish a little, leave; a slow
/// reader now and then; the hostile tenant all along.
async fn churn(url: String, stop: Arc<AtomicBool>, connects: Arc<AtomicU64>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let ch = CHANNELS[(i % 4) as usize];
        let tenant = if i.is_multiple_of(5) {
            TENANT_EVIL
        } else {
            TENANT_GOOD
        };
        let mut c = connect(&url, &format!("churn{}", i % 50), tenant).await;
        c.send(json!({"type": "subscribe", "channel": ch})).await;
        for n in 0..3 {
            c.send(json!({"type": "publish", "channel": ch, "data": {"churn": n}}))
                .await;
        }
        if i.is_multiple_of(40) {
            // A slow reader: subscribes to a busy channel with a tiny receive buffer and never
            // reads; the server closes it as a slow consumer.
            let addr = url
                .trim_start_matches("ws://")
                .trim_end_matches("/ws")
                .parse()
                .unwrap();
            let mut slow = Client::connect_small_rcvbuf(addr).await;
            slow.send(json!({"type": "subscribe", "channel": "feed:0"}))
                .await;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                drop(slow);
            });
        }
        drop(c);
        connects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One round of traffic for `secs`; returns (connects, messages each publisher sent).
async fn round(url: &str, secs: u64) -> (u64, Vec<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (done, done_rx) = tokio::sync::watch::channel(false);
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let connects = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for id in 0..10 {
        subs.push(tokio::spawn(subscriber(
            url.to_owned(),
            id,
            done_rx.clone(),
            last.clone(),
        )));
    }
    // Subscribed before anything is published: every message must reach every subscriber.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut pubs = Vec::new();
    for id in 0..4 {
        let sent = Arc::new(AtomicU64::new(0));
        pubs.push((
            tokio::spawn(publisher(url.to_owned(), id, stop.clone(), sent.clone())),
            sent,
        ));
    }
    let churners: Vec<_> = (0..3)
        .map(|_| tokio::spawn(churn(url.to_owned(), stop.clone(), connects.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for c in churners {
        c.await.unwrap();
    }
    let mut sent = Vec::new();
    for (p, (task, n)) in pubs.into_iter().enumerate() {
        task.await.unwrap();
        let n = n.load(Ordering::Relaxed);
        last[p].store(n, Ordering::Relaxed);
        sent.push(n);
    }
    done.send_replace(true);
    for s in subs {
        s.await.unwrap();
    }
    (connects.load(Ordering::Relaxed), sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: run on demand (see the module's doc)"]
async fn soak() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("soak.toml");
    std::fs::write(&path, config()).unwrap();
    let (child, addr) = crate::support::spawn_gateway(Some(&path)).await;
    let pid = child.id().unwrap();
    let url = format!("ws://{addr}/ws");
    let (rss0, fds0) = usage(pid);
    let mut after = Vec::new();
    for r in 0..2 {
        let (connects, sent) = round(&url, secs / 2).await;
        // Quiet: every client of the round has gone (slow readers are dropped after 10 s).
        tokio::time::sleep(Duration::from_secs(12)).await;
        let (rss, fds) = usage(pid);
        eprintln!(
            "soak round {r}: {connects} connects, {sent:?} messages per publisher x 4 channels; \
             gateway RSS {rss} KiB, {fds} fds (at start {rss0} KiB, {fds0} fds)"
        );
        after.push((rss, fds));
    }
    let ((rss1, fds1), (rss2, fds2)) = (after[0], after[1]);
    assert_eq!(
        fds2, fds1,
        "descriptors after the second round vs the first"
    );
    assert!(
        rss2 <= rss1 + rss1 / 10 + 4096,
        "memory grew with the traffic: {rss1} -> {rss2} KiB"
    );
    drop(child);
}
