//! Plugin rollout: a version from an admin upload, the plugins directory or another node is
//! installed here and, with Redis, on every node; rollback and unbind likewise. The admin API
//! and the file watcher call this module; nothing else changes which plugin versions serve.
//!
//! Cluster protocol: the version's bytes go to the cluster store (`plugins::cluster`), then a
//! note `{"plugin":..,"hash":..}` is published on the reserved channel [`CONTROL_CHANNEL`];
//! every node receives it through its dispatcher, fetches the bytes by hash and installs them,
//! and records in the store which version it serves (drift shows in the admin list). A node
//! that starts later reads the cluster's current versions before it loads its own files.
//!
//! Trials (a candidate version as a shadow or canary, `plugins::candidate`) travel the same
//! way: the candidate's bytes and plan go to the store, a note `{"plugin":..,"trial":{..}}`
//! starts it on every node, `{"plugin":..,"ended":{..}}` ends it everywhere; a promotion is an
//! ordinary version note. Each node's guard looks at its own traffic every
//! [`GUARD_INTERVAL`]; the first node to see a breach rolls the candidate back everywhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Subscriptions};
use crate::clock::now_ms;
use crate::config::PluginsConfig;
use crate::dispatch::Control;
use crate::plugins::Code;
use crate::plugins::candidate::{Judgement, Plan};
use crate::plugins::cluster::ClusterStore;
use crate::plugins::registry::{Origin, Outcome, PluginRegistry, SwapError, Version};

/// Broker channel announcing new versions; `$` is never allowed in client channel names.
pub const CONTROL_CHANNEL: &str = "$plugins";

/// How often each node's guard looks at its trials.
pub const GUARD_INTERVAL: Duration = Duration::from_millis(250);

/// A trial as the cluster store keeps it and notes carry it.
#[derive(serde::Serialize, serde::Deserialize)]
struct TrialNote {
    hash: String,
    plan: Plan,
    started_at: u64,
}

/// How a trial ended, as notes carry it.
#[derive(serde::Serialize, serde::Deserialize)]
struct EndNote {
    outcome: Outcome,
    reason: String,
}

/// What a deploy or rollback did.
pub struct Deployed {
    /// The version now serving.
    pub code: Code,
    /// Whether it replaced another version on this node.
    pub changed: bool,
    /// Whether it reached the cluster (`false` without Redis, or when Redis failed: logged).
    pub cluster: bool,
}

/// This node's part in rolling plugin versions out.
pub struct Rollout {
    node: String,
    registry: Arc<PluginRegistry>,
    store: Option<ClusterStore>,
    broker: Arc<dyn Broker>,
}

impl Rollout {
    /// Rollout for node `node`: versions swap in `registry`, and are shared through `store`
    /// and announced on `broker` when there is a cluster.
    pub fn new(
        node: &str,
        registry: Arc<PluginRegistry>,
        store: Option<ClusterStore>,
        broker: Arc<dyn Broker>,
    ) -> Self {
        Self {
            node: node.to_owned(),
            registry,
            store,
            broker,
        }
    }

    /// The cluster's current version of each plugin, to start with instead of the local files
    /// (empty without Redis, or when the store does not answer within 5 s: logged).
    pub async fn cluster_versions(store: Option<&ClusterStore>) -> HashMap<String, Version> {
        let Some(store) = store else {
            return HashMap::new();
        };
        match tokio::time::timeout(Duration::from_secs(5), store.current()).await {
            Ok(Ok(current)) => current
                .into_iter()
                .map(|(name, code)| {
                    let version = Version {
                        code,
                        source: Origin::Cluster,
                        loaded_at: now_ms(),
                    };
                    (name, version)
                })
                .collect(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read cluster plugin versions; using local files");
                HashMap::new()
            }
            Err(_) => {
                tracing::warn!("cluster plugin versions timed out; using local files");
                HashMap::new()
            }
        }
    }

    /// Installs `code` as plugin `name` and shares it with the cluster: always for an upload
    /// (re-uploading the serving version repairs a node that drifted), for a file only when
    /// it changed what serves.
    pub async fn deploy(
        &self,
        name: &str,
        code: Code,
        origin: Origin,
    ) -> Result<Deployed, SwapError> {
        let changed = self.registry.install(name, code.clone(), origin).await?;
        let cluster = if changed || origin == Origin::Api {
            self.share(name, &code).await
        } else {
            false
        };
        Ok(Deployed {
            code,
            changed,
            cluster,
        })
    }

    /// Goes back to plugin `name`'s previous version, here and on every node.
    pub async fn rollback(&self, name: &str) -> Result<Deployed, SwapError> {
        let version = self.registry.rollback(name).await?;
        let cluster = self.share(name, &version.code).await;
        Ok(Deployed {
            code: version.code,
            changed: true,
            cluster,
        })
    }

    /// Unbinds plugin `name` on this node.
    pub async fn unbind(&self, name: &str) -> Result<(), SwapError> {
        self.registry.unbind(name).await
    }

    /// Starts a shadow or canary of `code` for plugin `name` here and, with Redis, on every
    /// node (or changes the plan of the one running).
    pub async fn start_trial(
        &self,
        name: &str,
        code: Code,
        plan: Plan,
    ) -> Result<Deployed, SwapError> {
        let note = TrialNote {
            hash: code.hash.clone(),
            plan: plan.clone(),
            started_at: now_ms(),
        };
        let changed = self
            .registry
            .start_trial(name, code.clone(), plan, note.started_at)
            .await?;
        let mut cluster = false;
        if let Some(store) = &self.store {
            let text = serde_json::to_string(&note).expect("a trial serialises");
            match store.put_trial(name, &code, &text).await {
                Ok(()) => {
                    cluster = self
                        .announce(name, json!({"plugin": name, "trial": note}))
                        .await;
                }
                Err(e) => {
                    tracing::warn!(plugin = name, error = %e, "trial not shared with the cluster")
                }
            }
        }
        Ok(Deployed {
            code,
            changed,
            cluster,
        })
    }

    /// Ends plugin `name`'s trial here and on every node: `Promoted` makes the candidate the
    /// live version everywhere (returned); any other outcome drops it, recording `reason`.
    pub async fn end_trial(
        &self,
        name: &str,
        outcome: Outcome,
        reason: &str,
    ) -> Result<Option<Deployed>, SwapError> {
        let promoted = self.registry.end_trial(name, outcome, reason).await?;
        if let Some(store) = &self.store
            && let Err(e) = store.clear_trial(name).await
        {
            tracing::warn!(plugin = name, error = %e, "ended trial still recorded in the cluster store");
        }
        let Some(version) = promoted else {
            let note =
                json!({"plugin": name, "ended": EndNote { outcome, reason: reason.to_owned() }});
            self.announce(name, note).await;
            return Ok(None);
        };
        let cluster = self.share(name, &version.code).await;
        Ok(Some(Deployed {
            code: version.code,
            changed: true,
            cluster,
        }))
    }

    /// The guard's look: rolls back every trial in breach, promotes every trial whose clean
    /// window has passed.
    async fn guard(&self) {
        for (name, judgement) in self.registry.judge_trials().await {
            let result = match judgement {
                Judgement::Breach(why) => {
                    let reason = format!("guard on node {}: {why}", self.node);
                    self.end_trial(&name, Outcome::RolledBack, &reason).await
                }
                Judgement::Promote => {
                    let reason = format!("no breach for promote_after_ms (node {})", self.node);
                    self.end_trial(&name, Outcome::Promoted, &reason).await
                }
                Judgement::Wait => continue,
            };
            if let Err(e) = result {
                tracing::warn!(plugin = %name, error = %e, "guard could not end the trial");
            }
        }
    }

    /// Applies a reloaded `[plugins]` section (bindings, limits) on this node.
    pub async fn reconfigure(&self, config: PluginsConfig) -> Result<(), SwapError> {
        self.registry.reconfigure(config).await
    }

    /// Every plugin's status, with the version each node reports (with Redis).
    pub async fn list(&self) -> Vec<serde_json::Value> {
        let mut plugins = Vec::new();
        for status in self.registry.list().await {
            let mut v = serde_json::to_value(&status).expect("status serialises");
            if let Some(store) = &self.store {
                let nodes = store.nodes(&status.name).await.unwrap_or_default();
                let short: serde_json::Map<String, serde_json::Value> = nodes
                    .into_iter()
                    .map(|(n, h)| (n, json!(h.get(..12).unwrap_or(&h))))
                    .collect();
                v["nodes"] = json!(short);
            }
            plugins.push(v);
        }
        plugins
    }

    /// Makes `code` plugin `name`'s version cluster-wide (store, then announce); whether it
    /// reached the cluster.
    async fn share(&self, name: &str, code: &Code) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        if let Err(e) = store.put(name, code).await {
            tracing::warn!(plugin = name, error = %e, "version not shared with the cluster");
            return false;
        }
        store.report(&self.node, name, &code.hash).await;
        self.announce(name, json!({"plugin": name, "hash": code.hash}))
            .await
    }

    /// Publishes `note` on the control channel; whether it went out (the store has the state
    /// either way: nodes read it at their next start).
    async fn announce(&self, name: &str, note: serde_json::Value) -> bool {
        if self.store.is_none() {
            return false;
        }
        let note = Bytes::from(note.to_string());
        match self.broker.publish(CONTROL_CHANNEL, note, None).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(plugin = name, error = %e, "stored but not announced; nodes get it at their next start");
                false
            }
        }
    }

    /// Serves the control channel until `shutdown`: with a cluster, subscribes to it
    /// (retrying until the broker accepts), reports the versions this node serves, then
    /// installs every version another node announces.
    pub async fn run(
        self: Arc<Self>,
        subscriptions: Subscriptions,
        mut control: mpsc::UnboundedReceiver<Control>,
        shutdown: CancellationToken,
    ) {
        if let Some(store) = &self.store {
            while subscriptions.subscribe(CONTROL_CHANNEL).await.is_err() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            for status in self.registry.list().await {
                if let Some(hash) = &status.hash {
                    store.report(&self.node, &status.name, hash).await;
                }
            }
            match store.trials().await {
                Ok(trials) => {
                    for (name, note) in trials {
                        self.on_trial(&name, &note).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the cluster's plugin trials"),
            }
        }
        let mut guard = tokio::time::interval(GUARD_INTERVAL);
        guard.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (channel, payload) = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = guard.tick() => {
                    self.guard().await;
                    continue;
                }
                message = control.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            if channel == CONTROL_CHANNEL {
                self.on_announcement(&payload).await;
            }
        }
    }

    /// A trial another node started (or this node found in the store at start): fetch the
    /// candidate and start it here.
    async fn on_trial(&self, name: &str, note: &str) {
        let Some(store) = &self.store else { return };
        let note: TrialNote = match serde_json::from_str(note) {
            Ok(note) => note,
            Err(e) => {
                tracing::warn!(plugin = name, error = %e, "ignoring a malformed plugin trial");
                return;
            }
        };
        let result = match store.blob(&note.hash).await {
            Ok(code) => self
                .registry
                .start_trial(name, code, note.plan, note.started_at)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            tracing::warn!(plugin = name, error = %e, "the cluster's trial cannot run here");
        }
    }

    /// A note from some node: a version to install, a trial to start or to end.
    async fn on_announcement(&self, payload: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Note {
            plugin: String,
            hash: Option<String>,
            trial: Option<serde_json::Value>,
            ended: Option<EndNote>,
        }
        let Ok(note) = serde_json::from_slice::<Note>(payload) else {
            tracing::warn!("ignoring malformed plugin announcement");
            return;
        };
        if let Some(trial) = note.trial {
            return self.on_trial(&note.plugin, &trial.to_string()).await;
        }
        if let Some(ended) = note.ended {
            match self
                .registry
                .end_trial(&note.plugin, ended.outcome, &ended.reason)
                .await
            {
                Ok(_) | Err(SwapError::NoTrial(_)) => {}
                Err(e) => {
                    tracing::warn!(plugin = %note.plugin, error = %e, "cannot end the trial here")
                }
            }
            return;
        }
        let Some(hash) = note.hash else {
            tracing::warn!("ignoring a plugin announcement without a version");
            return;
        };
        let note = Announced {
            plugin: note.plugin,
            hash,
        };
        let Some(store) = &self.store else { return };
        if self.registry.current_hash(&note.plugin).await.as_deref() == Some(note.hash.as_str()) {
            store.report(&self.node, &note.plugin, &note.hash).await;
            return;
        }
        match store.blob(&note.hash).await {
            Ok(code) => match self
                .registry
                .install(&note.plugin, code, Origin::Cluster)
                .await
            {
                Ok(_) => store.report(&self.node, &note.plugin, &note.hash).await,
                Err(e) => {
                    tracing::warn!(plugin = %note.plugin, error = %e, "announced version refused")
                }
            },
            Err(e) => {
                tracing::warn!(plugin = %note.plugin, error = %e, "announced version unavailable")
            }
        }
    }
}

/// A version some node announced.
struct Announced {
    plugin: String,
    hash: String,
}
