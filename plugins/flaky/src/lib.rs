//! `flaky` (test-only): `allow-all`, failing on purpose where a JSON object asks for it:
//! - publish: an object whose `n` is a multiple of 5 fails (the plugin panics, which traps):
//!   one call in five of a counting stream. The rollout tests run it as a canary and expect its
//!   guard to roll it back;
//! - deliver: an object with `"once": true` fails the first time this instance sees its `n`
//!   (by returning invalid JSON, which keeps the instance), and one with `"always": true`
//!   every time. The history tests expect a subscriber to get the first from history anyway.

use std::collections::HashSet;

use switchyard_plugin_sdk::serde::de::IgnoredAny;
use switchyard_plugin_sdk::serde_json::Value;
use switchyard_plugin_sdk::{
    DeliverDecision, GroupContext, Identity, Plugin, PublishDecision, export_plugin, json,
};

/// Fails where its input asks for it; remembers which `n` it failed once.
pub struct Flaky {
    failed_once: HashSet<u64>,
}

fn field(data: &str, name: &str) -> Option<Value> {
    json::parse_object(data).ok()?.remove(name)
}

impl Plugin for Flaky {
    // Any config, as allow-all: it stands in under allow-all's bindings.
    type Config = IgnoredAny;

    fn init(_config: IgnoredAny) -> Result<Self, String> {
        Ok(Flaky {
            failed_once: HashSet::new(),
        })
    }

    fn on_publish(&mut self, _who: &Identity, _channel: &str, data: &str) -> PublishDecision {
        let n = field(data, "n").and_then(|n| n.as_u64());
        if n.is_some_and(|n| n % 5 == 0) {
            panic!("flaky: failing on n = {n:?}, as designed");
        }
        PublishDecision::Pass
    }

    fn on_deliver(&mut self, _group: &GroupContext, _channel: &str, data: &str) -> DeliverDecision {
        let Ok(object) = json::parse_object(data) else {
            return DeliverDecision::Deliver;
        };
        let n = object.get("n").and_then(Value::as_u64).unwrap_or(0);
        let fails = object.get("always") == Some(&Value::Bool(true))
            || (object.get("once") == Some(&Value::Bool(true)) && self.failed_once.insert(n));
        match fails {
            // Not JSON: the gateway refuses the output, a failure that keeps the instance.
            true => DeliverDecision::Rewrite("flaky: not json".to_owned()),
            false => DeliverDecision::Deliver,
        }
    }
}

export_plugin!(Flaky);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::testing::Instance;

    #[test]
    fn passes_what_it_does_not_fail() {
        let p = Instance::<Flaky>::init("{}").unwrap();
        let who = Identity::user("ann");
        assert_eq!(p.publish(&who, "c", r#"{"n":1}"#), PublishDecision::Pass);
        assert_eq!(p.publish(&who, "c", "[5]"), PublishDecision::Pass);
        let group = GroupContext::default();
        assert_eq!(
            p.deliver(&group, "c", r#"{"n":5}"#),
            DeliverDecision::Deliver
        );
    }

    #[test]
    #[should_panic(expected = "as designed")]
    fn fails_every_fifth_publish() {
        let p = Instance::<Flaky>::init("{}").unwrap();
        p.publish(&Identity::user("ann"), "c", r#"{"n":10}"#);
    }

    #[test]
    fn fails_a_delivery_once_or_always_as_asked() {
        // Directly, not through the harness: it refuses the invalid output as the gateway does.
        let mut p = switchyard_plugin_sdk::testing::new_plugin::<Flaky>("{}").unwrap();
        let group = GroupContext::default();
        let bad = DeliverDecision::Rewrite("flaky: not json".to_owned());
        let mut deliver = |data: &str| p.on_deliver(&group, "c", data);
        assert_eq!(deliver(r#"{"n":3,"once":true}"#), bad);
        assert_eq!(deliver(r#"{"n":3,"once":true}"#), DeliverDecision::Deliver);
        assert_eq!(deliver(r#"{"n":4,"once":true}"#), bad);
        assert_eq!(deliver(r#"{"n":4,"always":true}"#), bad);
        assert_eq!(deliver(r#"{"n":4,"always":true}"#), bad);
    }
}
