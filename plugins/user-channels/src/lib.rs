//! `user-channels`: a user's private channel is only for that user.
//!
//! A subscribe to `user:<id>` is allowed only if the subscriber's identity has `user == <id>`;
//! everyone else (including anonymous connections) is denied with a reason. Subscribes to any
//! other channel, and every other hook, are allowed.
//!
//! Config (optional): `{"prefix": "user:"}`.

use serde::Deserialize;
use switchyard_plugin_sdk::serde;
use switchyard_plugin_sdk::{Identity, Plugin, SubscribeDecision, export_plugin};

/// Binding configuration.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_plugin_sdk::serde", default, deny_unknown_fields)]
pub struct Config {
    /// Channels starting with this prefix are private to the user named by the rest.
    pub prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prefix: "user:".to_owned(),
        }
    }
}

/// The user-channels plugin.
#[derive(Debug)]
pub struct UserChannels {
    prefix: String,
}

impl Plugin for UserChannels {
    type Config = Config;

    fn init(Config { prefix }: Config) -> Result<Self, String> {
        if prefix.is_empty() {
            return Err("invalid config: `prefix` must not be empty".to_owned());
        }
        Ok(Self { prefix })
    }

    fn on_subscribe(&mut self, who: &Identity, channel: &str) -> SubscribeDecision {
        let Some(owner) = channel.strip_prefix(self.prefix.as_str()) else {
            return SubscribeDecision::Allow;
        };
        match who.user_id() {
            Some(user) if !owner.is_empty() && user == owner => SubscribeDecision::Allow,
            Some(_) => SubscribeDecision::deny(format!("{channel} is private to its user")),
            None => {
                SubscribeDecision::deny(format!("{channel} is private: authenticate as its user"))
            }
        }
    }
}

export_plugin!(UserChannels);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::testing::{Instance, new_plugin};

    #[test]
    fn owner_only() {
        let p = Instance::<UserChannels>::init("{}").unwrap();
        assert_eq!(
            p.subscribe(&Identity::user("alice"), "user:alice"),
            SubscribeDecision::Allow
        );
        assert_eq!(
            p.subscribe(&Identity::user("bob"), "user:alice"),
            SubscribeDecision::deny("user:alice is private to its user")
        );
        assert!(matches!(
            p.subscribe(&Identity::anonymous(), "user:alice"),
            SubscribeDecision::Deny(_)
        ));
        // The id must match exactly, not as a prefix.
        assert!(matches!(
            p.subscribe(&Identity::user("alice"), "user:alice2"),
            SubscribeDecision::Deny(_)
        ));
        assert!(matches!(
            p.subscribe(&Identity::user(""), "user:"),
            SubscribeDecision::Deny(_)
        ));
    }

    #[test]
    fn other_channels_allowed() {
        let mut p = new_plugin::<UserChannels>("").unwrap();
        let anon = Identity::anonymous();
        assert_eq!(p.on_subscribe(&anon, "chat:x"), SubscribeDecision::Allow);
        assert_eq!(p.on_subscribe(&anon, "users:x"), SubscribeDecision::Allow);
    }

    #[test]
    fn custom_prefix() {
        let mut p = new_plugin::<UserChannels>(r#"{"prefix": "inbox."}"#).unwrap();
        let bob = Identity::user("bob");
        assert_eq!(p.on_subscribe(&bob, "inbox.bob"), SubscribeDecision::Allow);
        assert!(matches!(
            p.on_subscribe(&bob, "inbox.eve"),
            SubscribeDecision::Deny(_)
        ));
        assert_eq!(p.on_subscribe(&bob, "user:eve"), SubscribeDecision::Allow);
        assert!(new_plugin::<UserChannels>(r#"{"prefix": ""}"#).is_err());
    }
}
