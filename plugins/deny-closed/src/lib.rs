//! `deny-closed` (test-only): `allow-all`, except that subscribing to a channel whose name
//! ends in `:closed` is refused. The rollout tests run it as a shadow of `allow-all`: the two
//! disagree on exactly those subscribes.

use switchyard_plugin_sdk::serde::de::IgnoredAny;
use switchyard_plugin_sdk::{Identity, Plugin, SubscribeDecision, export_plugin};

/// Allows everything but subscribes to `*:closed`.
pub struct DenyClosed;

impl Plugin for DenyClosed {
    // Any config, as allow-all: it stands in under allow-all's bindings.
    type Config = IgnoredAny;

    fn init(_config: IgnoredAny) -> Result<Self, String> {
        Ok(DenyClosed)
    }

    fn on_subscribe(&mut self, _who: &Identity, channel: &str) -> SubscribeDecision {
        match channel.ends_with(":closed") {
            true => SubscribeDecision::Deny(format!("{channel} is closed")),
            false => SubscribeDecision::Allow,
        }
    }
}

export_plugin!(DenyClosed);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::PublishDecision;
    use switchyard_plugin_sdk::testing::Instance;

    #[test]
    fn only_closed_channels_are_refused() {
        let p = Instance::<DenyClosed>::init("{}").unwrap();
        let who = Identity::user("ann");
        assert_eq!(p.subscribe(&who, "r:open"), SubscribeDecision::Allow);
        assert_eq!(
            p.subscribe(&who, "r:closed"),
            SubscribeDecision::Deny("r:closed is closed".into())
        );
        assert_eq!(p.publish(&who, "r:closed", "{}"), PublishDecision::Pass);
    }
}
