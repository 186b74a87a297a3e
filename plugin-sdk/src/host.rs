//! The functions the gateway provides to plugins: logging and the clock.
//!
//! In a wasm build these call the component's `switchyard:plugin/host` imports. In a native
//! build (unit tests) they are served by [`crate::testing`]: logs are captured per thread and
//! the clock can be faked.

use crate::Level;

/// Emit a structured log record; it lands in the gateway's log with the plugin's name and version.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    imp::log(level, message, fields);
}

/// Current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::Level;
    use crate::wit::switchyard::plugin::host;

    pub(super) fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        host::log(level.into(), message, fields);
    }

    pub(super) fn now_ms() -> u64 {
        host::now_ms()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub(super) use crate::testing::native::{log, now_ms};
}

/// Log a formatted message at `trace` level, like `log::trace!`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log($crate::Level::Trace, &::std::format!($($arg)+), &[]) };
}

/// Log a formatted message at `debug` level, like `log::debug!`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)+), &[]) };
}

/// Log a formatted message at `info` level, like `log::info!`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log($crate::Level::Info, &::std::format!($($arg)+), &[]) };
}

/// Log a formatted message at `warn` level, like `log::warn!`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)+), &[]) };
}

/// Log a formatted message at `error` level, like `log::error!`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log($crate::Level::Error, &::std::format!($($arg)+), &[]) };
}
