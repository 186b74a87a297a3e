//! End-to-end tests: real gateways on loopback, real WebSocket clients.

mod support;

mod cli;
mod plugins;
mod redis;
mod redis_support;
mod spine;
