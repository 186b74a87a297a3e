//! Hub fan-out of one message to N local subscribers (one delivery group, so the frame is
//! encoded once and shared).
//!
//! `cargo bench -p switchyard --bench fanout`

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchyard::broker::Incoming;
use switchyard::broker::memory::MemoryBroker;
use switchyard::hub::{GroupKey, Hub};
use switchyard::outbox::{OutboxRx, outbox};

use common::{PAYLOAD_BYTES, padded};

const CHANNEL: &str = "chat:lobby";

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
        // The broker's receiving end must stay alive for the broker to count as ready.
        let (broker, _incoming) = MemoryBroker::new();
        let hub = Hub::new(Arc::new(broker));
        let mut receivers = Vec::with_capacity(n);
        for conn in 0..n {
            let (tx, rx) = outbox(QUEUE);
            rt.block_on(hub.subscribe(CHANNEL, conn as u64, GroupKey::default(), &tx))
                .expect("subscribe");
            receivers.push(rx);
        }
        let msg = Incoming {
            channel: Arc::from(CHANNEL),
            payload: Bytes::from(payload.clone()),
        };
        let stats = hub.dispatch(&msg);
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
                        dropped += black_box(hub.dispatch(black_box(&msg))).dropped;
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

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = fanout
}
criterion_main!(benches);
