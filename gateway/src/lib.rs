//! Switchyard: a real-time WebSocket message gateway whose per-channel routing,
//! authorization and transformation run as WebAssembly plugins.
//!
//! Data flows one way: socket -> session ([`ws`]) -> publish path ([`publish`], the publish
//! hook) -> broker ([`broker`]) -> dispatcher ([`dispatch`]) -> hub ([`hub`], the deliver
//! hook) -> session outboxes -> fan-out lanes -> sockets ([`ws`]). docs/architecture.md has
//! the module map.

pub mod admin;
pub mod api;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod connections;
pub mod console;
pub mod dispatch;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod history;
pub mod hub;
pub mod identity;
pub mod membership;
pub mod metrics;
pub mod namespace;
pub mod node;
pub mod plugins;
pub mod presence;
pub mod protocol;
pub mod publish;
pub mod redis_link;
pub mod replay;
pub mod rollout;
pub mod serve;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod toolkit;
pub mod watch;
pub mod ws;

pub use cli::Cli;
pub use config::Config;
pub use server::Gateway;
