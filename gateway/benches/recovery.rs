//! Time to recover 10,000 missed messages: a client subscribes with `since` at the start of a
//! channel's history and reads every recovered message and the `subscribed` reply, over a
//! real WebSocket to a gateway served in-process. Beside it, in the same run, the same 10,000
//! messages read as ten `history` requests of 1,000 (what a client without recovery would
//! do), so the figure can be read as a ratio. Embedded broker always; Redis too when
//! `redis-server` is installed (its own, on a free loopback port).
//!
//! `cargo bench -p switchyard --bench recovery`

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard::{Config, Gateway};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;

const MISSED: u64 = 10_000;
const CHANNEL: &str = "h:bench";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A gateway serving until the runtime ends, with `MISSED` messages in `CHANNEL`'s history.
struct Bed {
    url: String,
    epoch: String,
}

async fn start(broker: &str) -> Bed {
    let mut config = Config::from_toml(&format!(
        "{broker}[[namespaces]]\npattern = \"h:*\"\nhistory_size = 20000\n[log]\nfilter = \"error\"\n"
    ))
    .expect("config");
    config.server.listen = "127.0.0.1:0".parse().expect("address");
    let gateway = Gateway::bind(config).await.expect("bind");
    let url = format!("ws://{}/ws", gateway.local_addr());
    let node = gateway.node();
    tokio::spawn(async move {
        let _ = gateway.run(std::future::pending()).await;
    });
    // The Redis broker connects in the background: publishes before it has are refused.
    while !node.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut ws = connect(&url).await;
    for i in 0..MISSED {
        let mut publish = json!({"type": "publish", "channel": CHANNEL, "data": {"i": i, "pad": "x".repeat(100)}});
        if i + 1 == MISSED {
            publish["id"] = json!(1);
        }
        send(&mut ws, publish).await;
    }
    let epoch = loop {
        let v = recv(&mut ws).await;
        if v["type"] == "published" {
            assert_eq!(v["offset"], MISSED, "{v}");
            break v["epoch"].as_str().expect("epoch").to_owned();
        }
        assert_ne!(v["type"], "error", "{v}");
    };
    Bed { url, epoch }
}

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await.expect("open").expect("frame") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Subscribes from offset 0 and reads the 10,000 recovered messages and the reply.
async fn recover(bed: &Bed) {
    let mut ws = connect(&bed.url).await;
    let since = json!({"offset": 0, "epoch": bed.epoch});
    send(
        &mut ws,
        json!({"type": "subscribe", "channel": CHANNEL, "since": since}),
    )
    .await;
    let mut got = 0;
    loop {
        let v = recv(&mut ws).await;
        if v["type"] == "subscribed" {
            assert_eq!(v["recovered"], true, "{v}");
            break;
        }
        got += 1;
    }
    assert_eq!(got, MISSED);
}

/// Reads the same messages with `history` requests of 1,000.
async fn page(bed: &Bed) {
    let mut ws = connect(&bed.url).await;
    let mut after = 0;
    while after < MISSED {
        let since = json!({"offset": after, "epoch": bed.epoch});
        send(
            &mut ws,
            json!({"type": "history", "channel": CHANNEL, "limit": 1000, "since": since}),
        )
        .await;
        let v = recv(&mut ws).await;
        after = v["messages"]
            .as_array()
            .expect("messages")
            .last()
            .expect("one")["offset"]
            .as_u64()
            .expect("offset");
    }
}

/// A redis-server of our own on a free loopback port, if one can be started.
struct Redis(Child, u16);

impl Redis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Redis(child, port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let redis = Redis::start();
    let mut backends = vec![("embedded", String::new())];
    if let Some(r) = &redis {
        backends.push((
            "redis",
            format!("[broker]\nredis_url = \"redis://127.0.0.1:{}\"\n", r.1),
        ));
    }
    let mut group = c.benchmark_group("recover_10k");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for (name, broker) in backends {
        let bed = rt.block_on(start(&broker));
        group.bench_function(format!("{name}/subscribe_since"), |b| {
            b.iter(|| rt.block_on(recover(&bed)))
        });
        group.bench_function(format!("{name}/history_pages"), |b| {
            b.iter(|| rt.block_on(page(&bed)))
        });
    }
    group.finish();
    drop(redis);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = bench
}
criterion_main!(benches);
