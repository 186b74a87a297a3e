//! `flaky` (test-only): `allow-all`, except that a publish of a JSON object whose `n` is a
//! multiple of 5 fails (the plugin panics, which traps): one call in five of a counting
//! stream. The rollout tests run it as a canary and expect its guard to roll it back.

use switchyard_plugin_sdk::serde::de::IgnoredAny;
use switchyard_plugin_sdk::{Identity, Plugin, PublishDecision, export_plugin, json};

/// Fails the publishes of every fifth `n`.
pub struct Flaky;

impl Plugin for Flaky {
    // Any config, as allow-all: it stands in under allow-all's bindings.
    type Config = IgnoredAny;

    fn init(_config: IgnoredAny) -> Result<Self, String> {
        Ok(Flaky)
    }

    fn on_publish(&mut self, _who: &Identity, _channel: &str, data: &str) -> PublishDecision {
        let n = json::parse_object(data)
            .ok()
            .and_then(|o| o.get("n").and_then(|n| n.as_u64()));
        if n.is_some_and(|n| n % 5 == 0) {
            panic!("flaky: failing on n = {n:?}, as designed");
        }
        PublishDecision::Pass
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
    }

    #[test]
    #[should_panic(expected = "as designed")]
    fn fails_every_fifth() {
        let p = Instance::<Flaky>::init("{}").unwrap();
        p.publish(&Identity::user("ann"), "c", r#"{"n":10}"#);
    }
}
