//! One loaded plugin version: its pre-instantiated component, its pool of ready instances, and
//! bounded calls into it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Store, Trap};

use super::bindings::{
    ConnectDecision, ConnectInfo, DeliverDecision, GroupContext, IdentityParam, IdentityResult,
    Plugin, PluginPre, PublishDecision, SubscribeDecision,
};
use super::candidate::Role;
use super::host::{HostState, MemoryExceeded, StoreLimits};
use super::runtime::Runtime;

/// The hooks a plugin exports, for errors, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `init`.
    Init,
    /// `on-connect`.
    Connect,
    /// `on-subscribe`.
    Subscribe,
    /// `on-publish`.
    Publish,
    /// `on-deliver`.
    Deliver,
}

impl Hook {
    /// Every hook, in discriminant order.
    pub const ALL: [Hook; 5] = [
        Hook::Init,
        Hook::Connect,
        Hook::Subscribe,
        Hook::Publish,
        Hook::Deliver,
    ];

    /// The hook's name as in the WIT contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Init => "init",
            Hook::Connect => "on-connect",
            Hook::Subscribe => "on-subscribe",
            Hook::Publish => "on-publish",
            Hook::Deliver => "on-deliver",
        }
    }
}

/// How a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It ran past its deadline and was interrupted.
    Timeout(Duration),
    /// It tried to grow its memory past the cap.
    MemoryLimit(usize),
    /// It trapped (panic, `unreachable`, out-of-bounds access...).
    Trap(String),
    /// It returned something the gateway refuses (too large, not JSON, too many forwards).
    InvalidOutput(String),
    /// Its `init` returned an error.
    InitFailed(String),
    /// A fresh instance could not be created.
    Instantiate(String),
    /// The plugin failed repeatedly and is not called until its breaker closes again.
    CircuitOpen,
}

impl Failure {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::MemoryLimit(_) => "memory",
            Failure::Trap(_) => "trap",
            Failure::InvalidOutput(_) => "invalid_output",
            Failure::InitFailed(_) => "init_failed",
            Failure::Instantiate(_) => "instantiate",
            Failure::CircuitOpen => "circuit_open",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout(d) => write!(f, "timed out after {} ms", d.as_millis()),
            Failure::MemoryLimit(n) => write!(f, "exceeded its memory limit of {n} bytes"),
            Failure::Trap(t) => write!(f, "trapped: {t}"),
            Failure::InvalidOutput(m) => write!(f, "returned invalid output: {m}"),
            Failure::InitFailed(m) => write!(f, "init failed: {m}"),
            Failure::Instantiate(m) => write!(f, "cannot be instantiated: {m}"),
            Failure::CircuitOpen => write!(
                f,
                "failed {BREAKER_FAILURES} times in a row; calls are refused for {} s",
                BREAKER_OPEN.as_secs()
            ),
        }
    }
}

/// A failed plugin call, naming plugin, version and hook.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin}@{version} {hook}: {failure}", hook = hook.as_str())]
pub struct PluginError {
    /// Plugin name.
    pub plugin: Arc<str>,
    /// Version (content hash prefix).
    pub version: Arc<str>,
    /// The hook that failed.
    pub hook: Hook,
    /// What went wrong.
    pub failure: Failure,
}

/// Bounds applied to every call into a plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct CallLimits {
    /// Wall-clock budget per call.
    pub timeout: Duration,
    /// Wall-clock budget of a fresh instance's instantiation and `init` (first load, pool
    /// growth, replacing a trapped instance): interpreters start slower than they run.
    pub init_timeout: Duration,
    /// What one instance's store may hold: memory, instances, tables.
    pub store: StoreLimits,
    /// Idle instances kept for reuse.
    pub pool_size: usize,
    /// A successful call slower than this fraction of `timeout` counts as a failure for the
    /// circuit breaker.
    pub slow_fraction: f64,
    /// What a call may hand back.
    pub output: OutputLimits,
}

/// Bounds on everything a plugin hands back: a call whose output breaks one failed
/// ([`Failure::InvalidOutput`]), is counted and logged, and feeds the circuit breaker, as a
/// trap does. Nothing a plugin returns reaches a client, a log or memory unchecked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLimits {
    /// Total bytes of JSON a publish hook may forward, or a deliver hook rewrite to.
    pub max_output: usize,
    /// Messages one publish hook may forward.
    pub max_forwards: usize,
    /// Longest reason, group key, user or tenant.
    pub max_text: usize,
    /// Longest claims JSON of an enriched identity.
    pub max_claims: usize,
    /// Deepest nesting of JSON data handed back.
    pub max_json_depth: usize,
}

impl OutputLimits {
    fn text(&self, what: &str, text: &str) -> Result<(), String> {
        if text.len() > self.max_text {
            return Err(format!(
                "{what} is {} bytes; the limit is plugins.max_text_bytes = {}",
                text.len(),
                self.max_text
            ));
        }
        Ok(())
    }

    fn json(&self, what: &str, data: &str) -> Result<(), String> {
        if serde_json::from_str::<serde::de::IgnoredAny>(data).is_err() {
            return Err(format!("{what} is not JSON"));
        }
        let depth = crate::protocol::json_depth(data.as_bytes());
        if depth > self.max_json_depth {
            return Err(format!(
                "{what} nests {depth} levels deep; the limit is limits.max_json_depth = {}",
                self.max_json_depth
            ));
        }
        Ok(())
    }

    fn identity(&self, who: &IdentityResult) -> Result<(), String> {
        if let Some(user) = &who.user {
            self.text("the user", user)?;
        }
        if let Some(tenant) = &who.tenant {
            self.text("the tenant", tenant)?;
        }
        if who.claims.len() > self.max_claims {
            return Err(format!(
                "the claims are {} bytes; the limit is plugins.max_claims_bytes = {}",
                who.claims.len(),
                self.max_claims
            ));
        }
        if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&who.claims).is_err()
        {
            return Err("claims must be a JSON object".into());
        }
        Ok(())
    }

    fn connect(&self, d: &ConnectDecision) -> Result<(), String> {
        match d {
            ConnectDecision::Accept => Ok(()),
            ConnectDecision::Enrich(who) => self.identity(who),
            ConnectDecision::Reject(reason) => self.text("the reject reason", reason),
        }
    }

    fn subscribe(&self, d: &SubscribeDecision) -> Result<(), String> {
        match d {
            SubscribeDecision::Allow => Ok(()),
            SubscribeDecision::AllowInGroup(key) => self.text("the group key", key),
            SubscribeDecision::Deny(reason) => self.text("the deny reason", reason),
        }
    }

    fn publish(&self, d: &PublishDecision) -> Result<(), String> {
        match d {
            PublishDecision::Pass | PublishDecision::Drop => Ok(()),
            PublishDecision::Reject(reason) => self.text("the reject reason", reason),
            PublishDecision::Forward(list) => {
                if list.len() > self.max_forwards {
                    return Err(format!(
                        "{} forwards; the limit is plugins.max_forwards = {}",
                        list.len(),
                        self.max_forwards
                    ));
                }
                let total: usize = list.iter().map(|o| o.data.len() + o.channel.len()).sum();
                if total > self.max_output {
                    return Err(format!(
                        "{total} bytes of output; the limit is plugins.max_output_bytes = {}",
                        self.max_output
                    ));
                }
                list.iter().try_for_each(|o| {
                    self.text("a forward's channel", &o.channel)?;
                    self.json("data forwarded", &o.data)
                })
            }
        }
    }

    fn deliver(&self, d: &DeliverDecision) -> Result<(), String> {
        match d {
            DeliverDecision::Deliver | DeliverDecision::Skip => Ok(()),
            DeliverDecision::Rewrite(data) => {
                if data.len() > self.max_output {
                    return Err(format!(
                        "{} bytes of output; the limit is plugins.max_output_bytes = {}",
                        data.len(),
                        self.max_output
                    ));
                }
                self.json("rewritten data", data)
            }
        }
    }
}

/// Consecutive failed calls that open a plugin's circuit breaker.
pub const BREAKER_FAILURES: u32 = 5;
/// How long an open breaker refuses calls before letting one through again.
pub const BREAKER_OPEN: Duration = Duration::from_secs(5);

/// Bounds the CPU a plugin that fails on every call (e.g. loops to its deadline) can take
/// from everyone else: after [`BREAKER_FAILURES`] failures in a row it is not called for
/// [`BREAKER_OPEN`]; then one call is tried, and one more failure opens it again.
#[derive(Default)]
struct Breaker {
    consecutive: std::sync::atomic::AtomicU32,
    open_until_ms: AtomicU64,
}

impl Breaker {
    fn is_open(&self) -> bool {
        crate::clock::now_ms() < self.open_until_ms.load(Relaxed)
    }

    fn succeeded(&self) {
        self.consecutive.store(0, Relaxed);
    }

    /// Records a failure; returns true when it opened the breaker.
    fn failed(&self) -> bool {
        let n = self.consecutive.fetch_add(1, Relaxed) + 1;
        if n < BREAKER_FAILURES {
            return false;
        }
        // Half-open afterwards: a single further failure re-opens it.
        self.consecutive.store(BREAKER_FAILURES - 1, Relaxed);
        self.open_until_ms.store(
            crate::clock::now_ms() + BREAKER_OPEN.as_millis() as u64,
            Relaxed,
        );
        true
    }
}

struct HookMetrics {
    calls: metrics::Counter,
    seconds: Arc<crate::metrics::Latency>,
}

struct Slot {
    store: Store<HostState>,
    plugin: Plugin,
}

/// A compiled, initialised plugin version ready to serve calls.
pub struct LoadedPlugin {
    /// Plugin name.
    pub name: Arc<str>,
    /// Version: the first 12 hex digits of the content hash.
    pub version: Arc<str>,
    /// Full content hash.
    pub hash: Arc<str>,
    /// Call counts and latencies per hook (indexed by [`Hook`]), for the admin API.
    pub stats: [CallStats; Hook::ALL.len()],
    /// Tenant this instance set serves, when bound per tenant (a metrics label).
    pub tenant: Option<Arc<str>>,
    /// The part it plays in a rollout (a metrics label).
    pub role: Role,
    /// What its calls decided, for a rollout's guard.
    pub outcomes: Outcomes,
    /// One per hook (indexed by [`Hook`]): a deliver hook that fails on every call must open
    /// its breaker even while the same plugin's publish hook succeeds.
    breakers: [Breaker; Hook::ALL.len()],
    /// Where the hub runs this plugin's deliver hook.
    placement: crate::hub::Placement,
    metrics: std::sync::OnceLock<Vec<HookMetrics>>,
    runtime: Arc<Runtime>,
    pre: PluginPre<HostState>,
    config: String,
    limits: CallLimits,
    pool: Mutex<Vec<Slot>>,
}

impl LoadedPlugin {
    /// Compiles (or reuses) `component`, instantiates it once and runs `init(config)`; any
    /// failure refuses the plugin.
    pub fn new(
        runtime: Arc<Runtime>,
        name: &str,
        hash: &str,
        component: &Component,
        config: String,
        limits: CallLimits,
    ) -> Result<Self, PluginError> {
        let fail = |failure| PluginError {
            plugin: name.into(),
            version: hash[..12].into(),
            hook: Hook::Init,
            failure,
        };
        foreign_imports(&runtime.engine, component)
            .map_err(|why| fail(Failure::Instantiate(why)))?;
        let instance_pre = runtime
            .linker
            .instantiate_pre(component)
            .map_err(|e| fail(Failure::Instantiate(format!("{e:#}"))))?;
        let pre = PluginPre::new(instance_pre)
            .map_err(|e| fail(Failure::Instantiate(format!("{e:#}"))))?;
        runtime.announce_deadline(limits.timeout);
        let loaded = Self {
            name: name.into(),
            version: hash[..12].into(),
            hash: hash.into(),
            stats: Default::default(),
            tenant: None,
            role: Role::Live,
            outcomes: Outcomes::default(),
            breakers: Default::default(),
            placement: crate::hub::Placement::default(),
            metrics: std::sync::OnceLock::new(),
            runtime,
            pre,
            config,
            limits,
            pool: Mutex::new(Vec::new()),
        };
        let slot = loaded.instantiate()?;
        loaded.pool.lock().expect("pool lock").push(slot);
        Ok(loaded)
    }

    /// Marks this instance set as serving `tenant`.
    pub fn for_tenant(mut self, tenant: Option<&str>) -> Self {
        self.tenant = tenant.map(Arc::from);
        // The first init registered the hooks' series without the label.
        self.metrics = std::sync::OnceLock::new();
        self
    }

    /// Marks this instance set as playing `role` in a rollout.
    pub fn for_role(mut self, role: Role) -> Self {
        self.role = role;
        self.metrics = std::sync::OnceLock::new();
        self
    }

    /// The bounds this instance set's calls run under.
    pub fn limits(&self) -> &CallLimits {
        &self.limits
    }

    /// The config JSON this instance set was initialised with.
    pub fn config(&self) -> &str {
        &self.config
    }

    fn error(&self, hook: Hook, failure: Failure) -> PluginError {
        PluginError {
            plugin: self.name.clone(),
            version: self.version.clone(),
            hook,
            failure,
        }
    }

    /// A fresh store and instance, initialised with the binding's config.
    fn instantiate(&self) -> Result<Slot, PluginError> {
        let state = HostState::new(self.name.clone(), self.version.clone(), self.limits.store);
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| s as &mut dyn wasmtime::ResourceLimiter);
        store.epoch_deadline_callback(Runtime::check_deadline);
        Runtime::arm(&mut store, Instant::now() + self.limits.init_timeout);
        let _ticking = self.runtime.ticking();
        let plugin = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.error(Hook::Init, self.classify(e, self.limits.init_timeout)))?;
        let started = Instant::now();
        let result = plugin.call_init(&mut store, &self.config);
        // Counted like the other hooks: every fresh instance (first load, pool growth, after a
        // trap) runs init, so `hook="init"` shows how often instances are replaced.
        let m = self.hook_metrics(Hook::Init);
        m.calls.increment(1);
        m.seconds.record(started.elapsed());
        match result {
            Ok(Ok(())) => Ok(Slot { store, plugin }),
            Ok(Err(reason)) => {
                let reason = truncate(reason, self.limits.output.max_text);
                Err(self.error(Hook::Init, Failure::InitFailed(reason)))
            }
            Err(e) => Err(self.error(Hook::Init, self.classify(e, self.limits.init_timeout))),
        }
    }

    /// What went wrong in a call that had `deadline`.
    fn classify(&self, e: wasmtime::Error, deadline: Duration) -> Failure {
        if let Some(m) = e.downcast_ref::<MemoryExceeded>() {
            return Failure::MemoryLimit(m.limit);
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Failure::Timeout(deadline),
            Some(trap) => Failure::Trap(with_limit_hint(trap.to_string())),
            None => Failure::Trap(with_limit_hint(format!("{e:#}"))),
        }
    }

    /// Runs one hook call on a pooled (or fresh) instance with the deadline set, then checks
    /// its output with `check`. A call that traps or overruns is discarded with its instance
    /// (a trap poisons the store); one whose output `check` refuses fails as invalid output
    /// (its instance is healthy and goes back to the pool). Both, and a successful call slower
    /// than `plugins.slow_call_fraction` of the deadline, count against the circuit breaker.
    fn call<R>(
        &self,
        hook: Hook,
        f: impl FnOnce(&Plugin, &mut Store<HostState>) -> wasmtime::Result<R>,
        check: impl FnOnce(&OutputLimits, &R) -> Result<(), String>,
    ) -> Result<R, PluginError> {
        let breaker = &self.breakers[hook as usize];
        if breaker.is_open() {
            let err = self.error(hook, Failure::CircuitOpen);
            self.outcomes.refused.fetch_add(1, Relaxed);
            metrics::counter!(
                "switchyard_plugin_errors_total",
                "plugin" => self.name.to_string(),
                "hook" => hook.as_str(),
                "version" => self.version.to_string(),
                "tenant" => self.tenant_label(),
                "role" => self.role.as_str(),
                "kind" => "circuit_open"
            )
            .increment(1);
            return Err(err);
        }
        let pooled = self.pool.lock().expect("pool lock").pop();
        let mut slot = match pooled {
            Some(s) => s,
            None => self.instantiate()?,
        };
        let started = Instant::now();
        Runtime::arm(&mut slot.store, started + self.limits.timeout);
        let ticking = self.runtime.ticking();
        let result = f(&slot.plugin, &mut slot.store);
        drop(ticking);
        let elapsed = started.elapsed();
        let m = self.hook_metrics(hook);
        m.calls.increment(1);
        m.seconds.record(elapsed);
        let (result, healthy) = match result {
            Ok(r) => match check(&self.limits.output, &r) {
                Ok(()) => (Ok(r), true),
                Err(why) => (Err(self.error(hook, Failure::InvalidOutput(why))), true),
            },
            Err(e) => (
                Err(self.error(hook, self.classify(e, self.limits.timeout))),
                false,
            ),
        };
        self.stats[hook as usize].record(elapsed, result.is_err());
        if healthy {
            let mut pool = self.pool.lock().expect("pool lock");
            if pool.len() < self.limits.pool_size {
                pool.push(slot);
            }
        }
        match &result {
            Err(err) => {
                self.record_failure(err);
                self.breaker_failed(hook);
            }
            Ok(_) if elapsed > self.limits.timeout.mul_f64(self.limits.slow_fraction) => {
                self.record_slow(hook, elapsed);
                self.breaker_failed(hook);
            }
            Ok(_) => breaker.succeeded(),
        }
        result
    }

    fn breaker_failed(&self, hook: Hook) {
        if self.breakers[hook as usize].failed() {
            tracing::warn!(
                plugin = %self.name,
                version = %self.version,
                hook = hook.as_str(),
                tenant = self.tenant.as_deref(),
                "plugin failed {BREAKER_FAILURES} times in a row: circuit open for {} s",
                BREAKER_OPEN.as_secs()
            );
        }
    }

    /// Counts a call that succeeded, but slowly.
    fn record_slow(&self, hook: Hook, elapsed: Duration) {
        tracing::debug!(
            plugin = %self.name,
            version = %self.version,
            hook = hook.as_str(),
            elapsed_us = elapsed.as_micros() as u64,
            "slow plugin call"
        );
        metrics::counter!(
            "switchyard_plugin_errors_total",
            "plugin" => self.name.to_string(),
            "hook" => hook.as_str(),
            "version" => self.version.to_string(),
            "tenant" => self.tenant_label(),
            "role" => self.role.as_str(),
            "kind" => "slow"
        )
        .increment(1);
    }

    /// Logs and counts a failure.
    fn record_failure(&self, err: &PluginError) {
        tracing::warn!(
            plugin = %err.plugin,
            version = %err.version,
            hook = err.hook.as_str(),
            kind = err.failure.kind(),
            "{err}"
        );
        metrics::counter!(
            "switchyard_plugin_errors_total",
            "plugin" => self.name.to_string(),
            "hook" => err.hook.as_str(),
            "version" => self.version.to_string(),
            "tenant" => self.tenant_label(),
            "role" => self.role.as_str(),
            "kind" => err.failure.kind()
        )
        .increment(1);
    }

    /// Registered once per plugin and hook: building label sets on every call would cost as
    /// much as a pass-through call itself.
    fn hook_metrics(&self, hook: Hook) -> &HookMetrics {
        let all = self.metrics.get_or_init(|| {
            Hook::ALL
                .iter()
                .map(|h| {
                    let labels = [
                        ("plugin", self.name.to_string()),
                        ("hook", h.as_str().to_owned()),
                        ("version", self.version.to_string()),
                        ("tenant", self.tenant_label()),
                        ("role", self.role.as_str().to_owned()),
                    ];
                    let seconds = labels.each_ref().map(|(k, v)| (*k, v.as_str()));
                    HookMetrics {
                        calls: metrics::counter!("switchyard_plugin_calls_total", &labels),
                        seconds: crate::metrics::Latency::get(
                            "switchyard_plugin_call_seconds",
                            &seconds,
                        ),
                    }
                })
                .collect()
        });
        &all[hook as usize]
    }

    fn tenant_label(&self) -> String {
        self.tenant.as_deref().unwrap_or_default().to_owned()
    }

    /// Calls `on-connect`.
    pub fn on_connect(&self, info: ConnectInfo<'_>) -> Result<ConnectDecision, PluginError> {
        let decision = self.call(
            Hook::Connect,
            |p, s| p.call_on_connect(s, info),
            OutputLimits::connect,
        );
        if let Ok(ConnectDecision::Reject(_)) = &decision {
            self.outcomes.denied.fetch_add(1, Relaxed);
        }
        decision
    }

    /// Calls `on-subscribe`.
    pub fn on_subscribe(
        &self,
        who: IdentityParam<'_>,
        channel: &str,
    ) -> Result<SubscribeDecision, PluginError> {
        let decision = self.call(
            Hook::Subscribe,
            |p, s| p.call_on_subscribe(s, who, channel),
            OutputLimits::subscribe,
        );
        if let Ok(SubscribeDecision::Deny(_)) = &decision {
            self.outcomes.denied.fetch_add(1, Relaxed);
        }
        decision
    }

    /// Calls `on-publish`.
    pub fn on_publish(
        &self,
        who: IdentityParam<'_>,
        channel: &str,
        data: &str,
    ) -> Result<PublishDecision, PluginError> {
        let decision = self.call(
            Hook::Publish,
            |p, s| p.call_on_publish(s, who, channel, data),
            OutputLimits::publish,
        );
        match &decision {
            Ok(PublishDecision::Reject(_)) => {
                self.outcomes.denied.fetch_add(1, Relaxed);
            }
            Ok(PublishDecision::Forward(list)) => {
                self.outcomes
                    .forwarded
                    .fetch_add(list.len() as u64, Relaxed);
            }
            _ => {}
        }
        decision
    }

    /// Calls `on-deliver`.
    pub fn on_deliver(
        &self,
        group: GroupContext<'_>,
        channel: &str,
        data: &str,
    ) -> Result<DeliverDecision, PluginError> {
        self.call(
            Hook::Deliver,
            |p, s| p.call_on_deliver(s, group, channel, data),
            OutputLimits::deliver,
        )
    }
}

impl crate::hub::GroupHook for LoadedPlugin {
    fn prepare(
        &self,
        channel: &str,
        group: &crate::hub::Group,
        data: &[u8],
    ) -> crate::hub::Prepared {
        use crate::hub::Prepared;
        let Ok(text) = std::str::from_utf8(data) else {
            return Prepared::Skip;
        };
        let ctx = GroupContext {
            key: &group.key,
            tenant: group.tenant.as_deref(),
        };
        // A failing deliver hook delivers nothing to that group: the hook may be a filter,
        // and failing open could leak what it was meant to hide (the hub has subscribers of a
        // channel with history catch up instead).
        match self.on_deliver(ctx, channel, text) {
            Ok(DeliverDecision::Deliver) => Prepared::Unchanged,
            Ok(DeliverDecision::Skip) => {
                self.outcomes.denied.fetch_add(1, Relaxed);
                Prepared::Skip
            }
            Err(_) => Prepared::Failed,
            Ok(DeliverDecision::Rewrite(new)) => Prepared::Rewritten(new.into_bytes()),
        }
    }

    fn placement(&self) -> &crate::hub::Placement {
        &self.placement
    }

    fn describe(&self) -> String {
        match &self.tenant {
            Some(t) => format!("{}@{} (tenant {t})", self.name, self.version),
            None => format!("{}@{}", self.name, self.version),
        }
    }
}

/// What an instance set's calls decided, beyond the call statistics: a rollout's guard
/// compares these between a candidate and the live version.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// Refused connects, subscribes and publishes, skipped deliveries.
    pub denied: AtomicU64,
    /// Messages forwarded by publish calls.
    pub forwarded: AtomicU64,
    /// Calls refused by an open circuit (not in the call statistics).
    pub refused: AtomicU64,
}

/// `message` with the setting to raise when it is one of the store's count limits (wasmtime
/// says "instance count too high" and the like; the operator needs the key).
fn with_limit_hint(message: String) -> String {
    let key = [
        ("instance count too high", "max_instances"),
        ("table count too high", "max_tables"),
        ("memory count too high", "max_memories"),
    ]
    .into_iter()
    .find_map(|(said, key)| message.contains(said).then_some(key));
    match key {
        Some(key) => format!(
            "{message} (raise plugins.{key}, or plugins.limits.<name>.{key} for this plugin)"
        ),
        None => message,
    }
}

/// What a plugin may import: the contract's interfaces (`host`, and `types`, which holds only
/// types), nothing else.
const CONTRACT_PREFIX: &str = "switchyard:plugin/";

/// Refuses a component that imports anything beyond the contract, naming what it imports and
/// the usual cause: a JS or Python toolchain's default build pulls in WASI, which the gateway
/// does not provide (wasmtime's own error names one missing resource of the first import).
fn foreign_imports(engine: &wasmtime::Engine, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    let foreign: Vec<&str> = ty
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| !name.starts_with(CONTRACT_PREFIX))
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    let shown = foreign
        .iter()
        .take(4)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let more = match foreign.len() {
        n if n > 4 => format!(" and {} more", n - 4),
        _ => String::new(),
    };
    let wasi = match foreign.iter().any(|n| n.starts_with("wasi:")) {
        true => {
            "; WASI is not provided: build with componentize-js `--disable stdio random clocks http fetch-event`, componentize-py `--stub-wasi`, or cargo-component without WASI"
        }
        false => "",
    };
    Err(format!(
        "the component imports {shown}{more}, which the gateway does not provide (plugins may import only {CONTRACT_PREFIX}host){wasi}"
    ))
}

/// `text` cut to at most `max` bytes (on a character boundary), marked with `…` when cut.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Lock-free call statistics: counts and a latency histogram with power-of-two microsecond
/// buckets (so percentiles are upper bounds, within 2x).
#[derive(Default)]
pub struct CallStats {
    calls: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; 32],
}

impl CallStats {
    fn record(&self, elapsed: Duration, failed: bool) {
        self.calls.fetch_add(1, Relaxed);
        if failed {
            self.errors.fetch_add(1, Relaxed);
        }
        let us = elapsed.as_micros().max(1) as u64;
        let bucket = (64 - us.leading_zeros() as usize).min(31);
        self.buckets[bucket].fetch_add(1, Relaxed);
    }

    /// Calls so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }

    /// Failed calls so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    /// Upper bound of the `q` quantile (0..1) of call time in microseconds; 0 with no calls.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let target = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return 1u64 << i;
            }
        }
        1u64 << 31
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component importing an (empty) instance under each of `names`.
    fn importing(names: &[&str]) -> Component {
        use wasm_encoder::{
            ComponentImportSection, ComponentTypeRef, ComponentTypeSection, InstanceType,
        };
        let mut c = wasm_encoder::Component::new();
        let mut types = ComponentTypeSection::new();
        types.instance(&InstanceType::new());
        c.section(&types);
        let mut imports = ComponentImportSection::new();
        for &name in names {
            imports.import(name, ComponentTypeRef::Instance(0));
        }
        c.section(&imports);
        let runtime = Runtime::global().unwrap();
        Component::new(&runtime.engine, c.finish()).unwrap()
    }

    #[test]
    fn a_component_importing_wasi_is_refused_naming_the_imports_and_the_flags() {
        let engine = &Runtime::global().unwrap().engine;
        let names: Vec<String> = (0..6).map(|i| format!("wasi:io/poll{i}@0.2.0")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let why = foreign_imports(engine, &importing(&names)).unwrap_err();
        assert!(
            why.contains("wasi:io/poll0@0.2.0, wasi:io/poll1@0.2.0"),
            "{why}"
        );
        assert!(why.contains("and 2 more"), "{why}");
        assert!(
            why.contains("--disable stdio random clocks http fetch-event"),
            "{why}"
        );
        assert!(why.contains("--stub-wasi"), "{why}");

        let other = foreign_imports(engine, &importing(&["acme:db/query@1.0.0"])).unwrap_err();
        assert!(other.contains("acme:db/query@1.0.0"), "{other}");
        assert!(!other.contains("WASI"), "{other}");

        let contract = [
            "switchyard:plugin/types@0.1.0",
            "switchyard:plugin/host@0.1.0",
        ];
        assert_eq!(foreign_imports(engine, &importing(&contract)), Ok(()));
    }
}
