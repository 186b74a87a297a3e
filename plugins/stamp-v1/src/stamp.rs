//! The shared body of the `stamp-v1` / `stamp-v2` test plugins.

use switchyard_plugin_sdk::serde_json::Value;
use switchyard_plugin_sdk::{Identity, Outgoing, Plugin, PublishDecision, json};

/// Stamps `"v": V` into every published JSON object, so a test can tell which version of the
/// plugin handled each message.
pub struct Stamp<const V: u64>;

impl<const V: u64> Plugin for Stamp<V> {
    fn init(_config: &str) -> Result<Self, String> {
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
