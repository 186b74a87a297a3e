//! Hub fan-out of one message to N local subscribers (one delivery group, so the frame is
//! encoded once and shared), and the cost of delivery groups with a deliver hook bound.
//!
//! `cargo bench -p switchyard --bench fanout`

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::collections::HashMap;
use switchyard::broker::Inbox;
use switchyard::broker::memory::MemoryBroker;
use switchyard::config::PluginsConfig;
use switchyard::hub::{Group, GroupKey, Hub};
use switchyard::outbox::{OutboxRx, outbox};
use switchyard::plugins::registry::PluginRegistry;

use common::{PAYLOAD_BYTES, padded};

const CHANNEL: &str = "chat:lobby";

/// The broker's inbox: unused, these benchmarks call the hub's `dispatch` themselves.
struct Nowhere;

impl Inbox for Nowhere {
    fn deliver(&self, _channel: &str, _payload: &[u8]) {}
}

fn hub() -> Hub {
    let (subscriptions, requests) = switchyard::broker::subscriptions();
    // Serves the hub's subscription requests; the benchmarks dispatch by hand.
    let _broker = MemoryBroker::start(requests, Arc::new(Nowhere));
    Hub::new(subscriptions)
}

/// Each subscriber's queue; also the number of dispatches timed between two (untimed) drains,
/// so a queue never fills.
const QUEUE: usize = 64;

fn drain(receivers: &mut [OutboxRx]) -> usize {
    let mut n = 0;
    for rx in receivers {
        while rx.try_recv().is_some() {
            n += 1;
        }
    }
    n
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let payload = padded(
        r#"{"text":"{pad}","user":"alice","room":"lobby","kind":"note"}"#,
        PAYLOAD_BYTES,
    );
    let mut g = c.benchmark_group("fanout");
    for n in [1usize, 100, 10_000] {
        let hub = hub();
        let mut receivers = Vec::with_capacity(n);
        for conn in 0..n {
            let (tx, rx) = outbox(QUEUE);
            rt.block_on(hub.subscribe(CHANNEL, conn as u64, GroupKey::default(), &tx))
                .expect("subscribe");
            receivers.push(rx);
        }
        let msg = payload.as_bytes();
        let stats = hub.dispatch(CHANNEL, msg);
        assert_eq!((stats.delivered, stats.dropped), (n, 0));
        assert_eq!(drain(&mut receivers), n);

        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut dropped = 0;
                let mut left = iters;
                while left > 0 {
                    let batch = left.min(QUEUE as u64);
                    let start = Instant::now();
                    for _ in 0..batch {
                        dropped += black_box(hub.dispatch(CHANNEL, black_box(msg))).dropped;
                    }
                    timed += start.elapsed();
                    assert_eq!(drain(&mut receivers), batch as usize * n);
                    left -= batch;
                }
                assert_eq!(dropped, 0, "a queue overflowed");
                timed
            })
        });
    }
    g.finish();
}

/// 10,000 subscribers split into 10 or 1,000 delivery groups (tenants), with the `allow-all`
/// deliver hook bound: the hook runs and the frame is encoded once per group, so the cost per
/// message should follow the number of groups, not of subscribers.
fn groups(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let config: PluginsConfig = serde_json::from_value(serde_json::json!({
        "dir": common::plugins_dir(),
        "bindings": [{"pattern": "*", "plugin": "allow-all"}],
    }))
    .expect("plugins config");
    let registry =
        Arc::new(PluginRegistry::load(config, 128, HashMap::new()).expect("allow-all loads"));
    let payload = padded(r#"{"text":"{pad}"}"#, PAYLOAD_BYTES);
    let subscribers = 10_000usize;
    let mut g = c.benchmark_group("groups_10k_subscribers");
    for groups in [1usize, 10, 1_000] {
        let hub = hub().with_deliver_hook(registry.clone(), Duration::from_millis(1));
        let mut receivers = Vec::with_capacity(subscribers);
        for conn in 0..subscribers {
            let (tx, rx) = outbox(QUEUE);
            let group = Arc::new(Group {
                tenant: Some(Arc::from(format!("t{}", conn % groups))),
                key: Arc::from(""),
            });
            rt.block_on(hub.subscribe(CHANNEL, conn as u64, group, &tx))
                .expect("subscribe");
            receivers.push(rx);
        }
        let msg = payload.as_bytes();
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("groups", groups), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let batch = left.min(QUEUE as u64);
                    let start = Instant::now();
                    for _ in 0..batch {
                        black_box(hub.dispatch(CHANNEL, black_box(msg)));
                    }
                    timed += start.elapsed();
                    assert_eq!(drain(&mut receivers), batch as usize * subscribers);
                    left -= batch;
                }
                timed
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = fanout, groups
}
criterion_main!(benches);
