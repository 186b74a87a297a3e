//! `tenant-guard`: keeps tenants apart on one gateway.
//!
//! - Channels `<prefix><tenant>:...` (default prefix `tenant:`) may be subscribed and published
//!   only by connections whose identity has that tenant; others are denied with a reason.
//! - On every other channel, a message whose data is an object with a string `"tenant"` field is
//!   delivered only to that tenant's subscribers (the deliver hook runs once per tenant group),
//!   so a shared channel can carry per-tenant messages.
//! - There, a message with an object `"views"` field (`{"views": {"acme": A, "beta": B}}`) is
//!   one message with a view per tenant: each tenant's subscribers receive only their view
//!   (`A`, rewritten as the whole message), and tenants without a view receive nothing.
//!
//! Config (optional): `{"prefix": "tenant:"}`.

use switchyard_plugin_sdk::serde::Deserialize;
use switchyard_plugin_sdk::{
    DeliverDecision, GroupContext, Identity, Plugin, PublishDecision, SubscribeDecision,
    export_plugin, json,
};

/// Binding configuration.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_plugin_sdk::serde", default, deny_unknown_fields)]
pub struct Config {
    /// Channels `<prefix><tenant>:...` belong to `<tenant>`.
    pub prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prefix: "tenant:".to_owned(),
        }
    }
}

/// The tenant isolation plugin.
pub struct TenantGuard {
    config: Config,
}

impl TenantGuard {
    /// The tenant owning `channel`, if it is a tenant channel.
    fn owner<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let rest = channel.strip_prefix(self.config.prefix.as_str())?;
        Some(rest.split(':').next().unwrap_or(rest))
    }

    fn check(&self, who: &Identity, channel: &str) -> Result<(), String> {
        match self.owner(channel) {
            Some(owner) if who.tenant_id() != Some(owner) => {
                Err(format!("{channel} belongs to tenant {owner}"))
            }
            _ => Ok(()),
        }
    }
}

impl Plugin for TenantGuard {
    type Config = Config;

    fn init(config: Config) -> Result<Self, String> {
        Ok(TenantGuard { config })
    }

    fn on_subscribe(&mut self, who: &Identity, channel: &str) -> SubscribeDecision {
        match self.check(who, channel) {
            Ok(()) => SubscribeDecision::Allow,
            Err(reason) => SubscribeDecision::deny(reason),
        }
    }

    fn on_publish(&mut self, who: &Identity, channel: &str, _data: &str) -> PublishDecision {
        match self.check(who, channel) {
            Ok(()) => PublishDecision::Pass,
            Err(reason) => PublishDecision::reject(reason),
        }
    }

    fn on_deliver(&mut self, group: &GroupContext, channel: &str, data: &str) -> DeliverDecision {
        if self.owner(channel).is_some()
            || !(data.contains("\"tenant\"") || data.contains("\"views\""))
        {
            return DeliverDecision::Deliver;
        }
        let Ok(msg) = json::parse_object(data) else {
            return DeliverDecision::Deliver;
        };
        if let Some(views) = msg.get("views").and_then(|v| v.as_object()) {
            let view = group.tenant.as_deref().and_then(|t| views.get(t));
            return match view {
                Some(view) => DeliverDecision::Rewrite(json::to_string(view)),
                None => DeliverDecision::Skip,
            };
        }
        match msg.get("tenant").and_then(|t| t.as_str()) {
            Some(t) if group.tenant.as_deref() != Some(t) => DeliverDecision::Skip,
            _ => DeliverDecision::Deliver,
        }
    }
}

export_plugin!(TenantGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::testing::Instance;

    #[test]
    fn tenants_stay_apart() {
        let p = Instance::<TenantGuard>::init("{}").unwrap();
        let acme = Identity::user("ann").with_tenant("acme");
        assert_eq!(
            p.subscribe(&acme, "tenant:acme:orders"),
            SubscribeDecision::Allow
        );
        assert!(matches!(
            p.subscribe(&acme, "tenant:beta:orders"),
            SubscribeDecision::Deny(_)
        ));
        assert!(matches!(
            p.publish(&Identity::anonymous(), "tenant:acme:x", "1"),
            PublishDecision::Reject(_)
        ));
        assert_eq!(p.publish(&acme, "news", "1"), PublishDecision::Pass);
        let group = |t: &str| GroupContext {
            key: String::new(),
            tenant: Some(t.to_owned()),
        };
        assert_eq!(
            p.deliver(&group("acme"), "news", r#"{"tenant":"acme"}"#),
            DeliverDecision::Deliver
        );
        assert_eq!(
            p.deliver(&group("beta"), "news", r#"{"tenant":"acme"}"#),
            DeliverDecision::Skip
        );
        assert_eq!(
            p.deliver(&group("beta"), "news", r#"{"all":1}"#),
            DeliverDecision::Deliver
        );
        let views = r#"{"views":{"acme":{"n":1},"beta":2}}"#;
        assert_eq!(
            p.deliver(&group("acme"), "news", views),
            DeliverDecision::Rewrite(r#"{"n":1}"#.to_owned())
        );
        assert_eq!(
            p.deliver(&group("beta"), "news", views),
            DeliverDecision::Rewrite("2".to_owned())
        );
        assert_eq!(
            p.deliver(&group("cora"), "news", views),
            DeliverDecision::Skip
        );
    }
}
