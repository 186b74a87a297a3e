//! Cost of the plugin hooks through the real wasmtime runtime, against the same calls with
//! no plugin bound.
//!
//! `cargo bench -p switchyard --bench plugin_hooks`

mod common;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use switchyard::config::{BindingConfig, PluginsConfig};
use switchyard::hub::{GroupKey, Prepared};
use switchyard::identity::Identity;
use switchyard::plugins::{Plugins, Routed};

use common::{PAYLOAD_BYTES, padded};

const CHANNEL: &str = "chat:lobby";

/// A binding of `pattern` to `plugin` with an empty config. Built through serde, as from the
/// config file, so fields added later with defaults need no change here.
fn binding(pattern: &str, plugin: &str) -> BindingConfig {
    serde_json::from_value(serde_json::json!({ "pattern": pattern, "plugin": plugin }))
        .expect("binding config")
}

/// Loads `plugin` (if any) bound to `chat:*`.
fn load(plugin: Option<&str>) -> Plugins {
    let Some(plugin) = plugin else {
        return Plugins::none();
    };
    let config = PluginsConfig {
        dir: common::plugins_dir(),
        bindings: vec![binding("chat:*", plugin)],
        ..Default::default()
    };
    Plugins::load(&config, 128).unwrap_or_else(|e| panic!("loading {plugin}: {e}"))
}

fn hooks(c: &mut Criterion) {
    // A generic message, a chat message (one forward: no @mentions) and one holding an e-mail
    // address for `redact`; all exactly PAYLOAD_BYTES long.
    let generic = padded(
        r#"{"text":"{pad}","user":"alice","room":"lobby","kind":"note","tags":["a","b"]}"#,
        PAYLOAD_BYTES,
    );
    let chat = padded(
        r#"{"text": "{pad}", "user": "alice", "client": "web", "ts": 1}"#,
        PAYLOAD_BYTES,
    );
    let email = padded(
        r#"{"text": "write to jane.doe@example.com about {pad}", "user": "alice"}"#,
        PAYLOAD_BYTES,
    );
    let who = Identity::anonymous();
    // The default delivery group (no tenant, no key).
    let group = GroupKey::default();

    let none = load(None);
    let allow_all = load(Some("allow-all"));
    let chat_router = load(Some("chat-router"));
    let redact = load(Some("redact"));

    // Check that each path does what it is meant to measure before timing it.
    assert_eq!(none.publish(&who, CHANNEL, &generic), Ok(Routed::Pass));
    assert_eq!(allow_all.publish(&who, CHANNEL, &generic), Ok(Routed::Pass));
    assert_eq!(
        allow_all.subscribe(&who, CHANNEL).map(|g| g.key.is_empty()),
        Ok(true)
    );
    assert!(matches!(
        allow_all.prepare(CHANNEL, &group, generic.as_bytes()),
        Prepared::Unchanged
    ));
    assert_eq!(
        allow_all.publish(&who, "other:x", &generic),
        Ok(Routed::Pass)
    );
    match chat_router.publish(&who, CHANNEL, &chat) {
        Ok(Routed::Forward(list)) => {
            assert_eq!(list.len(), 1);
            assert_eq!(list[0].0, CHANNEL);
            let stamped: serde_json::Value = serde_json::from_str(&list[0].1).expect("JSON");
            assert!(stamped["ts"].as_u64() > Some(1), "ts is stamped: {stamped}");
        }
        other => panic!("chat-router should forward one message, got {other:?}"),
    }
    match redact.publish(&who, CHANNEL, &email) {
        Ok(Routed::Forward(list)) => {
            assert_eq!(list.len(), 1);
            assert!(list[0].1.contains("[redacted]") && !list[0].1.contains('@'));
        }
        other => panic!("redact should forward the redacted message, got {other:?}"),
    }

    let mut g = c.benchmark_group("plugin_hooks");

    // No plugin runtime at all: the path every unbound node takes.
    g.bench_function(BenchmarkId::new("publish", "no-plugin"), |b| {
        b.iter(|| none.publish(black_box(&who), black_box(CHANNEL), black_box(&generic)))
    });
    g.bench_function(BenchmarkId::new("subscribe", "no-plugin"), |b| {
        b.iter(|| none.subscribe(black_box(&who), black_box(CHANNEL)))
    });
    g.bench_function(BenchmarkId::new("deliver", "no-plugin"), |b| {
        b.iter(|| {
            none.prepare(
                black_box(CHANNEL),
                black_box(&*group),
                black_box(generic.as_bytes()),
            )
        })
    });
    // Bindings exist but none matches the channel: namespace lookup only.
    g.bench_function(BenchmarkId::new("publish", "unbound-channel"), |b| {
        b.iter(|| allow_all.publish(black_box(&who), black_box("other:x"), black_box(&generic)))
    });

    // Pass-through plugin: the cost of the machinery (pool, store, canonical ABI copies).
    g.bench_function(BenchmarkId::new("publish", "allow-all"), |b| {
        b.iter(|| allow_all.publish(black_box(&who), black_box(CHANNEL), black_box(&generic)))
    });
    g.bench_function(BenchmarkId::new("subscribe", "allow-all"), |b| {
        b.iter(|| allow_all.subscribe(black_box(&who), black_box(CHANNEL)))
    });
    g.bench_function(BenchmarkId::new("deliver", "allow-all"), |b| {
        b.iter(|| {
            allow_all.prepare(
                black_box(CHANNEL),
                black_box(&*group),
                black_box(generic.as_bytes()),
            )
        })
    });

    // JSON rewrites in the guest, plus the host's validation of what they return.
    g.bench_function(BenchmarkId::new("publish", "chat-router"), |b| {
        b.iter(|| chat_router.publish(black_box(&who), black_box(CHANNEL), black_box(&chat)))
    });
    g.bench_function(BenchmarkId::new("publish", "redact"), |b| {
        b.iter(|| redact.publish(black_box(&who), black_box(CHANNEL), black_box(&email)))
    });

    // The pass-through plugin written in JavaScript and in Python (built by bench/compare.sh
    // or `switchyard plugin build plugins/{js,python}/allow-all`): what each language's
    // runtime costs per call beside `allow-all` in Rust. Skipped when not built.
    let dir = common::plugins_dir();
    for lang in ["js", "py"] {
        let name = format!("allow-all-{lang}");
        if !dir.join(format!("{name}.wasm")).is_file() {
            eprintln!("plugin_hooks: target/plugins/{name}.wasm not built; skipping {name}");
            continue;
        }
        let plugin = load(Some(&name));
        assert_eq!(plugin.publish(&who, CHANNEL, &generic), Ok(Routed::Pass));
        g.bench_function(BenchmarkId::new("publish", &name), |b| {
            b.iter(|| plugin.publish(black_box(&who), black_box(CHANNEL), black_box(&generic)))
        });
        g.bench_function(BenchmarkId::new("subscribe", &name), |b| {
            b.iter(|| plugin.subscribe(black_box(&who), black_box(CHANNEL)))
        });
        g.bench_function(BenchmarkId::new("deliver", &name), |b| {
            b.iter(|| {
                plugin.prepare(
                    black_box(CHANNEL),
                    black_box(&*group),
                    black_box(generic.as_bytes()),
                )
            })
        });
    }

    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = hooks
}
criterion_main!(benches);
