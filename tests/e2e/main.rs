//! End-to-end tests: real gateways on loopback, real WebSocket clients.

mod support;

mod architecture;

mod cli;
mod cluster;
mod conformance;
mod console;
mod deploy;
mod hardening;
mod history;
mod hotswap;
mod lifetime;
mod plugins;
mod redis;
mod redis_support;
mod rollout;
mod soak;
mod spine;
mod tenancy;

/// An `[auth]` section accepting the harness's HS256 tokens (and anonymous clients).
pub fn plugins_auth() -> String {
    format!(
        "[auth]\nhs256_secret = {:?}\naudience = \"switchyard\"\n",
        support::SECRET
    )
}
