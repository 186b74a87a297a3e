//! What a plugin instance's store holds: its resource limits, identity for logs, and the
//! implementation of the `host` imports.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;

use super::bindings::Level;
use super::bindings::switchyard::plugin::{host, types};
use super::loaded::truncate;

/// Longest log message a plugin may emit; longer ones are cut, so a plugin cannot flood logs
/// with one call.
const MAX_LOG_BYTES: usize = 2048;
/// Fields of one log record kept; the rest are dropped.
const MAX_LOG_FIELDS: usize = 16;
/// Longest field name or value kept; longer ones are cut.
const MAX_FIELD_BYTES: usize = 256;

/// The error a plugin's memory growth past its cap traps with.
#[derive(Debug, thiserror::Error)]
#[error("plugin exceeded its memory limit of {limit} bytes (wanted {wanted})")]
pub struct MemoryExceeded {
    /// The configured cap.
    pub limit: usize,
    /// What the plugin asked for.
    pub wanted: usize,
}

/// What one plugin instance's store may hold. A component built by a JS or Python toolchain
/// is many core modules (componentize-py: ~38 instances, 2 tables), a Rust one a few.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Bytes one linear memory may grow to.
    pub max_memory: usize,
    /// Core instances (and component instances) one instantiation may create.
    pub instances: usize,
    /// Tables.
    pub tables: usize,
    /// Linear memories.
    pub memories: usize,
}

/// Per-store state: limits and the plugin's name and version for its log records.
pub struct HostState {
    /// Plugin name.
    pub plugin: Arc<str>,
    /// Plugin version (content hash prefix).
    pub version: Arc<str>,
    /// When the call in progress is to be stopped; checked each time the epoch advances.
    pub deadline: Instant,
    limits: StoreLimits,
}

impl HostState {
    /// State for a store of `plugin`/`version` within `limits`.
    pub fn new(plugin: Arc<str>, version: Arc<str>, limits: StoreLimits) -> Self {
        Self {
            plugin,
            version,
            deadline: Instant::now(),
            limits,
        }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.max_memory {
            // Trap rather than return -1: a guest allocator that sees -1 aborts anyway, and the
            // trap names the real cause.
            return Err(MemoryExceeded {
                limit: self.limits.max_memory,
                wanted: desired,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        self.limits.instances
    }

    fn tables(&self) -> usize {
        self.limits.tables
    }

    fn memories(&self) -> usize {
        self.limits.memories
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let message = truncate(message, MAX_LOG_BYTES);
        let fields: Vec<String> = fields
            .into_iter()
            .take(MAX_LOG_FIELDS)
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    truncate(k, MAX_FIELD_BYTES),
                    truncate(v, MAX_FIELD_BYTES)
                )
            })
            .collect();
        let fields = fields.join(" ");
        let (plugin, version) = (&*self.plugin, &*self.version);
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin, version, fields, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, version, fields, "{message}"),
            Level::Info => tracing::info!(target: "plugin", plugin, version, fields, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, version, fields, "{message}"),
            Level::Error => tracing::error!(target: "plugin", plugin, version, fields, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}
