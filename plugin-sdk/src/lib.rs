//! Guest SDK for Switchyard WebAssembly channel plugins.
//!
//! A plugin is a Rust type implementing [`Plugin`], exported with [`export_plugin!`] and
//! built for `wasm32-unknown-unknown` into a WebAssembly component that implements the
//! `switchyard:plugin/plugin` world (`wit/plugin.wit`). Every hook has a default that lets
//! traffic through, so a plugin only writes the hooks it cares about:
//!
//! ```
//! use switchyard_plugin_sdk::{Identity, NoConfig, Plugin, SubscribeDecision};
//!
//! /// Only authenticated users may subscribe.
//! struct MembersOnly;
//!
//! impl Plugin for MembersOnly {
//!     type Config = NoConfig;
//!
//!     fn init(_config: NoConfig) -> Result<Self, String> {
//!         Ok(MembersOnly)
//!     }
//!
//!     fn on_subscribe(&mut self, who: &Identity, _channel: &str) -> SubscribeDecision {
//!         match who.user {
//!             Some(_) => SubscribeDecision::Allow,
//!             None => SubscribeDecision::deny("log in first"),
//!         }
//!     }
//! }
//!
//! switchyard_plugin_sdk::export_plugin!(MembersOnly);
//! ```
//!
//! The binding's config arrives already deserialized into the plugin's [`Plugin::Config`]
//! ([`NoConfig`] for none, or any `serde::Deserialize` type). Payloads are JSON text; [`json`]
//! has helpers and [`serde_json`] is re-exported.
//! The host gives plugins [`log`] (plus the [`info!`]-style macros) and [`now_ms`]; nothing
//! else (no WASI). On native targets those are replaced by the stand-ins of [`testing`], so a
//! plugin is unit-tested with plain `cargo test`.

pub mod json;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

mod config;
mod export;
mod host;
mod types;

#[cfg(test)]
mod tests;

/// The README's Rust examples, compiled as doctests so they stay correct.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use config::NoConfig;
pub use host::{log, now_ms};
pub use types::{
    ConnectDecision, ConnectInfo, DeliverDecision, GroupContext, Identity, Level, Outgoing,
    PublishDecision, SubscribeDecision,
};

/// Re-export of `serde` (for `#[serde(crate = "switchyard_plugin_sdk::serde")]`).
pub use serde;
/// Re-export of `serde_json`, so plugins need no JSON dependency of their own.
pub use serde_json;

/// A Switchyard channel plugin: one value per component instance, created by [`Plugin::init`].
///
/// Every hook has a default that lets traffic through unchanged (accept / allow / pass /
/// deliver), so implement only the hooks the plugin needs. Hooks take `&mut self`: a wasm
/// instance runs one call at a time, so the plugin may keep mutable state in `self`.
///
/// A panic (or any trap) aborts the call; the gateway treats that per its failure policy.
/// In a wasm build the panic message is first logged through the host at `error` level.
pub trait Plugin: Sized + 'static {
    /// The binding's config, deserialized by the SDK from its JSON before [`Plugin::init`].
    ///
    /// Typically a `#[derive(Deserialize)]` struct with `#[serde(default, deny_unknown_fields)]`;
    /// [`NoConfig`] for a plugin that takes none. The text is read by [`json::parse_config`]:
    /// empty or `null` reads as `{}` (the gateway passes `{}` when a binding has no `config`),
    /// and text that does not deserialize refuses the plugin with serde's message, e.g.
    /// ``invalid config: unknown field `max_lenn`, expected `max_len` at line 1 column 11``.
    type Config: serde::de::DeserializeOwned;

    /// Build the plugin from the binding's deserialized config.
    ///
    /// Called once per instance, before any hook. An `Err` refuses the plugin; the message
    /// is shown in the gateway's log. Check here what serde cannot (e.g. a non-empty string).
    fn init(config: Self::Config) -> Result<Self, String>;

    /// A client connects (only for the gateway's connect plugin). Default: accept.
    fn on_connect(&mut self, info: &ConnectInfo) -> ConnectDecision {
        let _ = info;
        ConnectDecision::Accept
    }

    /// `who` asks to subscribe to `channel`. Default: allow.
    fn on_subscribe(&mut self, who: &Identity, channel: &str) -> SubscribeDecision {
        let _ = (who, channel);
        SubscribeDecision::Allow
    }

    /// `who` publishes `data` (JSON text) to `channel`. Default: pass it on unchanged.
    fn on_publish(&mut self, who: &Identity, channel: &str, data: &str) -> PublishDecision {
        let _ = (who, channel, data);
        PublishDecision::Pass
    }

    /// `data` on `channel` is about to be delivered to `group`. Default: deliver unchanged.
    fn on_deliver(&mut self, group: &GroupContext, channel: &str, data: &str) -> DeliverDecision {
        let _ = (group, channel, data);
        DeliverDecision::Deliver
    }
}

/// Export a [`Plugin`] type as the component's `switchyard:plugin/plugin` exports.
///
/// Use it once per plugin crate, at the crate root: `export_plugin!(MyPlugin);`. In a wasm
/// build it emits the `init`, `on-connect`, `on-subscribe`, `on-publish` and `on-deliver`
/// exports; in a native build it only checks that the type implements [`Plugin`].
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            // Fails to compile, on every target, unless the type implements `Plugin`.
            const _: fn(
                <$plugin as $crate::Plugin>::Config,
            ) -> ::core::result::Result<$plugin, ::std::string::String> =
                <$plugin as $crate::Plugin>::init;
            #[allow(dead_code)]
            type __SwitchyardPluginExport = $crate::__private::Adapter<$plugin>;
            #[cfg(target_arch = "wasm32")]
    $crate::__private::export_world!(__SwitchyardPluginExport with_types_in $crate::wit);
        };
    };
}

/// Not public API: used by the macros.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{Adapter, export_world};
}

/// Bindings generated from `wit/plugin.wit`. Not public API: use the types at the crate root.
#[doc(hidden)]
#[allow(clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        world: "plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "::switchyard_plugin_sdk::wit",
        runtime_path: "crate::wit::__rt",
        ownership: Borrowing { duplicate_if_necessary: false },
    });

    pub use wit_bindgen::rt as __rt;
}
