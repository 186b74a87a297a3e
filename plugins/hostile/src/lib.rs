//! `hostile`: a deliberately misbehaving plugin for testing the gateway's sandbox. Test only.
//!
//! Config: `{"mode": "<mode>", "hooks": ["publish", "subscribe", "deliver", "connect"]}`.
//! `hooks` defaults to all four; hooks not listed behave like `allow-all`. Modes:
//!
//! | mode        | on a selected hook                                                        |
//! |-------------|---------------------------------------------------------------------------|
//! | `none`      | nothing (default): pass through                                           |
//! | `loop`      | spins forever (stopped only by the host's fuel / epoch deadline)          |
//! | `memory`    | allocates 8 MiB blocks without bound (stopped by the host's memory cap)   |
//! | `trap`      | executes `unreachable` at once (native builds panic instead)              |
//! | `panic`     | panics: the SDK logs the message through `host.log`, then traps           |
//! | `oversize`  | answers with one huge string of `bytes` bytes (default 16 MiB): a forward |
//! |             | whose data is a JSON string, a rewrite, a deny reason, a reject reason    |
//! | `flood`     | publish: forwards `forwards` (default 100,000) copies of `{}` to its own  |
//! |             | channel; other hooks as `oversize`                                        |
//! | `init-fail` | `init` returns an error (hooks are never reached)                         |
//! | `init-slow` | `init` busy-waits `ms` milliseconds on the host clock, then succeeds       |
//! | `slow`      | busy-waits `ms` milliseconds (default 5) on the host clock, then passes    |
//! | `deep`      | answers with JSON nested `depth` levels (default 1,000) where `oversize`   |
//! |             | answers with its huge string                                              |
//!
//! Optional knobs: `"bytes"` for `oversize`/`flood`, `"forwards"` for `flood`, `"ms"` for
//! `slow`, `"depth"` for `deep`.

use std::hint::black_box;

use serde::Deserialize;
use switchyard_plugin_sdk::serde;
use switchyard_plugin_sdk::{
    ConnectDecision, ConnectInfo, DeliverDecision, GroupContext, Identity, Outgoing, Plugin,
    PublishDecision, SubscribeDecision, export_plugin,
};

/// What the plugin does on its selected hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(crate = "switchyard_plugin_sdk::serde", rename_all = "kebab-case")]
pub enum Mode {
    /// Behave.
    #[default]
    None,
    /// Spin forever.
    Loop,
    /// Allocate without bound.
    Memory,
    /// Trap at once with `unreachable`.
    Trap,
    /// Panic (logged, then a trap).
    Panic,
    /// Return one huge string.
    Oversize,
    /// Return a huge number of forwards from publish.
    Flood,
    /// Fail `init`.
    InitFail,
    /// Take `ms` milliseconds, then behave.
    Slow,
    /// `init` takes `ms` milliseconds, then succeeds.
    InitSlow,
    /// Return deeply nested JSON.
    Deep,
}

/// A hook the misbehaviour can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(crate = "switchyard_plugin_sdk::serde", rename_all = "kebab-case")]
pub enum Hook {
    /// `on-connect`.
    Connect,
    /// `on-subscribe`.
    Subscribe,
    /// `on-publish`.
    Publish,
    /// `on-deliver`.
    Deliver,
}

/// Binding configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "switchyard_plugin_sdk::serde", default, deny_unknown_fields)]
pub struct Config {
    /// What to do.
    pub mode: Mode,
    /// Where to do it.
    pub hooks: Vec<Hook>,
    /// Size of the string `oversize` returns.
    pub bytes: usize,
    /// Number of messages `flood` forwards.
    pub forwards: usize,
    /// Milliseconds `slow` takes per call.
    pub ms: u64,
    /// Nesting of the JSON `deep` returns.
    pub depth: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::None,
            hooks: vec![Hook::Connect, Hook::Subscribe, Hook::Publish, Hook::Deliver],
            bytes: 16 << 20,
            forwards: 100_000,
            ms: 5,
            depth: 1_000,
        }
    }
}

/// The hostile plugin.
#[derive(Debug)]
pub struct Hostile {
    config: Config,
}

impl Plugin for Hostile {
    type Config = Config;

    fn init(config: Config) -> Result<Self, String> {
        if config.mode == Mode::InitFail {
            return Err("hostile plugin: init-fail mode refuses to start".to_owned());
        }
        if config.mode == Mode::InitSlow {
            busy_wait(config.ms);
        }
        Ok(Self { config })
    }

    fn on_connect(&mut self, _info: &ConnectInfo) -> ConnectDecision {
        match self.misbehave(Hook::Connect) {
            Some(big) => ConnectDecision::Reject(big),
            None => ConnectDecision::Accept,
        }
    }

    fn on_subscribe(&mut self, _who: &Identity, _channel: &str) -> SubscribeDecision {
        match self.misbehave(Hook::Subscribe) {
            Some(big) => SubscribeDecision::Deny(big),
            None => SubscribeDecision::Allow,
        }
    }

    fn on_publish(&mut self, _who: &Identity, channel: &str, _data: &str) -> PublishDecision {
        if self.config.mode == Mode::Flood && self.selected(Hook::Publish) {
            let one = Outgoing::new(channel, "{}");
            return PublishDecision::Forward(vec![one; self.config.forwards]);
        }
        match self.misbehave(Hook::Publish) {
            Some(big) => PublishDecision::forward_one(Outgoing::new(channel, big)),
            None => PublishDecision::Pass,
        }
    }

    fn on_deliver(
        &mut self,
        _group: &GroupContext,
        _channel: &str,
        _data: &str,
    ) -> DeliverDecision {
        match self.misbehave(Hook::Deliver) {
            Some(big) => DeliverDecision::Rewrite(big),
            None => DeliverDecision::Deliver,
        }
    }
}

impl Hostile {
    fn selected(&self, hook: Hook) -> bool {
        self.config.hooks.contains(&hook)
    }

    /// Misbehave on `hook` if it is selected. Returns the huge string to answer with for
    /// `oversize`/`flood`, `None` to pass through; the other modes never return.
    fn misbehave(&self, hook: Hook) -> Option<String> {
        if !self.selected(hook) {
            return None;
        }
        match self.config.mode {
            Mode::None | Mode::InitFail | Mode::InitSlow => None,
            Mode::Loop => spin(),
            Mode::Memory => hog(),
            Mode::Trap => trap(),
            Mode::Panic => panic!("hostile plugin: deliberate panic in {hook:?}"),
            Mode::Oversize | Mode::Flood => Some(huge_json_string(self.config.bytes)),
            Mode::Slow => {
                busy_wait(self.config.ms);
                None
            }
            Mode::Deep => Some(nested_json(self.config.depth)),
        }
    }
}

/// A valid JSON string literal (quotes included) of exactly `max(bytes, 2)` bytes.
pub fn huge_json_string(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes.max(2));
    s.push('"');
    s.extend(std::iter::repeat_n('x', bytes.saturating_sub(2)));
    s.push('"');
    s
}

/// `[[...[]...]]`, `depth` arrays deep.
pub fn nested_json(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Spins until `ms` milliseconds have passed on the host's clock.
fn busy_wait(ms: u64) {
    let until = switchyard_plugin_sdk::now_ms() + ms;
    while switchyard_plugin_sdk::now_ms() < until {
        black_box(());
    }
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

fn hog() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(vec![0xA5; 8 << 20]);
        black_box(&blocks);
    }
}

#[cfg(target_arch = "wasm32")]
fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() -> ! {
    panic!("hostile plugin: trap (`unreachable` in a wasm build)")
}

export_plugin!(Hostile);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::testing::{Instance, new_plugin};

    fn who() -> Identity {
        Identity::user("mallory")
    }

    #[test]
    fn none_passes_everything() {
        let p = Instance::<Hostile>::init("").unwrap();
        assert_eq!(p.connect(&ConnectInfo::default()), ConnectDecision::Accept);
        assert_eq!(p.subscribe(&who(), "c"), SubscribeDecision::Allow);
        assert_eq!(p.publish(&who(), "c", "{}"), PublishDecision::Pass);
        assert_eq!(
            p.deliver(&GroupContext::default(), "c", "{}"),
            DeliverDecision::Deliver
        );
    }

    #[test]
    fn init_fail() {
        let err = new_plugin::<Hostile>(r#"{"mode": "init-fail"}"#).unwrap_err();
        assert!(err.contains("init-fail"), "{err}");
    }

    #[test]
    fn config_is_checked() {
        assert!(new_plugin::<Hostile>(r#"{"mode": "explode"}"#).is_err());
        assert!(new_plugin::<Hostile>(r#"{"mode": "loop", "hooks": ["teardown"]}"#).is_err());
        let p = new_plugin::<Hostile>(r#"{"mode": "loop", "hooks": ["publish"]}"#).unwrap();
        assert_eq!(p.config.hooks, [Hook::Publish]);
    }

    #[test]
    fn unselected_hooks_pass_through() {
        // Would spin forever on publish; the other hooks must not.
        let p = Instance::<Hostile>::init(r#"{"mode": "loop", "hooks": ["publish"]}"#).unwrap();
        assert_eq!(p.subscribe(&who(), "c"), SubscribeDecision::Allow);
        assert_eq!(p.connect(&ConnectInfo::default()), ConnectDecision::Accept);
        assert_eq!(
            p.deliver(&GroupContext::default(), "c", "{}"),
            DeliverDecision::Deliver
        );
    }

    #[test]
    #[should_panic(expected = "hostile plugin: trap")]
    fn trap_panics_natively() {
        let mut p = new_plugin::<Hostile>(r#"{"mode": "trap", "hooks": ["subscribe"]}"#).unwrap();
        p.on_subscribe(&who(), "c");
    }

    #[test]
    #[should_panic(expected = "deliberate panic in Deliver")]
    fn panic_mode() {
        let mut p = new_plugin::<Hostile>(r#"{"mode": "panic"}"#).unwrap();
        p.on_deliver(&GroupContext::default(), "c", "{}");
    }

    #[test]
    fn oversize_outputs() {
        let p = Instance::<Hostile>::init(r#"{"mode": "oversize"}"#).unwrap();
        let PublishDecision::Forward(out) = p.publish(&who(), "c", "{}") else {
            panic!("expected forward");
        };
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data.len(), 16 << 20);
        let DeliverDecision::Rewrite(text) = p.deliver(&GroupContext::default(), "c", "{}") else {
            panic!("expected rewrite");
        };
        assert_eq!(text.len(), 16 << 20);
    }

    #[test]
    fn flood_forwards() {
        let mut p = new_plugin::<Hostile>(r#"{"mode": "flood", "hooks": ["publish"]}"#).unwrap();
        let PublishDecision::Forward(out) = p.on_publish(&who(), "c", "{}") else {
            panic!("expected forward");
        };
        assert_eq!(out.len(), 100_000);
        assert_eq!(out[99_999], Outgoing::new("c", "{}"));
        let mut p = new_plugin::<Hostile>(r#"{"mode": "oversize", "bytes": 10}"#).unwrap();
        assert_eq!(
            p.on_subscribe(&who(), "c"),
            SubscribeDecision::Deny("\"xxxxxxxx\"".to_owned())
        );
    }

    #[test]
    fn slow_takes_its_time_on_the_host_clock_then_passes() {
        switchyard_plugin_sdk::testing::use_real_clock();
        let mut p =
            new_plugin::<Hostile>(r#"{"mode": "slow", "ms": 3, "hooks": ["deliver"]}"#).unwrap();
        let started = switchyard_plugin_sdk::now_ms();
        assert_eq!(
            p.on_deliver(&GroupContext::default(), "c", "{}"),
            DeliverDecision::Deliver
        );
        assert!(switchyard_plugin_sdk::now_ms() >= started + 3);
    }

    #[test]
    fn deep_answers_nested_json() {
        let mut p = new_plugin::<Hostile>(r#"{"mode": "deep", "depth": 3}"#).unwrap();
        assert_eq!(
            p.on_deliver(&GroupContext::default(), "c", "{}"),
            DeliverDecision::Rewrite("[[[]]]".to_owned())
        );
    }
}
