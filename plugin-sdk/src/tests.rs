//! Tests of the export glue, the native host stand-ins and the types.

use crate::testing::{Instance, LogRecord, TestHost};
use crate::*;

/// Counts publishes, logs, and exercises every hook and type conversion.
struct Counter {
    prefix: String,
    published: u64,
}

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CounterConfig {
    prefix: String,
}

impl Default for CounterConfig {
    fn default() -> Self {
        Self {
            prefix: "n".to_owned(),
        }
    }
}

impl Plugin for Counter {
    type Config = CounterConfig;

    fn init(cfg: CounterConfig) -> Result<Self, String> {
        if cfg.prefix == "fail" {
            return Err("told to fail".to_owned());
        }
        info!("init with prefix {}", cfg.prefix);
        Ok(Self {
            prefix: cfg.prefix,
            published: 0,
        })
    }

    fn on_connect(&mut self, info: &ConnectInfo) -> ConnectDecision {
        match info.header("x-tenant") {
            Some(t) => ConnectDecision::Enrich(info.identity.clone().with_tenant(t)),
            None if info.query_param("deny").is_some() => ConnectDecision::reject("denied"),
            None => ConnectDecision::Accept,
        }
    }

    fn on_subscribe(&mut self, who: &Identity, channel: &str) -> SubscribeDecision {
        match (who.tenant_id(), channel) {
            (_, "secret") => SubscribeDecision::deny("no"),
            (Some(t), _) => SubscribeDecision::allow_in_group(t),
            (None, _) => SubscribeDecision::Allow,
        }
    }

    fn on_publish(&mut self, who: &Identity, channel: &str, data: &str) -> PublishDecision {
        self.published += 1;
        log(
            Level::Debug,
            "publish",
            &[("channel", channel), ("user", who.user_id().unwrap_or("-"))],
        );
        match channel {
            "drop" => PublishDecision::Drop,
            "reject" => PublishDecision::reject("nope"),
            "pass" => PublishDecision::Pass,
            "bad-json" => PublishDecision::forward_one(Outgoing::new(channel, "{oops")),
            _ => {
                let mut v = json::parse(data).unwrap();
                v[&self.prefix] = self.published.into();
                v["at"] = now_ms().into();
                PublishDecision::forward_one(Outgoing::json(channel, &v))
            }
        }
    }

    fn on_deliver(&mut self, group: &GroupContext, _channel: &str, data: &str) -> DeliverDecision {
        match group.key.as_str() {
            "skip" => DeliverDecision::Skip,
            "" => DeliverDecision::Deliver,
            key => DeliverDecision::Rewrite(format!("[{data},\"{key}\"]")),
        }
    }
}

struct Other;
impl Plugin for Other {
    type Config = NoConfig;

    fn init(_: NoConfig) -> Result<Self, String> {
        Ok(Other)
    }
}

/// Accepts any config and ignores it, as a pass-through plugin may.
struct Lenient;
impl Plugin for Lenient {
    type Config = serde::de::IgnoredAny;

    fn init(_: serde::de::IgnoredAny) -> Result<Self, String> {
        Ok(Lenient)
    }
}

#[test]
fn state_lives_in_the_instance_across_calls() {
    let host = TestHost::new();
    host.set_now_ms(1000);
    let p = Instance::<Counter>::init(r#"{"prefix":"count"}"#).unwrap();
    let who = Identity::user("u");
    for n in 1..=3u64 {
        host.advance_ms(5);
        let d = p.publish(&who, "c", r#"{"x":1}"#);
        let expected = format!(r#"{{"at":{},"count":{n},"x":1}}"#, 1000 + 5 * n);
        assert_eq!(
            d,
            PublishDecision::forward_one(Outgoing::new("c", expected))
        );
    }
    // A new init starts from a fresh value, like a new wasm instance.
    let p = Instance::<Counter>::init("").unwrap();
    let d = p.publish(&who, "c", "{}");
    assert!(matches!(&d, PublishDecision::Forward(o) if o[0].data.contains(r#""n":1"#)));
}

#[test]
fn every_variant_crosses_the_glue() {
    let p = Instance::<Counter>::init("{}").unwrap();
    let who = Identity::user("u").with_claims(&serde_json::json!({"role": "x"}));
    assert_eq!(p.publish(&who, "drop", "{}"), PublishDecision::Drop);
    assert_eq!(
        p.publish(&who, "reject", "{}"),
        PublishDecision::reject("nope")
    );
    assert_eq!(p.publish(&who, "pass", "{}"), PublishDecision::Pass);

    let mut info = ConnectInfo {
        remote_addr: "127.0.0.1:9".into(),
        headers: vec![("x-tenant".into(), "acme".into())],
        query: "a=1&deny".into(),
        identity: who.clone(),
    };
    assert_eq!(
        p.connect(&info),
        ConnectDecision::Enrich(who.clone().with_tenant("acme"))
    );
    info.headers.clear();
    assert_eq!(p.connect(&info), ConnectDecision::reject("denied"));
    info.query.clear();
    assert_eq!(p.connect(&info), ConnectDecision::Accept);

    assert_eq!(p.subscribe(&who, "secret"), SubscribeDecision::deny("no"));
    assert_eq!(p.subscribe(&who, "c"), SubscribeDecision::Allow);
    assert_eq!(
        p.subscribe(&who.clone().with_tenant("t"), "c"),
        SubscribeDecision::allow_in_group("t")
    );

    let group = |key: &str| GroupContext {
        key: key.into(),
        tenant: Some("t".into()),
    };
    assert_eq!(p.deliver(&group(""), "c", "1"), DeliverDecision::Deliver);
    assert_eq!(p.deliver(&group("skip"), "c", "1"), DeliverDecision::Skip);
    assert_eq!(
        p.deliver(&group("g"), "c", "1"),
        DeliverDecision::Rewrite(r#"[1,"g"]"#.into())
    );
    assert_eq!(who.claims_json().unwrap()["role"], "x");
}

#[test]
fn init_errors_are_returned() {
    let err = Instance::<Counter>::init(r#"{"prefix":"fail"}"#).unwrap_err();
    assert_eq!(err, "told to fail");
    let err = Instance::<Counter>::init(r#"{"prefix":7}"#).unwrap_err();
    assert_eq!(
        err,
        "invalid config: invalid type: integer `7`, expected a string at line 1 column 11"
    );
    let err = Instance::<Counter>::init(r#"{"prefx":"a"}"#).unwrap_err();
    assert_eq!(
        err,
        "invalid config: unknown field `prefx`, expected `prefix` at line 1 column 8"
    );
    let err = Instance::<Counter>::init("{").unwrap_err();
    assert!(err.starts_with("invalid config: EOF"), "{err}");
}

#[test]
fn config_is_deserialized_before_init() {
    let _host = TestHost::new();
    let p: Counter = testing::new_plugin(r#" {"prefix": "k"} "#).unwrap();
    assert_eq!((p.prefix.as_str(), p.published), ("k", 0));
    // No config at all reads as `{}`, so the defaults apply.
    for absent in ["", "null", "{}"] {
        let p: Counter = testing::new_plugin(absent).unwrap();
        assert_eq!(p.prefix, "n", "{absent:?}");
    }
    assert_eq!(
        testing::new_plugin::<Counter>(r#"{"prefix":"fail"}"#).err(),
        Some("told to fail".to_owned())
    );
}

#[test]
fn no_config_accepts_only_nothing() {
    for absent in ["", "  ", "null", "{}", " { } "] {
        assert!(Instance::<Other>::init(absent).is_ok(), "{absent:?}");
    }
    assert_eq!(
        Instance::<Other>::init(r#"{"mode": "x"}"#).unwrap_err(),
        "invalid config: unknown field `mode`, this plugin takes no config at line 1 column 7"
    );
    assert_eq!(
        Instance::<Other>::init("[]").unwrap_err(),
        "invalid config: invalid type: sequence, \
         expected an empty object (this plugin takes no config) at line 1 column 2"
    );
    assert_eq!(
        Instance::<Other>::init("3").unwrap_err(),
        "invalid config: invalid type: integer `3`, \
         expected an empty object (this plugin takes no config) at line 1 column 1"
    );
    // Read on its own (not through `parse_config`), `null` is accepted too.
    assert_eq!(serde_json::from_str::<NoConfig>("null").unwrap(), NoConfig);
}

#[test]
fn ignored_any_accepts_every_config() {
    for config in ["", "{}", r#"{"mode": "init-fail"}"#, "[1]", "\"x\""] {
        assert!(Instance::<Lenient>::init(config).is_ok(), "{config:?}");
    }
    assert!(Instance::<Lenient>::init("{").is_err());
}

#[test]
#[should_panic(expected = "called before a successful init")]
fn hooks_before_init_trap() {
    let _ = Instance::<Counter>::init(r#"{"prefix":"fail"}"#);
    Instance::<Other>::init("").unwrap();
    // The slot now holds `Other`, so this handle's plugin is gone.
    let stale = Instance::<Counter> {
        _plugin: std::marker::PhantomData,
    };
    stale.subscribe(&Identity::anonymous(), "c");
}

#[test]
#[should_panic(expected = "on-publish returned invalid JSON")]
fn invalid_json_output_is_caught() {
    let p = Instance::<Counter>::init("").unwrap();
    p.publish(&Identity::anonymous(), "bad-json", "{}");
}

#[test]
fn logs_are_captured_per_test() {
    let host = TestHost::new();
    let p = Instance::<Counter>::init("").unwrap();
    p.publish(&Identity::user("bob"), "pass", "{}");
    warn!("careful: {}", 42);
    let logs = host.take_logs();
    assert_eq!(logs.len(), 3);
    assert_eq!(logs[0].level, Level::Info);
    assert_eq!(logs[0].message, "init with prefix n");
    assert_eq!(
        logs[1],
        LogRecord {
            level: Level::Debug,
            message: "publish".into(),
            fields: vec![
                ("channel".into(), "pass".into()),
                ("user".into(), "bob".into())
            ],
        }
    );
    assert_eq!(logs[1].field("user"), Some("bob"));
    assert_eq!(logs[2].message, "careful: 42");
    assert!(host.take_logs().is_empty());
}

#[test]
fn clock_defaults_to_real_time() {
    let _host = TestHost::new();
    let real = now_ms();
    assert!(real > 1_600_000_000_000);
    testing::set_now_ms(7);
    assert_eq!(now_ms(), 7);
    testing::advance_ms(3);
    assert_eq!(now_ms(), 10);
    testing::use_real_clock();
    assert!(now_ms() >= real);
}

#[test]
fn defaults_allow_everything() {
    let mut p = Other;
    let who = Identity::default();
    assert_eq!(who.claims, "{}");
    assert_eq!(
        p.on_connect(&ConnectInfo::default()),
        ConnectDecision::Accept
    );
    assert_eq!(p.on_subscribe(&who, "c"), SubscribeDecision::Allow);
    assert_eq!(p.on_publish(&who, "c", "{}"), PublishDecision::Pass);
    assert_eq!(
        p.on_deliver(&GroupContext::default(), "c", "{}"),
        DeliverDecision::Deliver
    );
}
