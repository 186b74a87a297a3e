//! Native test harness: run and inspect a plugin with plain `cargo test`, no wasm involved.
//!
//! On non-wasm targets the host imports are replaced by stand-ins that live in thread-locals
//! (each `#[test]` runs on its own thread, so tests do not see each other's state):
//!
//! * [`crate::log`] records into a per-thread buffer ([`take_logs`]) and echoes the record to
//!   stderr, which the test runner shows only for failing tests;
//! * [`crate::now_ms`] returns real time until a test fixes it with [`set_now_ms`].
//!
//! [`TestHost`] bundles these and resets them when created and dropped. [`Instance`] drives a
//! plugin through the same export glue the wasm build uses and checks its JSON output the way
//! the gateway does; [`new_plugin`] builds a bare plugin value. Both take the config as JSON
//! text, like a binding's `config`, and deserialize it into the plugin's `Config` type.
//!
//! ```
//! use switchyard_plugin_sdk::testing::TestHost;
//! use switchyard_plugin_sdk::{Level, info, now_ms};
//!
//! let host = TestHost::new();
//! host.set_now_ms(1_700_000_000_000);
//! info!("it is {}", now_ms());
//! let logs = host.take_logs();
//! assert_eq!(logs[0].level, Level::Info);
//! assert_eq!(logs[0].message, "it is 1700000000000");
//! ```

use std::marker::PhantomData;

use crate::__private::Adapter;
use crate::wit::Guest;
use crate::{
    ConnectDecision, ConnectInfo, DeliverDecision, GroupContext, Identity, Level, Plugin,
    PublishDecision, SubscribeDecision,
};

/// One record a plugin logged through [`crate::log`] (or the logging macros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Severity.
    pub level: Level,
    /// Message text.
    pub message: String,
    /// Structured fields, in the order given.
    pub fields: Vec<(String, String)>,
}

impl LogRecord {
    /// The value of the field `name`, if present.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) mod native {
    use std::cell::{Cell, RefCell};
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::LogRecord;
    use crate::Level;

    thread_local! {
        pub(super) static LOGS: RefCell<Vec<LogRecord>> = const { RefCell::new(Vec::new()) };
        pub(super) static CLOCK: Cell<Option<u64>> = const { Cell::new(None) };
    }

    pub(crate) fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        let record = LogRecord {
            level,
            message: message.to_owned(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        eprintln!("[plugin {level:?}] {message} {:?}", record.fields);
        LOGS.with_borrow_mut(|logs| logs.push(record));
    }

    pub(crate) fn now_ms() -> u64 {
        CLOCK.get().unwrap_or_else(real_now_ms)
    }

    pub(super) fn real_now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Remove and return the records logged on this thread so far.
pub fn take_logs() -> Vec<LogRecord> {
    native::LOGS.with_borrow_mut(std::mem::take)
}

/// A copy of the records logged on this thread so far (they stay captured).
pub fn logs() -> Vec<LogRecord> {
    native::LOGS.with_borrow(Clone::clone)
}

/// Fix the clock [`crate::now_ms`] reads on this thread.
pub fn set_now_ms(ms: u64) {
    native::CLOCK.set(Some(ms));
}

/// Move the clock forward by `ms` (fixing it at the current real time first if it is not fixed).
pub fn advance_ms(ms: u64) {
    let now = native::CLOCK.get().unwrap_or_else(native::real_now_ms);
    native::CLOCK.set(Some(now.saturating_add(ms)));
}

/// Go back to the real clock on this thread (the default).
pub fn use_real_clock() {
    native::CLOCK.set(None);
}

/// Clear captured logs and go back to the real clock.
pub fn reset() {
    native::LOGS.with_borrow_mut(Vec::clear);
    use_real_clock();
}

/// A fresh native host for one test: resets logs and clock when created and when dropped.
#[derive(Debug)]
pub struct TestHost {
    _not_send: PhantomData<*const ()>,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    /// Reset this thread's logs and clock and return a handle to them.
    pub fn new() -> Self {
        reset();
        Self {
            _not_send: PhantomData,
        }
    }

    /// Fix the clock at `ms` (see [`set_now_ms`]).
    pub fn set_now_ms(&self, ms: u64) {
        set_now_ms(ms);
    }

    /// Move the clock forward by `ms` (see [`advance_ms`]).
    pub fn advance_ms(&self, ms: u64) {
        advance_ms(ms);
    }

    /// Remove and return the records logged so far (see [`take_logs`]).
    pub fn take_logs(&self) -> Vec<LogRecord> {
        take_logs()
    }

    /// A copy of the records logged so far (see [`logs`]).
    pub fn logs(&self) -> Vec<LogRecord> {
        logs()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        reset();
    }
}

/// A plugin instance driven exactly like the wasm export glue drives it.
///
/// Calls go through the same adapter as the component's exports: the plugin lives in the
/// per-instance slot that `init` fills, arguments and verdicts are converted to and from the
/// WIT types, and JSON the plugin hands back (forwarded data, rewrites) is checked to be valid
/// JSON as the gateway does; invalid JSON panics with a message saying which hook produced it.
///
/// Like a wasm instance there is one live plugin per thread: creating an `Instance` replaces
/// the one before it.
pub struct Instance<P: Plugin> {
    pub(crate) _plugin: PhantomData<(P, *const ())>,
}

impl<P: Plugin> std::fmt::Debug for Instance<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Instance<{}>", std::any::type_name::<P>())
    }
}

impl<P: Plugin> Instance<P> {
    /// Call the plugin's `init` export with `config`: JSON text, as the gateway passes a
    /// binding's `config`. It is deserialized into `P::Config` exactly as in a wasm build, so a
    /// config that does not deserialize is an `Err` starting with `invalid config:`.
    pub fn init(config: &str) -> Result<Self, String> {
        <Adapter<P> as Guest>::init(config.to_owned())?;
        Ok(Self {
            _plugin: PhantomData,
        })
    }

    /// Call the `on-connect` export.
    pub fn connect(&self, info: &ConnectInfo) -> ConnectDecision {
        <Adapter<P> as Guest>::on_connect(info.clone().into()).into()
    }

    /// Call the `on-subscribe` export.
    pub fn subscribe(&self, who: &Identity, channel: &str) -> SubscribeDecision {
        <Adapter<P> as Guest>::on_subscribe(who.clone().into(), channel.to_owned()).into()
    }

    /// Call the `on-publish` export; panics if a forwarded message's data is not valid JSON.
    pub fn publish(&self, who: &Identity, channel: &str, data: &str) -> PublishDecision {
        let decision: PublishDecision = <Adapter<P> as Guest>::on_publish(
            who.clone().into(),
            channel.to_owned(),
            data.to_owned(),
        )
        .into();
        if let PublishDecision::Forward(messages) = &decision {
            for m in messages {
                assert_json("on-publish", &m.data);
            }
        }
        decision
    }

    /// Call the `on-deliver` export; panics if a rewrite is not valid JSON.
    pub fn deliver(&self, group: &GroupContext, channel: &str, data: &str) -> DeliverDecision {
        let decision: DeliverDecision = <Adapter<P> as Guest>::on_deliver(
            group.clone().into(),
            channel.to_owned(),
            data.to_owned(),
        )
        .into();
        if let DeliverDecision::Rewrite(text) = &decision {
            assert_json("on-deliver", text);
        }
        decision
    }
}

/// Build a bare plugin value from `config` (JSON text) exactly as the `init` export does.
///
/// For tests that call hooks directly or look inside the plugin; [`Instance`] drives it
/// through the export glue instead. Config errors read as from [`Instance::init`].
pub fn new_plugin<P: Plugin>(config: &str) -> Result<P, String> {
    crate::export::build(config)
}

fn assert_json(hook: &str, text: &str) {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        panic!("{hook} returned invalid JSON ({e}): {text}");
    }
}
