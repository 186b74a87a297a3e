//! The plugin control plane: which code each plugin name runs, and atomic swaps of the bound
//! set while traffic flows.
//!
//! Swap protocol: a new version is compiled, instantiated and `init`ed off the async workers
//! (a blocking thread), for every binding that uses it; only when all of that succeeded is the
//! new bound set published with one atomic pointer swap. A call that already took the old set
//! finishes on it; every lookup after the swap sees the new one; each hook call uses exactly
//! one version. A version that fails anywhere is refused with its reason (log, metric, admin
//! status) and the old one keeps serving. Control operations are serialised.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::loaded::Hook;
use super::{Code, LoadError, Plugins, read_code};
use crate::clock::now_ms;
use crate::config::PluginsConfig;
use crate::hub::{DeliverHook, DeliverHooks};

/// Where a version came from (`source` in the admin API's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The plugins directory.
    File,
    /// An upload to this node's admin API.
    Api,
    /// Another node's upload, through the cluster store.
    Cluster,
}

/// One version of a plugin's code.
#[derive(Clone)]
pub struct Version {
    /// The code.
    pub code: Code,
    /// Where it came from.
    pub source: Origin,
    /// When it started serving (ms since the Unix epoch).
    pub loaded_at: u64,
}

#[derive(Default)]
struct Entry {
    current: Option<Version>,
    previous: Option<Version>,
    last_error: Option<String>,
}

struct State {
    config: PluginsConfig,
    /// `limits.max_json_depth`, for data plugins hand back (not reloaded with `[plugins]`).
    max_json_depth: usize,
    entries: HashMap<String, Entry>,
    unbound: HashSet<String>,
}

/// Why a swap was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SwapError {
    /// The bytes are not a WebAssembly component.
    #[error("not a WebAssembly component (bad header)")]
    NotWasm,
    /// The plugin has no earlier version to roll back to.
    #[error("plugin {0:?} has no previous version")]
    NoPrevious(String),
    /// The plugin is unknown to this node.
    #[error("plugin {0:?} is not loaded")]
    Unknown(String),
    /// Compiling, instantiating or initialising the new version failed.
    #[error("{0}")]
    Refused(String),
}

/// What the admin API lists per plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    /// Plugin name.
    pub name: String,
    /// Version serving now (content hash prefix), if any.
    pub version: Option<String>,
    /// Full content hash.
    pub hash: Option<String>,
    /// Where the serving version came from.
    pub source: Option<Origin>,
    /// When it started serving (ms since the Unix epoch).
    pub loaded_at: Option<u64>,
    /// `serving`, `unbound`, or `refused` (the last attempt failed; the old version serves).
    pub status: &'static str,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Patterns it is bound to.
    pub bindings: Vec<String>,
    /// Previous version, for rollback.
    pub previous: Option<String>,
    /// Calls since it was loaded (all bindings, all hooks).
    pub calls: u64,
    /// Failed calls.
    pub errors: u64,
    /// Median call time, µs (upper bound): the slowest hook's.
    pub p50_us: u64,
    /// 99th percentile call time, µs (upper bound): the slowest hook's.
    pub p99_us: u64,
    /// The same figures per hook that was called (`on-publish`, `on-deliver`, ...).
    pub hooks: BTreeMap<&'static str, HookFigures>,
}

/// One hook's calls and latency in the admin list.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HookFigures {
    /// Calls since the version was loaded (all bindings).
    pub calls: u64,
    /// Failed calls.
    pub errors: u64,
    /// Median call time, µs (upper bound; the slowest binding's).
    pub p50_us: u64,
    /// 99th percentile call time, µs (upper bound; the slowest binding's).
    pub p99_us: u64,
}

/// Owns the active bound set and every plugin's versions.
pub struct PluginRegistry {
    active: ArcSwap<Plugins>,
    state: tokio::sync::Mutex<State>,
}

impl PluginRegistry {
    /// Loads the configured bindings; `overrides` supplies code for some names (e.g. the
    /// cluster's current versions) instead of the plugins directory.
    pub fn load(
        config: PluginsConfig,
        max_json_depth: usize,
        overrides: HashMap<String, Version>,
    ) -> Result<Self, LoadError> {
        let mut entries: HashMap<String, Entry> = HashMap::new();
        for (name, v) in overrides {
            entries.entry(name).or_default().current = Some(v);
        }
        let plugins = {
            let code =
                |name: &str, key: &str| match entries.get(name).and_then(|e| e.current.as_ref()) {
                    Some(v) => Ok(v.code.clone()),
                    None => read_code(&config, name, key),
                };
            Plugins::build(&config, max_json_depth, &code, None, &HashSet::new())?
        };
        // Record the file versions actually loaded.
        for l in plugins.loaded() {
            let entry = entries.entry(l.name.to_string()).or_default();
            if entry.current.is_none() {
                let code = read_code(&config, &l.name, "")
                    .ok()
                    .filter(|c| *c.hash == *l.hash);
                entry.current = code.map(|code| Version {
                    code,
                    source: Origin::File,
                    loaded_at: now_ms(),
                });
            }
        }
        Ok(Self {
            active: ArcSwap::from_pointee(plugins),
            state: tokio::sync::Mutex::new(State {
                config,
                max_json_depth,
                entries,
                unbound: HashSet::new(),
            }),
        })
    }

    /// The bound set to use for one operation.
    pub fn current(&self) -> Arc<Plugins> {
        self.active.load_full()
    }

    /// Installs `code` as plugin `name`'s version. `Ok(false)` when it already serves.
    pub async fn install(&self, name: &str, code: Code, source: Origin) -> Result<bool, SwapError> {
        if !is_component(&code.bytes) {
            return Err(SwapError::NotWasm);
        }
        let mut state = self.state.lock().await;
        let entry = state.entries.entry(name.to_owned()).or_default();
        if entry
            .current
            .as_ref()
            .is_some_and(|v| v.code.hash == code.hash)
            && !state.unbound.contains(name)
        {
            return Ok(false);
        }
        let version = Version {
            code,
            source,
            loaded_at: now_ms(),
        };
        let mut unbound = state.unbound.clone();
        unbound.remove(name);
        self.rebuild(&mut state, name, Some(version.clone()), unbound)
            .await
            .map(|()| true)
    }

    /// Goes back to plugin `name`'s previous version.
    pub async fn rollback(&self, name: &str) -> Result<Version, SwapError> {
        let mut state = self.state.lock().await;
        let previous = state
            .entries
            .get(name)
            .and_then(|e| e.previous.clone())
            .ok_or_else(|| SwapError::NoPrevious(name.to_owned()))?;
        let unbound = state.unbound.clone();
        let version = Version {
            loaded_at: now_ms(),
            ..previous
        };
        self.rebuild(&mut state, name, Some(version.clone()), unbound)
            .await?;
        Ok(version)
    }

    /// Removes plugin `name`'s bindings: its channels fall to less specific patterns or the
    /// default policy. Installing a version binds it again.
    pub async fn unbind(&self, name: &str) -> Result<(), SwapError> {
        let mut state = self.state.lock().await;
        if !state.entries.contains_key(name) {
            return Err(SwapError::Unknown(name.to_owned()));
        }
        let mut unbound = state.unbound.clone();
        unbound.insert(name.to_owned());
        self.rebuild(&mut state, name, None, unbound).await
    }

    /// Replaces the bindings and runtime settings (config reload).
    pub async fn reconfigure(&self, config: PluginsConfig) -> Result<(), SwapError> {
        let mut state = self.state.lock().await;
        let old = std::mem::replace(&mut state.config, config);
        let unbound = state.unbound.clone();
        if let Err(e) = self.rebuild(&mut state, "", None, unbound).await {
            state.config = old;
            return Err(e);
        }
        Ok(())
    }

    /// Builds the set with `name` at `version` (when given) and swaps it in; on failure
    /// records the reason and leaves everything as it was.
    async fn rebuild(
        &self,
        state: &mut State,
        name: &str,
        version: Option<Version>,
        unbound: HashSet<String>,
    ) -> Result<(), SwapError> {
        let mut codes: HashMap<String, Code> = state
            .entries
            .iter()
            .filter_map(|(n, e)| Some((n.clone(), e.current.as_ref()?.code.clone())))
            .collect();
        if let Some(v) = &version {
            codes.insert(name.to_owned(), v.code.clone());
        }
        let config = state.config.clone();
        let max_json_depth = state.max_json_depth;
        let previous = self.current();
        let unbound_for_build = unbound.clone();
        // Compilation and init take milliseconds of CPU: keep them off the async workers.
        let built = tokio::task::spawn_blocking(move || {
            let code = |n: &str, key: &str| match codes.get(n) {
                Some(c) => Ok(c.clone()),
                None => read_code(&config, n, key),
            };
            Plugins::build(
                &config,
                max_json_depth,
                &code,
                Some(&previous),
                &unbound_for_build,
            )
        })
        .await
        .map_err(|e| SwapError::Refused(format!("build task failed: {e}")))?;
        match built {
            Ok(plugins) => {
                self.active.store(Arc::new(plugins));
                state.unbound = unbound;
                if let Some(v) = version {
                    let entry = state.entries.entry(name.to_owned()).or_default();
                    let old = entry.current.replace(v.clone());
                    if old.as_ref().is_some_and(|o| o.code.hash != v.code.hash) {
                        entry.previous = old;
                    }
                    entry.last_error = None;
                    tracing::info!(plugin = name, version = &v.code.hash[..12], source = ?v.source, "plugin version serving");
                    metrics::counter!("switchyard_plugin_swaps_total", "plugin" => name.to_owned())
                        .increment(1);
                }
                Ok(())
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(plugin = name, error = %reason, "plugin version refused; the previous version keeps serving");
                metrics::counter!("switchyard_plugin_swap_failures_total", "plugin" => name.to_owned()).increment(1);
                if !name.is_empty() {
                    state.entries.entry(name.to_owned()).or_default().last_error =
                        Some(reason.clone());
                }
                Err(SwapError::Refused(reason))
            }
        }
    }

    /// Hash of the version plugin `name` serves, if any.
    pub async fn current_hash(&self, name: &str) -> Option<String> {
        let state = self.state.lock().await;
        state
            .entries
            .get(name)?
            .current
            .as_ref()
            .map(|v| v.code.hash.clone())
    }

    /// Status of every known plugin, sorted by name.
    pub async fn list(&self) -> Vec<PluginStatus> {
        let state = self.state.lock().await;
        let active = self.current();
        let mut out: Vec<PluginStatus> = state
            .entries
            .iter()
            .map(|(name, e)| {
                let loaded: Vec<_> = active.loaded().filter(|l| &*l.name == name).collect();
                let hooks: BTreeMap<&'static str, HookFigures> = Hook::ALL
                    .iter()
                    .filter_map(|&h| {
                        let stats = || loaded.iter().map(|l| &l.stats[h as usize]);
                        let q = |q| stats().map(|s| s.quantile_us(q)).max().unwrap_or(0);
                        let figures = HookFigures {
                            calls: stats().map(|s| s.calls()).sum(),
                            errors: stats().map(|s| s.errors()).sum(),
                            p50_us: q(0.5),
                            p99_us: q(0.99),
                        };
                        (figures.calls > 0).then_some((h.as_str(), figures))
                    })
                    .collect();
                let total = |f: fn(&HookFigures) -> u64| hooks.values().map(f).sum::<u64>();
                let slowest = |f: fn(&HookFigures) -> u64| hooks.values().map(f).max().unwrap_or(0);
                let status = if e.last_error.is_some() {
                    "refused"
                } else if state.unbound.contains(name) || loaded.is_empty() {
                    "unbound"
                } else {
                    "serving"
                };
                PluginStatus {
                    name: name.clone(),
                    version: e.current.as_ref().map(|v| v.code.hash[..12].to_owned()),
                    hash: e.current.as_ref().map(|v| v.code.hash.clone()),
                    source: e.current.as_ref().map(|v| v.source),
                    loaded_at: e.current.as_ref().map(|v| v.loaded_at),
                    status,
                    last_error: e.last_error.clone(),
                    bindings: active.patterns_of(name),
                    previous: e.previous.as_ref().map(|v| v.code.hash[..12].to_owned()),
                    calls: total(|f| f.calls),
                    errors: total(|f| f.errors),
                    p50_us: slowest(|f| f.p50_us),
                    p99_us: slowest(|f| f.p99_us),
                    hooks,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

impl DeliverHooks for PluginRegistry {
    fn current(&self) -> Arc<dyn DeliverHook> {
        self.active.load_full()
    }
}

/// A WebAssembly component starts with `\0asm`, version 0x0d, layer 1.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm\x0d\x00\x01\x00")
}
