//! The shared body of the `stamp-v1` / `stamp-v2` test plugins, which differ only in `V`.

use switchyard_plugin_sdk::serde::de::IgnoredAny;
use switchyard_plugin_sdk::serde_json::Value;
use switchyard_plugin_sdk::{Identity, Outgoing, Plugin, PublishDecision, json};

/// Stamps `"v": V` into every published JSON object, so a test can tell which version of the
/// plugin handled each message.
pub struct Stamp<const V: u64>;

impl<const V: u64> Plugin for Stamp<V> {
    // Any config is accepted and ignored, as it was before configs were typed, so swapping a
    // stamp in under an existing binding never fails on that binding's config.
    type Config = IgnoredAny;

    fn init(_config: IgnoredAny) -> Result<Self, String> {
        Ok(Stamp)
    }

    fn on_publish(&mut self, _who: &Identity, channel: &str, data: &str) -> PublishDecision {
        let Ok(mut msg) = json::parse_object(data) else {
            return PublishDecision::reject("stamp: data must be a JSON object");
        };
        msg.insert("v".to_owned(), Value::from(V));
        PublishDecision::forward_one(Outgoing::json(channel, &Value::Object(msg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::testing::Instance;

    #[test]
    fn stamps_objects_and_refuses_the_rest() {
        let p = Instance::<Stamp<7>>::init("{}").unwrap();
        let who = Identity::anonymous();
        assert_eq!(
            p.publish(&who, "s", r#"{"a":1,"v":0}"#),
            PublishDecision::forward_one(Outgoing::new("s", r#"{"a":1,"v":7}"#))
        );
        assert_eq!(
            p.publish(&who, "s", "[1]"),
            PublishDecision::reject("stamp: data must be a JSON object")
        );
    }

    #[test]
    fn any_config_is_accepted() {
        for config in ["", "{}", r#"{"mode": "init-fail"}"#] {
            assert!(Instance::<Stamp<1>>::init(config).is_ok(), "{config:?}");
        }
    }
}
