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

use super::candidate::{Disagreement, Judgement, Plan, Rates, Role, ShadowFigures, Trial};
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
    /// How the last trial of this plugin ended.
    ended: Option<Ended>,
}

/// How a trial ended.
#[derive(Debug, Clone, Serialize)]
pub struct Ended {
    /// `promoted`, `rolled_back` (by its guard), `aborted` (by an operator) or `superseded`
    /// (another version was installed, rolled back to, or the plugin unbound).
    pub outcome: Outcome,
    /// The candidate's version.
    pub version: String,
    /// Shadow or canary.
    pub stage: Role,
    /// Why.
    pub reason: String,
    /// When (ms since the Unix epoch).
    pub at: u64,
}

/// How a trial ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The candidate became the live version.
    Promoted,
    /// Its guard found a breach.
    RolledBack,
    /// An operator stopped it.
    Aborted,
    /// Another version took the plugin's place.
    Superseded,
}

struct State {
    config: PluginsConfig,
    /// `limits.max_json_depth`, for data plugins hand back (not reloaded with `[plugins]`).
    max_json_depth: usize,
    entries: HashMap<String, Entry>,
    unbound: HashSet<String>,
    /// Plugins with a candidate on trial.
    trials: HashMap<String, Arc<Trial>>,
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
    /// The plugin already has a trial of another version (or the request contradicts what
    /// serves).
    #[error("{0}")]
    Conflict(String),
    /// The plugin has no trial.
    #[error("plugin {0:?} has no shadow or canary")]
    NoTrial(String),
    /// The rollout plan is not valid.
    #[error("{0}")]
    BadPlan(String),
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
    /// The candidate on trial, if any.
    pub rollout: Option<RolloutStatus>,
    /// How the last trial ended.
    pub last_rollout: Option<Ended>,
}

/// A trial in the admin list.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    /// The candidate's version (hash prefix).
    pub version: String,
    /// Its full content hash.
    pub hash: String,
    /// When it started (ms since the Unix epoch).
    pub started_at: u64,
    /// The plan (stage, share, tenants, guard).
    pub plan: Plan,
    /// The candidate's calls per hook on this node (shadow calls for a shadow).
    pub hooks: BTreeMap<&'static str, HookFigures>,
    /// Shadow: agreement with the live version per hook.
    pub shadow: BTreeMap<&'static str, ShadowFigures>,
    /// Shadow: the most recent disagreements.
    pub disagreements: Vec<Disagreement>,
    /// The guard's window on this node: the live version's rates.
    pub live_window: Rates,
    /// The guard's window on this node: the candidate's rates.
    pub candidate_window: Rates,
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
            Plugins::build(
                &config,
                max_json_depth,
                &code,
                None,
                &HashSet::new(),
                &HashMap::new(),
            )?
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
                trials: HashMap::new(),
            }),
        })
    }

    /// The bound set to use for one operation.
    pub fn current(&self) -> Arc<Plugins> {
        self.active.load_full()
    }

    /// Installs `code` as plugin `name`'s version. `Ok(false)` when it already serves. A
    /// trial of the plugin ends: promoted when `code` is its candidate, otherwise superseded.
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
        let outcome = match state.trials.get(name) {
            Some(t) if t.code.hash == code.hash => (Outcome::Promoted, "promoted".to_owned()),
            _ => (
                Outcome::Superseded,
                format!("version {} installed", &code.hash[..12]),
            ),
        };
        let version = Version {
            code,
            source,
            loaded_at: now_ms(),
        };
        let mut unbound = state.unbound.clone();
        unbound.remove(name);
        self.rebuild(&mut state, name, Some(version), unbound, Some(outcome))
            .await
            .map(|()| true)
    }

    /// Goes back to plugin `name`'s previous version (a trial of it ends, superseded).
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
        let why = (
            Outcome::Superseded,
            "rolled back to the previous version".to_owned(),
        );
        self.rebuild(&mut state, name, Some(version.clone()), unbound, Some(why))
            .await?;
        Ok(version)
    }

    /// Removes plugin `name`'s bindings: its channels fall to less specific patterns or the
    /// default policy. Installing a version binds it again. A trial of it ends, superseded.
    pub async fn unbind(&self, name: &str) -> Result<(), SwapError> {
        let mut state = self.state.lock().await;
        if !state.entries.contains_key(name) {
            return Err(SwapError::Unknown(name.to_owned()));
        }
        let mut unbound = state.unbound.clone();
        unbound.insert(name.to_owned());
        let why = (Outcome::Superseded, "unbound".to_owned());
        self.rebuild(&mut state, name, None, unbound, Some(why))
            .await
    }

    /// Replaces the bindings and runtime settings (config reload); trials go on.
    pub async fn reconfigure(&self, config: PluginsConfig) -> Result<(), SwapError> {
        let mut state = self.state.lock().await;
        let old = std::mem::replace(&mut state.config, config);
        let unbound = state.unbound.clone();
        if let Err(e) = self.rebuild(&mut state, "", None, unbound, None).await {
            state.config = old;
            return Err(e);
        }
        Ok(())
    }

    /// Starts a trial of `code` for plugin `name` under `plan` (or changes the plan of the
    /// running trial of the same code). `Ok(false)` when exactly this trial already runs.
    /// Refused: a plugin that does not serve here, a candidate that already serves, a trial
    /// of another version running, a candidate that fails to load.
    pub async fn start_trial(
        &self,
        name: &str,
        code: Code,
        plan: Plan,
        started_at: u64,
    ) -> Result<bool, SwapError> {
        if !is_component(&code.bytes) {
            return Err(SwapError::NotWasm);
        }
        plan.validate().map_err(SwapError::BadPlan)?;
        let mut state = self.state.lock().await;
        let serving = state.entries.get(name).and_then(|e| e.current.as_ref());
        let Some(serving) = serving.filter(|_| !state.unbound.contains(name)) else {
            return Err(SwapError::Unknown(name.to_owned()));
        };
        if serving.code.hash == code.hash {
            return Err(SwapError::Conflict(format!(
                "version {} of plugin {name:?} already serves everyone",
                &code.hash[..12]
            )));
        }
        if let Some(t) = state.trials.get(name) {
            if t.code.hash != code.hash {
                return Err(SwapError::Conflict(format!(
                    "plugin {name:?} already has a {} of version {} (since {}); promote or abort it first",
                    t.role().as_str(),
                    &t.code.hash[..12],
                    t.started_at
                )));
            }
            if t.plan == plan {
                return Ok(false);
            }
        }
        let mut trials = state.trials.clone();
        trials.insert(name.to_owned(), Trial::new(name, code, plan, started_at));
        let unbound = state.unbound.clone();
        self.build_with(&mut state, name, None, unbound, trials)
            .await
            .map(|()| true)
    }

    /// Ends plugin `name`'s trial: `Promoted` installs the candidate as the live version
    /// (returned), any other outcome drops it, recording `reason`.
    pub async fn end_trial(
        &self,
        name: &str,
        outcome: Outcome,
        reason: &str,
    ) -> Result<Option<Version>, SwapError> {
        let mut state = self.state.lock().await;
        let trial = state
            .trials
            .get(name)
            .cloned()
            .ok_or_else(|| SwapError::NoTrial(name.to_owned()))?;
        let unbound = state.unbound.clone();
        let why = Some((outcome, reason.to_owned()));
        if outcome == Outcome::Promoted {
            let version = Version {
                code: trial.code.clone(),
                source: Origin::Api,
                loaded_at: now_ms(),
            };
            self.rebuild(&mut state, name, Some(version.clone()), unbound, why)
                .await?;
            return Ok(Some(version));
        }
        self.rebuild(&mut state, name, None, unbound, why).await?;
        Ok(None)
    }

    /// The guard's look at every trial now: the plugins to roll back (with the reason) or
    /// to promote.
    pub async fn judge_trials(&self) -> Vec<(String, Judgement)> {
        let state = self.state.lock().await;
        let active = self.current();
        let now = now_ms();
        state
            .trials
            .iter()
            .filter_map(|(name, trial)| {
                let (live, candidate) = active.trial_counts(name);
                let (judgement, ..) = trial.judge(now, live, candidate);
                (judgement != Judgement::Wait).then(|| (name.clone(), judgement))
            })
            .collect()
    }

    /// The plugins on trial: name, candidate hash, plan, start.
    pub async fn trials(&self) -> Vec<(String, String, Plan, u64)> {
        let state = self.state.lock().await;
        state
            .trials
            .iter()
            .map(|(n, t)| (n.clone(), t.code.hash.clone(), t.plan.clone(), t.started_at))
            .collect()
    }

    /// Builds the set with `name` at `version` (when given) and without `name`'s trial
    /// (when `ended` says how it ended), and swaps it in.
    async fn rebuild(
        &self,
        state: &mut State,
        name: &str,
        version: Option<Version>,
        unbound: HashSet<String>,
        ended: Option<(Outcome, String)>,
    ) -> Result<(), SwapError> {
        let mut trials = state.trials.clone();
        let ending = match ended {
            Some(why) => trials.remove(name).map(|t| (t, why)),
            None => None,
        };
        self.build_with(state, name, version, unbound, trials)
            .await?;
        if let Some((trial, (outcome, reason))) = ending {
            let ended = Ended {
                outcome,
                version: trial.code.hash[..12].to_owned(),
                stage: trial.role(),
                reason,
                at: now_ms(),
            };
            tracing::warn!(plugin = name, version = %ended.version, stage = trial.role().as_str(), outcome = ?outcome, reason = %ended.reason, "plugin trial ended");
            metrics::counter!("switchyard_plugin_rollouts_ended_total", "plugin" => name.to_owned(), "outcome" => match outcome {
                Outcome::Promoted => "promoted",
                Outcome::RolledBack => "rolled_back",
                Outcome::Aborted => "aborted",
                Outcome::Superseded => "superseded",
            })
            .increment(1);
            state.entries.entry(name.to_owned()).or_default().ended = Some(ended);
        }
        Ok(())
    }

    /// Builds the set with `name` at `version` (when given) and exactly `trials`, and swaps
    /// it in; on failure records the reason and leaves everything as it was.
    async fn build_with(
        &self,
        state: &mut State,
        name: &str,
        version: Option<Version>,
        unbound: HashSet<String>,
        trials: HashMap<String, Arc<Trial>>,
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
        let trials_for_build = trials.clone();
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
                &trials_for_build,
            )
        })
        .await
        .map_err(|e| SwapError::Refused(format!("build task failed: {e}")))?;
        match built {
            Ok(plugins) => {
                self.active.store(Arc::new(plugins));
                state.unbound = unbound;
                state.trials = trials;
                // Everything of `name` loaded: an earlier refusal no longer describes it.
                if let Some(entry) = state.entries.get_mut(name) {
                    entry.last_error = None;
                }
                if let Some(v) = version {
                    let entry = state.entries.entry(name.to_owned()).or_default();
                    let old = entry.current.replace(v.clone());
                    if old.as_ref().is_some_and(|o| o.code.hash != v.code.hash) {
                        entry.previous = old;
                    }
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
                let hooks = hook_figures(&loaded);
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
                    rollout: state.trials.get(name).map(|t| rollout_status(&active, t)),
                    last_rollout: e.ended.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Calls and latency per hook that was called, over `instances`.
fn hook_figures(
    instances: &[&Arc<super::loaded::LoadedPlugin>],
) -> BTreeMap<&'static str, HookFigures> {
    Hook::ALL
        .iter()
        .filter_map(|&h| {
            let stats = || instances.iter().map(|l| &l.stats[h as usize]);
            let q = |q| stats().map(|s| s.quantile_us(q)).max().unwrap_or(0);
            let figures = HookFigures {
                calls: stats().map(|s| s.calls()).sum(),
                errors: stats().map(|s| s.errors()).sum(),
                p50_us: q(0.5),
                p99_us: q(0.99),
            };
            (figures.calls > 0).then_some((h.as_str(), figures))
        })
        .collect()
}

/// `trial` as the admin list shows it, with its candidate's figures from `active`.
fn rollout_status(active: &Plugins, trial: &Trial) -> RolloutStatus {
    let candidates: Vec<_> = active
        .candidates()
        .filter(|c| c.trial.plugin == trial.plugin)
        .map(|c| &c.plugin)
        .collect();
    let (live, candidate) = active.trial_counts(&trial.plugin);
    let (_, live_window, candidate_window) = trial.judge(now_ms(), live, candidate);
    RolloutStatus {
        version: trial.code.hash[..12].to_owned(),
        hash: trial.code.hash.clone(),
        started_at: trial.started_at,
        plan: trial.plan.clone(),
        hooks: hook_figures(&candidates),
        shadow: trial.shadow_figures().into_iter().collect(),
        disagreements: trial.disagreements(),
        live_window,
        candidate_window,
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
