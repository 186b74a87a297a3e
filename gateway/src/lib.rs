//! Switchyard: a real-time WebSocket message gateway whose per-channel routing,
//! authorization and transformation run as WebAssembly plugins.
//!
//! Data flows one way: socket -> session ([`ws`]) -> broker ([`broker`]) -> dispatcher
//! ([`dispatch`]) -> hub ([`hub`]) -> session outboxes ([`outbox`]) -> sockets.

pub mod admin;
pub mod api;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod connections;
pub mod dispatch;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod hub;
pub mod identity;
pub mod metrics;
pub mod namespace;
pub mod node;
pub mod outbox;
pub mod plugins;
pub mod presence;
pub mod protocol;
pub mod publish;
pub mod redis_link;
pub mod rollout;
pub mod serve;
pub mod server;
pub mod telemetry;
pub mod wire;
pub mod ws;

pub use cli::Cli;
pub use config::Config;
pub use server::Gateway;
