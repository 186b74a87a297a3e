//! The client protocol, limits and lifecycle of a single embedded node.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Client, Ended, TestGateway, eventually, http_get, raw_request, scrape};

#[tokio::test]
async fn three_clients_subscribe_publish_unsubscribe() {
    let gw = TestGateway::start("").await;
    let mut a = gw.client().await;
    let mut b = gw.client().await;
    let mut c = gw.client().await;
    for client in [&mut a, &mut b, &mut c] {
        client.subscribe("room").await;
    }
    b.subscribe("side").await;

    a.publish_acked("room", json!({"n": 1}), 1).await;
    for client in [&mut b, &mut c] {
        assert_eq!(
            client.recv().await,
            json!({"type": "message", "channel": "room", "data": {"n": 1}})
        );
    }

    b.send(json!({"type": "unsubscribe", "channel": "room"}))
        .await;
    assert_eq!(
        b.recv().await,
        json!({"type": "unsubscribed", "channel": "room"})
    );

    // Deliveries keep publish order, so if `b` still received "room" it would see n=2 before
    // the marker on "side".
    c.publish("room", json!({"n": 2})).await;
    c.publish("side", json!("marker")).await;
    assert_eq!(b.recv().await["data"], "marker");
    assert_eq!(c.recv().await["data"]["n"], 2);
    // The publisher receives its own messages too, in order.
    let a_seen = [a.recv().await, a.recv().await];
    let ns: Vec<&Value> = a_seen.iter().map(|m| &m["data"]["n"]).collect();
    assert_eq!(ns, [&json!(1), &json!(2)]);
}

#[tokio::test]
async fn ids_are_echoed_on_every_reply() {
    let gw = TestGateway::start("").await;
    let mut a = gw.client().await;
    a.send(json!({"type": "subscribe", "channel": "x", "id": "s-1"}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"type": "subscribed", "channel": "x", "id": "s-1"})
    );
    a.send(json!({"type": "publish", "channel": "y", "data": null, "id": 42}))
        .await;
    assert_eq!(a.recv().await, json!({"type": "published", "id": 42}));
    a.send(json!({"type": "unsubscribe", "channel": "x", "id": 3.5}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"type": "unsubscribed", "channel": "x", "id": 3.5})
    );
    a.send(json!({"type": "subscribe", "channel": "bad channel", "id": "e"}))
        .await;
    let err = a.expect_error().await;
    assert_eq!(err["id"], "e");
    assert_eq!(err["code"], "invalid_channel");
    // A publish without an id gets no reply: the next frame is the reply to what follows.
    a.publish("y", json!(1)).await;
    a.send(json!({"type": "subscribe", "channel": "z", "id": 9}))
        .await;
    assert_eq!(a.recv().await["id"], 9);
}

#[tokio::test]
async fn every_client_error_code_from_a_real_frame() {
    let gw = TestGateway::start(
        "[limits]\nmax_subscriptions = 2\nmax_message_bytes = 256\npublish_rate = 1\npublish_burst = 2\n",
    )
    .await;
    let mut c = gw.client().await;
    let cases: Vec<(&str, &str)> = vec![
        ("{not json", "invalid_json"),
        ("[1,2,3]", "invalid_json"),
        (r#"{"type":"dance","channel":"a"}"#, "unknown_type"),
        (r#"{"channel":"a"}"#, "invalid_field"),
        (r#"{"type":"subscribe"}"#, "invalid_field"),
        (r#"{"type":"subscribe","channel":17}"#, "invalid_field"),
        (
            r#"{"type":"subscribe","channel":"a","id":{"x":1}}"#,
            "invalid_field",
        ),
        (r#"{"type":"subscribe","channel":""}"#, "invalid_channel"),
        (
            r#"{"type":"subscribe","channel":"has space"}"#,
            "invalid_channel",
        ),
    ];
    for (frame, code) in cases {
        c.send_text(frame).await;
        let err = c.expect_error().await;
        assert_eq!(err["code"], code, "frame {frame} -> {err}");
    }
    let long = "x".repeat(300);
    c.send(json!({"type": "publish", "channel": "a", "data": long}))
        .await;
    assert_eq!(c.expect_error().await["code"], "message_too_large");
    // With a readable id the error carries it, as every other error does.
    c.send(json!({"type": "publish", "channel": "a", "data": long, "id": "big"}))
        .await;
    let err = c.expect_error().await;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_str()),
        (Some("message_too_large"), Some("big"))
    );

    c.subscribe("one").await;
    c.subscribe("two").await;
    c.send(json!({"type": "subscribe", "channel": "three", "id": 1}))
        .await;
    let err = c.expect_error().await;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_u64()),
        (Some("too_many_subscriptions"), Some(1))
    );

    // Burst of 2, then 1/s: of five quick publishes at least one is refused.
    for i in 0..5 {
        c.send(json!({"type": "publish", "channel": "q", "data": i, "id": i}))
            .await;
    }
    let mut codes = Vec::new();
    for _ in 0..5 {
        let v = c.recv().await;
        codes.push(
            v["code"]
                .as_str()
                .unwrap_or(v["type"].as_str().unwrap())
                .to_owned(),
        );
    }
    assert_eq!(codes[..2], ["published", "published"]);
    assert!(codes.contains(&"rate_limited".to_owned()), "{codes:?}");

    // The connection survived every error.
    c.subscribe("one").await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009_and_others_continue() {
    let gw =
        TestGateway::start("[limits]\nmax_message_bytes = 1024\nmax_frame_bytes = 4096\n").await;
    let mut big = gw.client().await;
    let mut other = gw.client().await;
    other.subscribe("c").await;
    big.send_text(&format!(
        r#"{{"type":"publish","channel":"c","data":"{}"}}"#,
        "y".repeat(8000)
    ))
    .await;
    match big.ended().await {
        Ended::Closed(code, _) => assert_eq!(code, 1009),
        Ended::Dropped => panic!("expected a 1009 close frame"),
    }
    let mut third = gw.client().await;
    third.publish_acked("c", json!("still here"), 1).await;
    assert_eq!(other.recv().await["data"], "still here");
}

#[tokio::test]
async fn binary_and_invalid_utf8_frames() {
    let gw = TestGateway::start("").await;
    let mut c = gw.client().await;
    // Binary frames holding UTF-8 JSON are accepted, as the seed server does.
    c.ws.send(Message::binary(
        br#"{"type":"subscribe","channel":"b","id":1}"#.to_vec(),
    ))
    .await
    .unwrap();
    assert_eq!(c.recv().await["type"], "subscribed");
    c.ws.send(Message::binary(vec![0xff, 0xfe, 0x00]))
        .await
        .unwrap();
    assert_eq!(c.expect_error().await["code"], "invalid_json");

    // A text frame that is not UTF-8 violates RFC 6455: closed with 1007. Sent raw, since
    // client libraries refuse to build one.
    let mut raw = gw.client().await;
    let frame = [0x81u8, 0x82, 0, 0, 0, 0, 0xc3, 0x28];
    use tokio::io::AsyncWriteExt;
    match raw.ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s.write_all(&frame).await.unwrap(),
        _ => unreachable!(),
    }
    match raw.ended().await {
        Ended::Closed(code, _) => assert_eq!(code, 1007),
        Ended::Dropped => panic!("expected a 1007 close frame"),
    }
    // The first client is unaffected.
    c.subscribe("after").await;
}

#[tokio::test]
async fn slow_consumer_is_closed_and_others_get_everything() {
    let gw = TestGateway::start("[limits]\noutbound_queue = 8\nmax_message_bytes = 70000\n").await;
    let mut slow = Client::connect_small_rcvbuf(gw.addr).await;
    slow.subscribe("firehose").await;
    let mut fast: Vec<Client> = Vec::new();
    for _ in 0..2 {
        let mut c = gw.client().await;
        c.subscribe("firehose").await;
        fast.push(c);
    }
    let mut publisher = gw.client().await;
    let blob = "z".repeat(60_000);
    let total = 300u64;
    let readers: Vec<_> = fast
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                for i in 0..total {
                    let v = c.recv().await;
                    assert_eq!(v["data"]["i"], i, "in order, nothing lost");
                }
                c
            })
        })
        .collect();
    // `slow` never reads: its socket buffers fill, then its queue overflows.
    for i in 0..total {
        publisher
            .publish_acked("firehose", json!({"i": i, "blob": blob}), i)
            .await;
    }
    let mut fast = Vec::new();
    for r in readers {
        fast.push(r.await.expect("fast readers got every message"));
    }
    eventually("the slow consumer to be dropped from the hub", async || {
        gw.node.hub.subscriber_count("firehose") == 2
    })
    .await;
    // Its close frame may be lost behind the full socket; if it arrives it says why.
    match slow.ended().await {
        Ended::Closed(code, reason) => assert_eq!((code, reason.contains("slow")), (4001, true)),
        Ended::Dropped => {}
    }
    // The survivors keep receiving.
    publisher
        .publish_acked("firehose", json!("after"), total)
        .await;
    for c in &mut fast {
        assert_eq!(c.recv().await["data"], "after");
    }
}

#[tokio::test]
async fn idle_client_is_closed() {
    let gw = TestGateway::start("[limits]\nidle_timeout_secs = 1\nping_interval_secs = 0\n").await;
    let mut idle = gw.client().await;
    expect_idle_close(&mut idle).await;
}

/// Waits for the connection's end and checks it was the idle-timeout close (4002).
async fn expect_idle_close(c: &mut Client) {
    match c.ended().await {
        Ended::Closed(code, reason) => assert_eq!((code, reason.as_str()), (4002, "idle timeout")),
        Ended::Dropped => panic!("expected an idle-timeout close frame"),
    }
}

#[tokio::test]
async fn a_client_that_keeps_talking_is_not_idle() {
    let gw = TestGateway::start("[limits]\nidle_timeout_secs = 2\nping_interval_secs = 0\n").await;
    let mut c = gw.client().await;
    // Requests spread over 2.5 idle timeouts: the idle timer is re-armed from the last frame,
    // not from the connection's start (each reply proves the connection is still open).
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        c.subscribe("s").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Once the client goes quiet, the idle timeout closes it.
    expect_idle_close(&mut c).await;
}

#[tokio::test]
async fn server_pings_keep_a_quiet_client_alive() {
    use futures_util::StreamExt;
    let gw = TestGateway::start("[limits]\nidle_timeout_secs = 2\nping_interval_secs = 1\n").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.url()).await.unwrap();
    // The client sends nothing but the pongs tungstenite answers with while it reads: for
    // 2.5 idle timeouts it must see pings and no close.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut pings = 0;
    while let Ok(next) = tokio::time::timeout_at(until, ws.next()).await {
        match next {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected only pings, got {other:?}"),
        }
    }
    assert!(pings >= 3, "{pings} pings in 5 s at one per second");
    ws.send(Message::text(
        r#"{"type":"subscribe","channel":"p","id":1}"#,
    ))
    .await
    .unwrap();
    let reply = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(&t).unwrap(),
            Some(Ok(Message::Ping(_))) => continue,
            other => panic!("expected the subscribe reply, got {other:?}"),
        }
    };
    assert_eq!(reply["type"], "subscribed");
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let gw = TestGateway::start("").await;
    let mut others = gw.client().await;
    others.subscribe("bye").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.url()).await.unwrap();
    ws.send(Message::text(r#"{"type":"subscribe","channel":"bye"}"#))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert!(t.contains("subscribed"), "{t}"),
        other => panic!("expected the subscribe reply, got {other:?}"),
    }
    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    };
    ws.send(Message::Close(Some(bye))).await.unwrap();
    // The closing handshake completes: the server echoes the close, then the stream ends.
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the server's close reply, got {other:?}"),
    }
    assert!(ws.next().await.is_none(), "nothing after the close");
    // The channel's other subscriber is unaffected.
    others.publish("bye", json!("still here")).await;
    assert_eq!(others.recv().await["data"], "still here");
}

#[tokio::test]
async fn connection_limit_refuses_upgrade_with_503() {
    let gw = TestGateway::start("[limits]\nmax_connections = 2\n").await;
    let _a = gw.client().await;
    let _b = gw.client().await;
    let err = tokio_tungstenite::connect_async(gw.url())
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
}

#[tokio::test]
async fn health_readiness_and_graceful_shutdown() {
    let gw = TestGateway::start("").await;
    assert_eq!(http_get(gw.addr, "/healthz").await, (200, "ok".to_owned()));
    let (status, body) = http_get(gw.addr, "/readyz").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["ready"].as_bool(), v["broker"]["kind"].as_str()),
        (Some(true), Some("memory"))
    );

    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = gw.client().await;
        c.subscribe("s").await;
        clients.push(c);
    }
    let node = gw.node.clone();
    let stopping = tokio::spawn(gw.shutdown());
    for c in &mut clients {
        match c.ended().await {
            Ended::Closed(code, reason) => {
                assert_eq!(code, 1001);
                assert!(reason.contains("shutting down"), "{reason}");
            }
            Ended::Dropped => panic!("expected a 1001 close frame"),
        }
        // Replying to the close lets the session end at once. A client that does not reply
        // holds its session for the drain timeout (2 s), as long as this gateway's shutdown
        // grace, and the count below would race the two timers.
        c.finish_close().await;
    }
    stopping.await.unwrap();
    assert!(!node.is_ready());
    assert_eq!(node.connections.count(), 0);
}

/// A client written for the Node `ws` + Redis seed server: no ids, reads only `channel` and
/// `data` of deliveries, ignores everything else.
#[tokio::test]
async fn seed_protocol_client_works_unchanged() {
    let gw = TestGateway::start("").await;
    let mut sub = gw.client().await;
    let mut publ = gw.client().await;
    sub.send_text(r#"{"type":"subscribe","channel":"news"}"#)
        .await;
    assert_eq!(sub.recv().await["type"], "subscribed");
    publ.send_text(r#"{"type":"publish","channel":"news","data":{"headline":"hi","n":[1,2]}}"#)
        .await;
    publ.send_text(r#"{"type":"publish","channel":"news","data":"plain"}"#)
        .await;
    let seen: Vec<(Value, Value)> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            let m = sub.recv().await;
            v.push((m["channel"].clone(), m["data"].clone()));
        }
        v
    };
    assert_eq!(
        seen,
        vec![
            (json!("news"), json!({"headline": "hi", "n": [1, 2]})),
            (json!("news"), json!("plain")),
        ]
    );
    sub.send_text(r#"{"type":"unsubscribe","channel":"news"}"#)
        .await;
    assert_eq!(sub.recv().await["type"], "unsubscribed");
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let gw = TestGateway::start("").await;
    let mut c = gw.client().await;
    c.subscribe("m").await;
    let before = scrape(&http_get(gw.addr, "/metrics").await.1);
    for i in 0..20 {
        c.publish("m", json!(i)).await;
    }
    c.publish_acked("m", json!("last"), 1).await;
    let mut got = 0;
    while got < 20 {
        if c.recv().await["type"] == "message" {
            got += 1;
        }
    }
    let (status, text) = http_get(gw.addr, "/metrics").await;
    assert_eq!(status, 200);
    let after = scrape(&text);
    let moved = |name: &str| {
        after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
    };
    assert!(
        moved("switchyard_messages_published_total") >= 21.0,
        "{text}"
    );
    assert!(
        moved("switchyard_messages_delivered_total") >= 20.0,
        "{text}"
    );
    assert!(after.get("switchyard_connections").copied().unwrap_or(0.0) >= 1.0);
    assert!(
        after.contains_key("switchyard_publish_seconds_bucket"),
        "histograms exported"
    );
    assert!(text.contains("node=\""), "node label on every series");
}

#[tokio::test]
async fn drain_leaves_readiness_before_closing_clients() {
    let mut gw = TestGateway::start("[server]\ndrain_secs = 5\n").await;
    let mut c = gw.client().await;
    c.subscribe("d").await;
    gw.begin_shutdown();
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    while http_get(gw.addr, "/readyz").await.0 != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never turned false"
        );
    }
    // Not ready, yet still serving its clients until the drain period ends.
    assert_eq!(
        c.publish_own("d", json!("still served"), 1).await["data"],
        "still served"
    );
    match c.ended().await {
        Ended::Closed(code, _) => assert_eq!(code, 1001),
        Ended::Dropped => panic!("expected 1001"),
    }
}

#[tokio::test]
async fn requests_that_are_not_websocket_upgrades_get_a_reason() {
    let gw = TestGateway::start("").await;
    let (status, body) = http_get(gw.addr, "/ws").await;
    assert_eq!(
        (status, body.contains("`Connection`")),
        (400, true),
        "{body}"
    );
    let upgrade = |version: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let (status, body) = raw_request(gw.addr, &upgrade("8")).await;
    assert_eq!((status, body.contains("13")), (400, true), "{body}");
    let no_key = upgrade("13").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    let (status, body) = raw_request(gw.addr, &no_key).await;
    assert_eq!((status, body.contains("Key")), (400, true), "{body}");
    // The node still serves real clients.
    let mut c = gw.client().await;
    c.subscribe("after").await;
}

/// A client may send its first frame in the same packet as its handshake: the bytes the HTTP
/// layer read past the request reach the session before anything read later.
#[tokio::test]
async fn a_frame_sent_with_the_handshake_is_served() {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let gw = TestGateway::start("").await;
    let mut wire = b"GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    let mut frame = Frame::message(
        r#"{"type":"subscribe","channel":"early","id":1}"#,
        OpCode::Data(Data::Text),
        true,
    );
    frame.header_mut().mask = Some([7, 1, 9, 3]);
    frame.format(&mut wire).unwrap();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&wire).await.unwrap();
    // The response head, then whatever came with it.
    let (head, rest) = crate::support::read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "RFC 6455's accept key: {head}"
    );
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_partially_read(s, rest, Role::Client, None).await;
    let reply = ws.next().await.unwrap().unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(
        reply,
        json!({"type": "subscribed", "channel": "early", "id": 1})
    );
}
