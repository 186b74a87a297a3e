//! Multitenancy: JWT identities, per-tenant plugins, delivery groups, isolation.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Client, Lcg, SECRET, TestGateway};

fn tenancy_config(extra: &str) -> String {
    format!(
        "[auth]\nhs256_secret = {SECRET:?}\naudience = \"switchyard\"\n{}",
        crate::support::with_plugins(extra)
    )
}

struct Member {
    client: Client,
    tenant: String,
    /// Deliveries seen so far (channel, data), including ones read while awaiting replies.
    got: Vec<(String, Value)>,
}

impl Member {
    /// Sends a request with `id` and returns its reply, stashing deliveries seen meanwhile.
    async fn request(&mut self, mut req: Value, id: u64) -> Value {
        req["id"] = json!(id);
        self.client.send(req).await;
        loop {
            let v = self.client.recv().await;
            if v["type"] == "message" {
                self.got
                    .push((v["channel"].as_str().unwrap().to_owned(), v["data"].clone()));
            } else {
                assert_eq!(v["id"], id, "reply to another request: {v}");
                return v;
            }
        }
    }
}

#[tokio::test]
async fn randomized_tenants_never_see_each_other() {
    let gw = TestGateway::start(&tenancy_config(
        "[[plugins.bindings]]\npattern = \"tenant:*\"\nplugin = \"tenant-guard\"\n\
         [[plugins.bindings]]\npattern = \"news\"\nplugin = \"tenant-guard\"\n",
    ))
    .await;
    let tenants = ["acme", "beta", "cora", "dune"];
    let mut members = Vec::new();
    for (i, t) in tenants.iter().cycle().take(12).enumerate() {
        members.push(Member {
            client: gw.client_as(&format!("u{i}"), Some(t)).await,
            tenant: (*t).to_owned(),
            got: Vec::new(),
        });
    }
    let mut rng = Lcg(0x5eed);
    // The model: who is subscribed to what, and what each member must receive.
    let mut subs: Vec<HashSet<String>> = vec![HashSet::new(); members.len()];
    let mut expected: Vec<Vec<(String, Value)>> = vec![Vec::new(); members.len()];
    let mut id = 0u64;
    for step in 0..600u64 {
        id += 1;
        let m = rng.below(members.len());
        let own = members[m].tenant.clone();
        let other = tenants[rng.below(tenants.len())].to_owned();
        let channel = |t: &str, k: usize| format!("tenant:{t}:c{k}");
        match rng.below(5) {
            0 => {
                let ch = channel(&own, rng.below(3));
                let r = members[m]
                    .request(json!({"type": "subscribe", "channel": ch}), id)
                    .await;
                assert_eq!(r["type"], "subscribed", "{r}");
                subs[m].insert(ch);
            }
            1 if other != own => {
                let ch = channel(&other, rng.below(3));
                let r = members[m]
                    .request(json!({"type": "subscribe", "channel": ch}), id)
                    .await;
                assert_eq!(r["code"], "forbidden", "{own} subscribed to {ch}: {r}");
            }
            2 => {
                let ch = channel(&own, rng.below(3));
                let data = json!({"step": step});
                let r = members[m]
                    .request(json!({"type": "publish", "channel": ch, "data": data}), id)
                    .await;
                assert_eq!(r["type"], "published", "{r}");
                for (i, s) in subs.iter().enumerate() {
                    if s.contains(&ch) {
                        expected[i].push((ch.clone(), data.clone()));
                    }
                }
            }
            3 if other != own => {
                let ch = channel(&other, rng.below(3));
                let r = members[m]
                    .request(
                        json!({"type": "publish", "channel": ch, "data": {"step": step}}),
                        id,
                    )
                    .await;
                assert_eq!(r["code"], "forbidden", "{own} published to {ch}: {r}");
            }
            _ => {
                // A shared channel, addressed to one tenant: only that tenant's subscribers get it.
                if !subs[m].contains("news") {
                    let r = members[m]
                        .request(json!({"type": "subscribe", "channel": "news"}), id)
                        .await;
                    assert_eq!(r["type"], "subscribed");
                    subs[m].insert("news".to_owned());
                    id += 1;
                }
                let data = json!({"tenant": other, "step": step});
                let r = members[m]
                    .request(
                        json!({"type": "publish", "channel": "news", "data": data}),
                        id,
                    )
                    .await;
                assert_eq!(r["type"], "published", "{r}");
                for (i, s) in subs.iter().enumerate() {
                    if s.contains("news") && members[i].tenant == other {
                        expected[i].push(("news".to_owned(), data.clone()));
                    }
                }
            }
        }
    }
    // Flush: a marker on each member's own channel arrives after everything published before.
    for (i, member) in members.iter_mut().enumerate() {
        let marker = format!("tenant:{}:done{i}", member.tenant);
        id += 1;
        member
            .request(json!({"type": "subscribe", "channel": marker}), id)
            .await;
        id += 1;
        member
            .request(
                json!({"type": "publish", "channel": marker, "data": "done"}),
                id,
            )
            .await;
        while !member.got.iter().any(|(c, _)| *c == marker) {
            let v = member.client.recv().await;
            member
                .got
                .push((v["channel"].as_str().unwrap().to_owned(), v["data"].clone()));
        }
        member.got.retain(|(c, _)| *c != marker);
        for (channel, data) in &member.got {
            let crossed = match channel.strip_prefix("tenant:") {
                Some(rest) => !rest.starts_with(&format!("{}:", member.tenant)),
                None => data["tenant"] != member.tenant.as_str(),
            };
            assert!(
                !crossed,
                "member {i} of {} received {channel} {data}",
                member.tenant
            );
        }
        assert_eq!(
            member.got, expected[i],
            "member {i}: every permitted delivery, in order, nothing else"
        );
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_with_distinct_reasons() {
    let gw = TestGateway::start(&format!(
        "[auth]\nhs256_secret = {SECRET:?}\naudience = \"switchyard\"\nanonymous = false\n"
    ))
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |claims: Value, alg: jsonwebtoken::Algorithm, secret: &[u8]| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    use jsonwebtoken::Algorithm::{HS256, HS512};
    let cases = [
        (
            sign(
                json!({"sub": "a", "aud": "switchyard", "exp": now - 600}),
                HS256,
                SECRET.as_bytes(),
            ),
            "token expired",
        ),
        (
            sign(
                json!({"sub": "a", "aud": "switchyard", "exp": now + 600, "nbf": now + 300}),
                HS256,
                SECRET.as_bytes(),
            ),
            "token not yet valid",
        ),
        (
            sign(
                json!({"sub": "a", "aud": "elsewhere", "exp": now + 600}),
                HS256,
                SECRET.as_bytes(),
            ),
            "token audience not accepted",
        ),
        (
            sign(
                json!({"sub": "a", "aud": "switchyard", "exp": now + 600}),
                HS256,
                b"not-the-secret-at-all",
            ),
            "token signature invalid",
        ),
        (
            sign(
                json!({"sub": "a", "aud": "switchyard", "exp": now + 600}),
                HS512,
                SECRET.as_bytes(),
            ),
            "token algorithm HS512 not accepted",
        ),
    ];
    let mut reasons = HashSet::new();
    for (token, reason) in cases {
        match tokio_tungstenite::connect_async(format!("{}?token={token}", gw.url())).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401);
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert_eq!(body, reason);
                reasons.insert(body);
            }
            other => panic!("expected 401 for {reason}, got {:?}", other.map(|_| ())),
        }
    }
    assert_eq!(reasons.len(), 5, "five distinct reasons");
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() * 99 / 100).copied().unwrap_or_default()
}

/// Publishes `n` messages at ~`rate`/s from tenant `good` and returns their latencies; checks
/// that every one arrived, in order.
async fn good_traffic(gw: &TestGateway, n: u64) -> Vec<Duration> {
    let mut sub = gw.client_as("g-sub", Some("good")).await;
    sub.subscribe("orders:shared").await;
    let mut publ = gw.client_as("g-pub", Some("good")).await;
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut lat = Vec::new();
        for i in 0..n {
            let m = sub.recv().await;
            assert_eq!(m["data"]["i"], i, "tenant good lost or reordered a message");
            lat.push(started.elapsed() - Duration::from_micros(m["data"]["t"].as_u64().unwrap()));
        }
        lat
    });
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for i in 0..n {
        tick.tick().await;
        publ.publish(
            "orders:shared",
            json!({"i": i, "t": started.elapsed().as_micros() as u64}),
        )
        .await;
    }
    reader.await.unwrap()
}

#[tokio::test]
async fn a_hostile_tenant_degrades_only_itself() {
    let gw = TestGateway::start(&tenancy_config(
        "timeout_ms = 1000\n[[plugins.bindings]]\npattern = \"orders:*\"\nplugin = \"allow-all\"\n\
         [plugins.bindings.tenants.evil]\nplugin = \"hostile\"\ntimeout_ms = 20\n\
         config = { mode = \"loop\", hooks = [\"publish\", \"deliver\"] }\n",
    ))
    .await;
    let baseline = good_traffic(&gw, 200).await;

    // Tenant evil subscribes to the same shared channel (its deliver hook loops) and publishes
    // continuously (its publish hook loops).
    let mut evil_sub = gw.client_as("e-sub", Some("evil")).await;
    evil_sub.subscribe("orders:shared").await;
    let mut evil = gw.client_as("e-pub", Some("evil")).await;
    let attack = tokio::spawn(async move {
        let mut refused = 0;
        for i in 0..400u64 {
            evil.send(json!({"type": "publish", "channel": "orders:evil", "data": i, "id": i}))
                .await;
            let r = evil.recv().await;
            assert_eq!(r["code"], "plugin_error", "{r}");
            refused += 1;
        }
        refused
    });
    let attacked = good_traffic(&gw, 200).await;
    assert_eq!(
        attack.await.unwrap(),
        400,
        "every evil publish failed cleanly"
    );
    eprintln!(
        "tenant good p99: {:?} without tenant evil's hostile plugin, {:?} with it (evil's own deadline 20 ms, everyone else's 1 s; the breaker opens after 5 failures)",
        p99(baseline),
        p99(attacked)
    );
}
