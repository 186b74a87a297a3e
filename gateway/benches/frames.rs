//! Encoding and parsing of protocol frames around a 200-byte payload.
//!
//! `cargo bench -p switchyard --bench frames`

mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchyard::protocol::{self, Action};

use common::{PAYLOAD_BYTES, padded};

const CHANNEL: &str = "chat:lobby";

fn frames(c: &mut Criterion) {
    let payload = padded(
        r#"{"text":"{pad}","user":"alice","room":"lobby","kind":"note"}"#,
        PAYLOAD_BYTES,
    );
    // A whole client publish frame of PAYLOAD_BYTES, as a session reads it off the socket.
    let request = padded(
        r#"{"type":"publish","channel":"chat:lobby","id":17,"data":{"text":"{pad}","user":"alice"}}"#,
        PAYLOAD_BYTES,
    );
    match protocol::parse_request(&request) {
        Ok(protocol::Request {
            action: Action::Publish { channel, .. },
            ..
        }) => assert_eq!(channel, CHANNEL),
        other => panic!("not a publish: {other:?}"),
    }
    assert!(matches!(
        protocol::normalize_payload(payload.as_bytes()),
        std::borrow::Cow::Borrowed(_)
    ));

    let mut g = c.benchmark_group("frames");
    g.throughput(Throughput::Bytes(PAYLOAD_BYTES as u64));
    g.bench_function("message_encode", |b| {
        b.iter(|| protocol::message(black_box(CHANNEL), black_box(payload.as_bytes()), None))
    });
    g.bench_function("parse_request_publish", |b| {
        b.iter(|| protocol::parse_request(black_box(&request)).is_ok())
    });
    // What the hub runs on every broker message before encoding it.
    g.bench_function("normalize_payload", |b| {
        b.iter(|| protocol::normalize_payload(black_box(payload.as_bytes())).len())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = frames
}
criterion_main!(benches);
