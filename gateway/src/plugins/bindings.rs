//! Host bindings generated from the plugin contract in `plugin-sdk/wit` (the one source of
//! truth shared with the guest SDK).

// The generated items carry the WIT's doc comments where it has them; the rest (indices,
// pre-instantiation helpers) are wasmtime's boilerplate.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit",
    world: "plugin",
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub use self::switchyard::plugin::types::{IdentityParam, IdentityResult, Level, Outgoing};
