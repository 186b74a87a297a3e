//! `allow-all`: lets everything through without looking at it.
//!
//! Every hook keeps the SDK's default (accept / allow / pass / deliver) and nothing is
//! parsed, so this is the baseline for measuring the cost of the plugin machinery itself.

use switchyard_plugin_sdk::serde::de::IgnoredAny;
use switchyard_plugin_sdk::{Plugin, export_plugin};

/// The pass-through plugin; it has no state and ignores its config.
pub struct AllowAll;

impl Plugin for AllowAll {
    // Not `NoConfig`: any config is accepted and skipped unread, so the baseline can stand in
    // under a binding written for another plugin (the hot-swap tests do exactly that).
    type Config = IgnoredAny;

    fn init(_config: IgnoredAny) -> Result<Self, String> {
        Ok(AllowAll)
    }
}

export_plugin!(AllowAll);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::testing::{Instance, TestHost, new_plugin};
    use switchyard_plugin_sdk::{
        ConnectDecision, ConnectInfo, DeliverDecision, GroupContext, Identity, PublishDecision,
        SubscribeDecision,
    };

    #[test]
    fn everything_passes() {
        let host = TestHost::new();
        let p = Instance::<AllowAll>::init("{}").unwrap();
        let who = Identity::user("alice");
        assert_eq!(p.connect(&ConnectInfo::default()), ConnectDecision::Accept);
        assert_eq!(p.subscribe(&who, "chat:x"), SubscribeDecision::Allow);
        assert_eq!(
            p.publish(&who, "chat:x", "not even json"),
            PublishDecision::Pass
        );
        assert_eq!(
            p.deliver(&GroupContext::default(), "chat:x", "{}"),
            DeliverDecision::Deliver
        );
        assert!(host.take_logs().is_empty());
    }

    #[test]
    fn any_config_is_accepted() {
        assert!(new_plugin::<AllowAll>("").is_ok());
        assert!(new_plugin::<AllowAll>(r#"{"whatever": 1}"#).is_ok());
    }
}
