//! `{{name}}`: upper-cases the `text` of every message published to the channels it is bound
//! to (a starting point: edit `on_publish`, or add `on_subscribe`, `on_deliver`, `on_connect`).

use switchyard_plugin_sdk::serde_json::Value;
use switchyard_plugin_sdk::{
    Identity, NoConfig, Outgoing, Plugin, PublishDecision, export_plugin, json,
};

/// The plugin.
pub struct Shout;

impl Plugin for Shout {
    type Config = NoConfig;

    fn init(_config: NoConfig) -> Result<Self, String> {
        Ok(Shout)
    }

    fn on_publish(&mut self, _who: &Identity, channel: &str, data: &str) -> PublishDecision {
        let Ok(mut msg) = json::parse_object(data) else {
            return PublishDecision::Pass;
        };
        let Some(Value::String(text)) = msg.get("text") else {
            return PublishDecision::Pass;
        };
        let loud = text.to_uppercase();
        msg.insert("text".into(), Value::String(loud));
        PublishDecision::forward_one(Outgoing::json(channel, &Value::Object(msg)))
    }
}

export_plugin!(Shout);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::testing::Instance;

    #[test]
    fn shouts() {
        let p = Instance::<Shout>::init("{}").unwrap();
        let d = p.publish(&Identity::user("ann"), "chat:1", r#"{"text":"hi"}"#);
        assert_eq!(
            d,
            PublishDecision::forward_one(Outgoing::new("chat:1", r#"{"text":"HI"}"#))
        );
    }
}
