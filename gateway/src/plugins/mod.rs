//! WebAssembly channel plugins: loading, namespace resolution, and the hooks on the connect,
//! subscribe, publish and deliver paths.
//!
//! Every call is bounded: a deadline (epoch interruption), a memory cap, and caps on what a
//! hook may return. A failing call fails that one operation with `plugin_error`; the instance
//! is discarded and the node, and every other channel, keeps serving.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{DefaultPolicy, PluginsConfig};
use crate::hub::{DeliverHook, Group, GroupHook, GroupKey, Prepared};
use crate::protocol::{ErrorCode, Rejection};

pub mod bindings;
pub mod candidate;
pub mod cluster;
mod host;
pub mod loaded;
pub mod registry;
pub mod runtime;

use crate::identity::Identity;
use crate::namespace::{self, Pattern};
use bindings::{ConnectDecision, PublishDecision, SubscribeDecision};
use candidate::{Candidate, Role, Slot, Trial, share_key};
use host::StoreLimits;
use loaded::{CallLimits, LoadedPlugin, OutputLimits, PluginError};
use runtime::Runtime;

/// Why plugins could not be loaded at start (or by `--check`).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The plugin file could not be read.
    #[error("{key}: cannot read plugin {path}: {source}")]
    Read {
        /// Config key of the binding.
        key: String,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a usable component.
    #[error("{key}: plugin {plugin}: {source}")]
    Compile {
        /// Config key of the binding.
        key: String,
        /// Plugin name.
        plugin: String,
        /// What the compiler said.
        source: runtime::CompileError,
    },
    /// Instantiation or `init` failed.
    #[error("{key}: {source}")]
    Init {
        /// Config key of the binding.
        key: String,
        /// The failure.
        source: PluginError,
    },
}

/// What the connect hook learns about a new connection.
pub struct Connecting<'a> {
    /// Peer address as `ip:port`.
    pub remote_addr: &'a str,
    /// Request headers the gateway forwards (`plugins.forward_headers`), lower-case names.
    pub headers: &'a [(&'a str, &'a str)],
    /// Raw query string of the upgrade request, without the `?`.
    pub query: &'a str,
    /// Identity verified by the gateway (anonymous when auth is off).
    pub identity: &'a Identity,
}

/// The contract's record for `who`, borrowing its fields: built at each call at no cost.
fn wit(who: &Identity) -> bindings::IdentityParam<'_> {
    bindings::IdentityParam {
        user: who.user.as_deref(),
        tenant: who.tenant.as_deref(),
        claims: &who.claims,
    }
}

struct Binding {
    pattern: Pattern,
    plugin: Slot,
    tenants: HashMap<String, Slot>,
}

/// What a namespace lookup found for a channel.
enum Route<'a> {
    Plugin(&'a Slot),
    Allow,
    Deny,
}

/// Where a publish goes after the publish hook.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// To its own channel, unchanged.
    Pass,
    /// These (channel, JSON data) messages instead.
    Forward(Vec<(String, String)>),
    /// Nowhere, silently.
    Drop,
}

/// The plugins bound on this node.
pub struct Plugins {
    bindings: Vec<Binding>,
    default: DefaultPolicy,
    connect: Option<Slot>,
    forward_headers: Vec<String>,
}

impl Plugins {
    /// No bindings, everything allowed: the node runs without the plugin runtime.
    pub fn none() -> Self {
        Self {
            bindings: Vec::new(),
            default: DefaultPolicy::Allow,
            connect: None,
            forward_headers: Vec::new(),
        }
    }

    /// Loads every plugin the configuration binds from `plugins.dir`: compile, instantiate,
    /// `init`. Data plugins hand back may nest `max_json_depth` deep (`limits.max_json_depth`).
    pub fn load(config: &PluginsConfig, max_json_depth: usize) -> Result<Self, LoadError> {
        Self::build(
            config,
            max_json_depth,
            &|name, key| read_code(config, name, key),
            None,
            &HashSet::new(),
            &HashMap::new(),
        )
    }

    /// Builds the bound set: code for each plugin name comes from `code`; a binding whose
    /// pattern, code and config are unchanged from `previous` keeps its loaded instance (and
    /// pool); plugins in `unbound` are left out; a plugin in `trials` gets its candidate
    /// beside it wherever it is bound.
    pub fn build(
        config: &PluginsConfig,
        max_json_depth: usize,
        code: &dyn Fn(&str, &str) -> Result<Code, LoadError>,
        previous: Option<&Plugins>,
        unbound: &HashSet<String>,
        trials: &HashMap<String, Arc<Trial>>,
    ) -> Result<Self, LoadError> {
        let mut plugins = Self {
            bindings: Vec::new(),
            default: config.default,
            connect: None,
            forward_headers: config.forward_headers.clone(),
        };
        // A plugin's limits: `[plugins]`'s, then its `[plugins.limits.<name>]`; a binding's or
        // tenant's `timeout_ms` last.
        let limits_of = |name: &str| {
            let l = config.limits_of(name);
            let given = |v: Option<usize>| v.expect("limits_of fills every limit");
            CallLimits {
                timeout: Duration::from_millis(l.timeout_ms.expect("filled")),
                init_timeout: Duration::from_millis(l.init_timeout_ms.expect("filled")),
                store: StoreLimits {
                    max_memory: given(l.max_memory_bytes),
                    instances: given(l.max_instances),
                    tables: given(l.max_tables),
                    memories: given(l.max_memories),
                },
                pool_size: config.pool_size,
                slow_fraction: config.slow_call_fraction,
                output: OutputLimits {
                    max_output: config.max_output_bytes,
                    max_forwards: config.max_forwards,
                    max_text: config.max_text_bytes,
                    max_claims: config.max_claims_bytes,
                    max_json_depth,
                },
            }
        };
        let reusable = |name: &str,
                        hash: &str,
                        cfg: &str,
                        tenant: Option<&str>,
                        limits: &CallLimits,
                        role: Role| {
            previous.and_then(|p| {
                p.loaded()
                    .chain(p.candidates().map(|c| &c.plugin))
                    .find(|l| {
                        &*l.name == name
                            && &*l.hash == hash
                            && l.config() == cfg
                            && l.tenant.as_deref() == tenant
                            && l.limits() == limits
                            && l.role == role
                    })
                    .cloned()
            })
        };
        let load_code = |key: String,
                         name: &str,
                         code: Code,
                         cfg: &serde_json::Value,
                         tenant: Option<&str>,
                         timeout_ms: Option<u64>,
                         role: Role|
         -> Result<Arc<LoadedPlugin>, LoadError> {
            let mut limits = limits_of(name);
            if let Some(ms) = timeout_ms {
                limits.timeout = Duration::from_millis(ms);
            }
            let cfg = cfg.to_string();
            if let Some(l) = reusable(name, &code.hash, &cfg, tenant, &limits, role) {
                return Ok(l);
            }
            let runtime = Runtime::global().map_err(|source| LoadError::Compile {
                key: key.clone(),
                plugin: name.to_owned(),
                source,
            })?;
            let component = runtime
                .compile(&code.bytes, &code.hash, config.cache_path().as_deref())
                .map_err(|source| LoadError::Compile {
                    key: key.clone(),
                    plugin: name.to_owned(),
                    source,
                })?;
            LoadedPlugin::new(runtime, name, &code.hash, &component, cfg, limits)
                .map(|l| Arc::new(l.for_tenant(tenant).for_role(role)))
                .map_err(|source| LoadError::Init { key, source })
        };
        // The live version where `name` is bound, and its candidate when it is on trial.
        let load = |key: String,
                    name: &str,
                    cfg: &serde_json::Value,
                    tenant: Option<&str>,
                    timeout_ms: Option<u64>|
         -> Result<Slot, LoadError> {
            let live_code = code(name, &key)?;
            let live = load_code(
                key.clone(),
                name,
                live_code,
                cfg,
                tenant,
                timeout_ms,
                Role::Live,
            )?;
            let Some(trial) = trials.get(name) else {
                return Ok(Slot::live(live));
            };
            let candidate = load_code(
                format!("{key} (candidate)"),
                name,
                trial.code.clone(),
                cfg,
                tenant,
                timeout_ms,
                trial.role(),
            )?;
            Ok(Slot {
                candidate: Some(Candidate::new(candidate, trial.clone(), &live)),
                live,
            })
        };
        for (i, b) in config.bindings.iter().enumerate() {
            if unbound.contains(&b.plugin) {
                continue;
            }
            let key = format!("plugins.bindings[{i}]");
            let plugin = load(key.clone(), &b.plugin, &b.config, None, None)?;
            let mut tenants = HashMap::new();
            for (tenant, r) in &b.tenants {
                if unbound.contains(&r.plugin) {
                    continue;
                }
                let l = load(
                    format!("{key}.tenants.{tenant}"),
                    &r.plugin,
                    &r.config,
                    Some(tenant),
                    r.timeout_ms,
                )?;
                tenants.insert(tenant.clone(), l);
            }
            plugins.bindings.push(Binding {
                pattern: b.pattern.clone(),
                plugin,
                tenants,
            });
        }
        if let Some(c) = config
            .connect
            .as_ref()
            .filter(|c| !unbound.contains(&c.plugin))
        {
            plugins.connect = Some(load(
                "plugins.connect".into(),
                &c.plugin,
                &c.config,
                None,
                c.timeout_ms,
            )?);
        }
        Ok(plugins)
    }

    /// Every slot: one per binding and per tenant override, plus the connect plugin.
    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.bindings
            .iter()
            .flat_map(|b| std::iter::once(&b.plugin).chain(b.tenants.values()))
            .chain(self.connect.iter())
    }

    /// Every live instance set (one per binding, plus the connect plugin).
    pub fn loaded(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.slots().map(|s| &s.live)
    }

    /// Every candidate instance set of a trial.
    pub fn candidates(&self) -> impl Iterator<Item = &Candidate> {
        self.slots().filter_map(|s| s.candidate.as_ref())
    }

    /// The running totals of plugin `name`'s live version and of its candidate, over the
    /// slots where the candidate is on trial (for the guard).
    pub fn trial_counts(&self, name: &str) -> (candidate::Counts, candidate::Counts) {
        let mut live = candidate::Counts::default();
        let mut trial = candidate::Counts::default();
        for slot in self.slots() {
            if let Some(c) = slot.candidate.as_ref().filter(|c| c.trial.plugin == name) {
                live.add(&slot.live);
                trial.add(&c.plugin);
            }
        }
        (live, trial)
    }

    /// Patterns bound to plugin `name`.
    pub fn patterns_of(&self, name: &str) -> Vec<String> {
        self.bindings
            .iter()
            .flat_map(|b| {
                let shared = (&*b.plugin.live.name == name).then(|| b.pattern.as_str().to_owned());
                let tenants = b
                    .tenants
                    .iter()
                    .filter(|(_, s)| &*s.live.name == name)
                    .map(|(t, _)| format!("{} (tenant {t})", b.pattern.as_str()));
                shared.into_iter().chain(tenants)
            })
            .chain(
                self.connect
                    .iter()
                    .filter(|c| &*c.live.name == name)
                    .map(|_| "(connect)".to_owned()),
            )
            .collect()
    }

    /// Whether any channel binding exists (when none, the hub skips the deliver hook).
    pub fn has_bindings(&self) -> bool {
        !self.bindings.is_empty()
    }

    /// Names and versions of the loaded plugins, for logs.
    pub fn describe(&self) -> Vec<String> {
        let version = |s: &Slot| match &s.candidate {
            Some(c) => format!(
                "{}@{} ({} {})",
                s.live.name,
                s.live.version,
                c.trial.role().as_str(),
                c.plugin.version
            ),
            None => format!("{}@{}", s.live.name, s.live.version),
        };
        self.bindings
            .iter()
            .flat_map(|b| {
                let shared = format!("{} -> {}", b.pattern.as_str(), version(&b.plugin));
                let tenants = b.tenants.iter().map(move |(t, s)| {
                    format!("{} (tenant {t}) -> {}", b.pattern.as_str(), version(s))
                });
                std::iter::once(shared).chain(tenants)
            })
            .chain(
                self.connect
                    .iter()
                    .map(|s| format!("connect -> {}", version(s))),
            )
            .collect()
    }

    fn route(&self, channel: &str, tenant: Option<&str>) -> Route<'_> {
        match namespace::most_specific(self.bindings.iter().map(|b| &b.pattern), channel) {
            Some(i) => {
                let b = &self.bindings[i];
                let own = tenant.and_then(|t| b.tenants.get(t));
                Route::Plugin(own.unwrap_or(&b.plugin))
            }
            None if self.default == DefaultPolicy::Allow => Route::Allow,
            None => Route::Deny,
        }
    }

    /// Headers the connect hook may see.
    pub fn forward_headers(&self) -> &[String] {
        &self.forward_headers
    }

    /// Runs the connect hook, if one is configured: the identity to use, or why to refuse.
    pub fn connect(&self, connecting: Connecting<'_>) -> Result<Identity, Rejection> {
        let Some(slot) = &self.connect else {
            return Ok(connecting.identity.clone());
        };
        let who = connecting.identity;
        // A connect has no channel: a share canary decides by the user alone (anonymous
        // connections all fall in one bucket).
        let (plugin, shadow) =
            slot.choose(who.tenant.as_deref(), who.user.as_deref().unwrap_or(""));
        let info = bindings::ConnectInfo {
            remote_addr: connecting.remote_addr,
            headers: connecting.headers,
            query: connecting.query,
            identity: wit(who),
        };
        let decision = plugin.on_connect(info);
        if let Some(c) = shadow {
            c.shadow_connect(&connecting, &decision);
        }
        match decision.map_err(plugin_rejection)? {
            ConnectDecision::Accept => Ok(who.clone()),
            ConnectDecision::Enrich(identity) => Ok(Identity {
                user: identity.user,
                tenant: identity.tenant,
                claims: identity.claims,
            }),
            ConnectDecision::Reject(reason) => Err(Rejection::new(ErrorCode::Forbidden, reason)),
        }
    }

    /// The delivery group `who` receives a channel in when no hook decides (its tenant's).
    pub fn group_of(&self, who: &Identity) -> GroupKey {
        Arc::new(Group {
            tenant: who.tenant.as_deref().map(Arc::from),
            key: Arc::from(""),
        })
    }

    /// The version of `slot` that serves `who` on `channel`, and the candidate to shadow the
    /// call on, if any.
    fn pick<'a>(
        slot: &'a Slot,
        who: &Identity,
        channel: &str,
    ) -> (&'a Arc<LoadedPlugin>, Option<&'a Candidate>) {
        let by = slot
            .candidate
            .as_ref()
            .map(|c| c.trial.plan.by)
            .unwrap_or_default();
        slot.choose(who.tenant.as_deref(), share_key(by, who, channel))
    }

    /// Runs the subscribe hook: the delivery group `who` receives `channel` in (its tenant's,
    /// narrowed by the key the plugin chose, if any), or why it may not.
    pub fn subscribe(&self, who: &Identity, channel: &str) -> Result<GroupKey, Rejection> {
        let key = match self.route(channel, who.tenant.as_deref()) {
            Route::Allow => None,
            Route::Deny => return Err(no_binding(channel)),
            Route::Plugin(slot) => {
                let (plugin, shadow) = Self::pick(slot, who, channel);
                let decision = plugin.on_subscribe(wit(who), channel);
                if let Some(c) = shadow {
                    c.shadow_subscribe(who, channel, &decision);
                }
                match decision.map_err(plugin_rejection)? {
                    SubscribeDecision::Allow => None,
                    SubscribeDecision::AllowInGroup(g) => Some(g),
                    SubscribeDecision::Deny(reason) => {
                        return Err(Rejection::new(ErrorCode::Forbidden, reason));
                    }
                }
            }
        };
        Ok(Arc::new(Group {
            tenant: who.tenant.as_deref().map(Arc::from),
            key: key.map_or_else(|| Arc::from(""), Arc::from),
        }))
    }

    /// Runs the publish hook on `data` (JSON text).
    pub fn publish(&self, who: &Identity, channel: &str, data: &str) -> Result<Routed, Rejection> {
        let slot = match self.route(channel, who.tenant.as_deref()) {
            Route::Allow => return Ok(Routed::Pass),
            Route::Deny => return Err(no_binding(channel)),
            Route::Plugin(slot) => slot,
        };
        let (plugin, shadow) = Self::pick(slot, who, channel);
        let decision = plugin.on_publish(wit(who), channel, data);
        if let Some(c) = shadow {
            c.shadow_publish(who, channel, data, &decision);
        }
        match decision.map_err(plugin_rejection)? {
            PublishDecision::Pass => Ok(Routed::Pass),
            PublishDecision::Drop => Ok(Routed::Drop),
            PublishDecision::Reject(reason) => Err(Rejection::new(ErrorCode::Forbidden, reason)),
            PublishDecision::Forward(list) => Ok(Routed::Forward(
                list.into_iter().map(|o| (o.channel, o.data)).collect(),
            )),
        }
    }
}

impl DeliverHook for Plugins {
    fn for_group(&self, channel: &str, group: &Group) -> Option<Arc<dyn GroupHook>> {
        if self.bindings.is_empty() {
            return None;
        }
        match self.route(channel, group.tenant.as_deref()) {
            // A delivery group has no user: a share canary's deliver hook follows the channel.
            Route::Plugin(slot) => Some(slot.deliver(group.tenant.as_deref(), channel)),
            Route::Allow | Route::Deny => None,
        }
    }
}

impl Plugins {
    /// Runs the deliver hook `group` gets on `channel` (for tools and benchmarks; the hub
    /// finds the hook with [`DeliverHook::for_group`] and decides where it runs).
    pub fn prepare(&self, channel: &str, group: &Group, data: &[u8]) -> Prepared {
        match self.for_group(channel, group) {
            Some(hook) => hook.prepare(channel, group, data),
            None => Prepared::Unchanged,
        }
    }
}

/// A plugin's code: its bytes and their content hash.
#[derive(Clone)]
pub struct Code {
    /// Hex SHA-256 of `bytes`.
    pub hash: String,
    /// The component.
    pub bytes: Arc<[u8]>,
}

impl Code {
    /// Wraps bytes, hashing them.
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        let bytes = bytes.into();
        Self {
            hash: runtime::content_hash(&bytes),
            bytes,
        }
    }
}

/// Reads `<plugins.dir>/<name>.wasm`.
pub fn read_code(config: &PluginsConfig, name: &str, key: &str) -> Result<Code, LoadError> {
    let path = config.dir.join(format!("{name}.wasm"));
    let bytes = std::fs::read(&path).map_err(|source| LoadError::Read {
        key: key.to_owned(),
        path: path.display().to_string(),
        source,
    })?;
    Ok(Code::new(bytes))
}

fn no_binding(channel: &str) -> Rejection {
    Rejection::new(
        ErrorCode::Forbidden,
        format!("no plugin is bound to channel {channel:?} and plugins.default is \"deny\""),
    )
}

/// What a client is told when a plugin fails: a stable text naming the hook. The plugin's
/// name, version and what went wrong (a trap's text, say) are logged and counted where the
/// failure happened, never sent: they describe the operator's system, not the client's request.
fn plugin_rejection(e: PluginError) -> Rejection {
    Rejection::new(
        ErrorCode::PluginError,
        format!(
            "the plugin handling this channel failed in {}; the gateway's log has the details",
            e.hook.as_str()
        ),
    )
}
