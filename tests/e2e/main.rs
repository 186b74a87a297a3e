//! End-to-end tests: real gateways on loopback, real WebSocket clients.

mod support;

mod cli;
mod plugins;
mod spine;
