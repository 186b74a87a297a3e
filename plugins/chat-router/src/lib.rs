//! `chat-router`: validates chat messages, stamps server time and fans mentions out.
//!
//! For a publish to `chat:<room>` the data must be a JSON object with a non-empty string
//! `text`, otherwise the publish is rejected with a reason. The object gets a `"ts"` field
//! (server time, ms since the Unix epoch, replacing any client value) and is forwarded to its
//! own channel and to `<mention_prefix><name>` for every distinct `@name` in the text.
//!
//! Config (all optional): `{"mention_prefix": "user:", "max_mentions": 15}`. With the default
//! 15 a message yields at most 16 forwards, the gateway's default `plugins.max_forwards`.

use serde::Deserialize;
use switchyard_plugin_sdk::serde;
use switchyard_plugin_sdk::serde_json::Value;
use switchyard_plugin_sdk::{Identity, Outgoing, Plugin, PublishDecision, export_plugin, json};

/// Binding configuration.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_plugin_sdk::serde", default, deny_unknown_fields)]
pub struct Config {
    /// Channel prefix a mention is forwarded to: `@bob` goes to `<mention_prefix>bob`.
    pub mention_prefix: String,
    /// At most this many distinct mentions are forwarded per message; the rest are ignored.
    /// Keep `max_mentions + 1` within the gateway's `plugins.max_forwards`.
    pub max_mentions: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mention_prefix: "user:".to_owned(),
            max_mentions: 15,
        }
    }
}

/// The chat router plugin.
#[derive(Debug)]
pub struct ChatRouter {
    config: Config,
}

impl Plugin for ChatRouter {
    type Config = Config;

    fn init(config: Config) -> Result<Self, String> {
        if config.mention_prefix.is_empty() {
            return Err("invalid config: `mention_prefix` must not be empty".to_owned());
        }
        Ok(Self { config })
    }

    fn on_publish(&mut self, _who: &Identity, channel: &str, data: &str) -> PublishDecision {
        match channel.strip_prefix("chat:") {
            Some(room) if !room.is_empty() => self.route(channel, data),
            _ => PublishDecision::Pass,
        }
    }
}

impl ChatRouter {
    fn route(&self, channel: &str, data: &str) -> PublishDecision {
        let Ok(Value::Object(mut message)) = json::parse(data) else {
            return PublishDecision::reject("chat messages must be JSON objects");
        };
        let text = match message.get("text") {
            Some(Value::String(text)) if !text.trim().is_empty() => text,
            _ => return PublishDecision::reject("chat messages need a non-empty string `text`"),
        };
        let targets: Vec<String> = mentions(text)
            .into_iter()
            .take(self.config.max_mentions)
            .map(|name| format!("{}{name}", self.config.mention_prefix))
            .collect();
        message.insert(
            "ts".to_owned(),
            Value::from(switchyard_plugin_sdk::now_ms()),
        );
        let stamped = json::to_string(&Value::Object(message));
        let mut out = Vec::with_capacity(1 + targets.len());
        for target in targets {
            out.push(Outgoing::new(target, stamped.clone()));
        }
        out.insert(0, Outgoing::new(channel, stamped));
        PublishDecision::Forward(out)
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The distinct `@name` mentions in `text`, in order of first appearance.
///
/// A name is `[A-Za-z0-9_-]+`. An `@` directly after a name character (as in an e-mail
/// address, `bob@example.com`) does not start a mention.
pub fn mentions(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut found: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'@' && (i == 0 || !is_name_byte(bytes[i - 1])) {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && is_name_byte(bytes[end]) {
                end += 1;
            }
            if end > start {
                // `start..end` holds only ASCII bytes, so it is a valid `str` range.
                let name = &text[start..end];
                if !found.contains(&name) {
                    found.push(name);
                }
            }
            i = end;
        } else {
            i += 1;
        }
    }
    found
}

export_plugin!(ChatRouter);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::testing::{Instance, TestHost, new_plugin};

    fn forwarded(decision: PublishDecision) -> Vec<(String, Value)> {
        match decision {
            PublishDecision::Forward(list) => list
                .into_iter()
                .map(|o| (o.channel, json::parse(&o.data).unwrap()))
                .collect(),
            other => panic!("expected forward, got {other:?}"),
        }
    }

    #[test]
    fn stamps_and_forwards_to_room_and_mentions() {
        let host = TestHost::new();
        host.set_now_ms(1_700_000_000_123);
        let p = Instance::<ChatRouter>::init("{}").unwrap();
        let out = forwarded(p.publish(
            &Identity::user("alice"),
            "chat:lobby",
            r#"{"text": "hi @bob and @carol-1, @bob again", "ts": 5}"#,
        ));
        let channels: Vec<&str> = out.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(channels, ["chat:lobby", "user:bob", "user:carol-1"]);
        for (_, msg) in &out {
            assert_eq!(msg["ts"], 1_700_000_000_123u64);
            assert_eq!(msg["text"], "hi @bob and @carol-1, @bob again");
        }
    }

    #[test]
    fn plain_message_goes_to_its_room_only() {
        let _host = TestHost::new();
        let mut p = new_plugin::<ChatRouter>("").unwrap();
        let out = forwarded(p.on_publish(
            &Identity::anonymous(),
            "chat:r",
            r#"{"text":"mail me: bob@example.com","extra":[1]}"#,
        ));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "chat:r");
        assert_eq!(
            out[0].1["extra"],
            switchyard_plugin_sdk::serde_json::json!([1])
        );
        assert!(out[0].1["ts"].is_u64());
    }

    #[test]
    fn rejects_bad_messages() {
        let mut p = new_plugin::<ChatRouter>("{}").unwrap();
        let who = Identity::user("a");
        for data in [
            r#""just a string""#,
            "[1,2]",
            "{}",
            r#"{"text": ""}"#,
            r#"{"text": "   "}"#,
            r#"{"text": 42}"#,
        ] {
            assert!(
                matches!(
                    p.on_publish(&who, "chat:x", data),
                    PublishDecision::Reject(_)
                ),
                "{data} should be rejected"
            );
        }
        assert_eq!(
            p.on_publish(&who, "chat:x", "{}"),
            PublishDecision::reject("chat messages need a non-empty string `text`")
        );
    }

    #[test]
    fn other_channels_pass() {
        let mut p = new_plugin::<ChatRouter>("{}").unwrap();
        let who = Identity::user("a");
        assert_eq!(p.on_publish(&who, "news:x", "[1]"), PublishDecision::Pass);
        assert_eq!(p.on_publish(&who, "chat:", "[1]"), PublishDecision::Pass);
    }

    #[test]
    fn custom_prefix_and_cap() {
        let mut p =
            new_plugin::<ChatRouter>(r#"{"mention_prefix": "inbox.", "max_mentions": 1}"#).unwrap();
        let out = forwarded(p.on_publish(&Identity::user("a"), "chat:x", r#"{"text":"@x @y"}"#));
        let channels: Vec<&str> = out.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(channels, ["chat:x", "inbox.x"]);
    }

    #[test]
    fn bad_config_is_refused() {
        let err = new_plugin::<ChatRouter>(r#"{"mention_prefx": "u:"}"#).unwrap_err();
        assert!(err.contains("unknown field `mention_prefx`"), "{err}");
        assert!(new_plugin::<ChatRouter>(r#"{"mention_prefix": ""}"#).is_err());
        assert!(new_plugin::<ChatRouter>(r#"{"mention_prefix": 3}"#).is_err());
    }

    #[test]
    fn mention_parsing() {
        assert_eq!(mentions("@a @b_c @a @-x-"), ["a", "b_c", "-x-"]);
        assert_eq!(mentions("a@b.c @ @@d (@e) é@f"), ["d", "e", "f"]);
        assert!(mentions("no mentions").is_empty());
    }
}
