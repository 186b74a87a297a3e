//! Hub fan-out of one message to N local subscribers, on the path production runs: the hub
//! queues the frame in each subscriber's outbox, the fan-out lanes write the outboxes to real
//! loopback sockets, and a reader on the other end of each socket takes the bytes. One
//! delivery group (encoded once, shared), then delivery groups with a deliver hook bound.
//!
//! `cargo bench -p switchyard --bench fanout`

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchyard::broker::Inbox;
use switchyard::broker::memory::MemoryBroker;
use switchyard::config::PluginsConfig;
use switchyard::hub::{Group, GroupKey, Hub};
use switchyard::plugins::registry::PluginRegistry;
use switchyard::ws::lanes::Lanes;
use switchyard::ws::outbox::{Outbox, OutboxRx};
use switchyard::ws::socket::Socket;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use common::{PAYLOAD_BYTES, padded};

const CHANNEL: &str = "chat:lobby";

/// Dispatches timed between two waits for every byte to arrive (outboxes hold 64 frames).
const BATCH: u64 = 64;

/// The broker's inbox: unused, these benchmarks call the hub's `dispatch` themselves.
struct Nowhere;

impl Inbox for Nowhere {
    fn deliver(
        &self,
        _channel: &str,
        _payload: &[u8],
        _position: Option<&switchyard::history::Position>,
    ) {
    }
}

/// A hub, its subscribers' outboxes on loopback sockets written by lanes, and the bytes the
/// readers on the other ends have taken.
struct Bed {
    hub: Hub,
    received: Arc<AtomicU64>,
    /// Kept alive: a dropped receiver refuses frames. Each is also served as a session does
    /// (it writes when its socket is full).
    _receivers: Vec<tokio::task::JoinHandle<()>>,
    _lanes: Lanes,
}

impl Bed {
    /// `n` subscribers, subscriber `i` in `group(i)`.
    fn new(rt: &Runtime, n: usize, group: impl Fn(usize) -> GroupKey) -> Self {
        rt.block_on(async {
            let (subscriptions, requests) = switchyard::broker::subscriptions();
            // Serves the hub's subscription requests; the benchmarks dispatch by hand.
            let _broker = MemoryBroker::start(requests, Arc::new(Nowhere));
            let hub = Hub::new(subscriptions);
            let lanes = Lanes::start(BATCH as usize);
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let received = Arc::new(AtomicU64::new(0));
            let mut receivers = Vec::with_capacity(n);
            for i in 0..n {
                let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
                let (server, _) = accepted.expect("accept");
                server.set_nodelay(true).expect("nodelay");
                let (outbox, rx): (Outbox, OutboxRx) =
                    Outbox::new(Socket::new(server), lanes.pick(i as u64));
                hub.subscribe(CHANNEL, i as u64, group(i), &outbox.sink())
                    .await
                    .expect("subscribe");
                receivers.push(tokio::spawn(serve(rx)));
                tokio::spawn(read(client.expect("connect"), received.clone()));
            }
            Bed {
                hub,
                received,
                _receivers: receivers,
                _lanes: lanes,
            }
        })
    }

    /// Dispatches `iters` messages and waits until the readers got `bytes_each` per message;
    /// the time of it all.
    fn run(&self, rt: &Runtime, iters: u64, msg: &[u8], bytes_each: u64) -> Duration {
        rt.block_on(async {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let batch = left.min(BATCH);
                let target = self.received.load(Ordering::Acquire) + batch * bytes_each;
                let start = Instant::now();
                for _ in 0..batch {
                    black_box(self.hub.dispatch(CHANNEL, black_box(msg), None));
                }
                while self.received.load(Ordering::Acquire) < target {
                    // The lanes and readers run when this task yields.
                    tokio::task::yield_now().await;
                }
                timed += start.elapsed();
                left -= batch;
            }
            timed
        })
    }
}

/// The session's part of writing: only when a socket is full.
async fn serve(mut rx: OutboxRx) {
    let stop = std::future::poll_fn(|cx| rx.poll_write(cx)).await;
    panic!("an outbox stopped: {stop:?}");
}

/// A client that reads everything and counts the bytes.
async fn read(mut client: TcpStream, received: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = client.read(&mut buf).await {
        if n == 0 {
            return;
        }
        received.fetch_add(n as u64, Ordering::AcqRel);
    }
}

/// Bytes of one delivery frame of `payload` on the wire (header and body).
fn frame_bytes(payload: &str) -> u64 {
    let body = switchyard::protocol::message(CHANNEL, payload.as_bytes(), None).len() as u64;
    let header = match body {
        0..126 => 2,
        126..65_536 => 4,
        _ => 10,
    };
    header + body
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn fanout(c: &mut Criterion) {
    let rt = runtime();
    let payload = padded(
        r#"{"text":"{pad}","user":"alice","room":"lobby","kind":"note"}"#,
        PAYLOAD_BYTES,
    );
    let mut g = c.benchmark_group("fanout");
    for n in [1usize, 100, 1_000] {
        let bed = Bed::new(&rt, n, |_| GroupKey::default());
        let each = n as u64 * frame_bytes(&payload);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| bed.run(&rt, iters, payload.as_bytes(), each))
        });
    }
    g.finish();
}

/// 1,000 subscribers split into 1, 10 or 1,000 delivery groups (tenants), with the
/// `allow-all` deliver hook bound: the hook runs and the frame is encoded once per group, so
/// the cost per message should follow the number of groups, not of subscribers.
fn groups(c: &mut Criterion) {
    let rt = runtime();
    let config: PluginsConfig = serde_json::from_value(serde_json::json!({
        "dir": common::plugins_dir(),
        "bindings": [{"pattern": "*", "plugin": "allow-all"}],
    }))
    .expect("plugins config");
    let registry =
        Arc::new(PluginRegistry::load(config, 128, HashMap::new()).expect("allow-all loads"));
    let payload = padded(r#"{"text":"{pad}"}"#, PAYLOAD_BYTES);
    let subscribers = 1_000usize;
    let mut g = c.benchmark_group("groups_1k_subscribers");
    for groups in [1usize, 10, 1_000] {
        let mut bed = Bed::new(&rt, subscribers, |i| {
            Arc::new(Group {
                tenant: Some(Arc::from(format!("t{}", i % groups))),
                key: Arc::from(""),
            })
        });
        bed.hub = bed
            .hub
            .with_deliver_hook(registry.clone(), Duration::from_secs(1));
        let each = subscribers as u64 * frame_bytes(&payload);
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("groups", groups), |b| {
            b.iter_custom(|iters| bed.run(&rt, iters, payload.as_bytes(), each))
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
