//! A candidate version of a plugin on trial beside the live one, so a risky rule meets real
//! traffic before it meets every user:
//! - **shadow**: every call (or a sample of them) also runs on the candidate, on a worker
//!   thread of its own; its decision is compared with the live one and thrown away. The
//!   queue to that thread is bounded: past it, shadow calls are shed (counted), never waited
//!   for, so a shadow cannot delay a delivery;
//! - **canary**: some tenants, or a stable share of users (or channels), are served by the
//!   candidate instead of the live version.
//!
//! A [`Trial`] holds the plan, the shadow's findings and the guard's window; the bound set
//! (`super::Plugins`) decides per call which version runs; the registry starts and ends
//! trials; `crate::rollout` carries them to every node and acts on the guard's verdicts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::Code;
use super::bindings::{ConnectDecision, PublishDecision, SubscribeDecision};
use super::loaded::{Hook, LoadedPlugin, PluginError};
use crate::hub::{Group, GroupHook, Placement, Prepared};
use crate::identity::Identity;

/// The part a plugin instance set plays (the `role` label of the plugin metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves everything not given to a canary.
    #[default]
    Live,
    /// Runs beside the live version; its decisions are only compared.
    Shadow,
    /// Serves its tenants or share of traffic.
    Canary,
}

impl Role {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Live => "live",
            Role::Shadow => "shadow",
            Role::Canary => "canary",
        }
    }
}

/// What a canary's share of traffic is decided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareBy {
    /// The connection's user (anonymous connections: the channel), so a user sees one version
    /// across reconnects and nodes.
    #[default]
    User,
    /// The channel, so everyone on a channel sees one version.
    Channel,
}

/// A rollout plan: how a candidate takes part, when it is rolled back, when promoted. The
/// admin API takes it as query parameters; the cluster store keeps it as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Plan {
    /// `shadow` or `canary`.
    pub stage: Role,
    /// Shadow: percent of calls also run on the candidate (default 100). Canary: percent of
    /// users (or channels, see `by`) served by it, besides `tenants` (default 0).
    pub percent: Option<f64>,
    /// Canary: tenants served by the candidate, comma-separated.
    pub tenants: String,
    /// Canary: what the share is decided by.
    pub by: ShareBy,
    /// Guard: the window compared, in milliseconds.
    pub window_ms: u64,
    /// Guard: calls the candidate must have had in the window before it is judged.
    pub min_calls: u64,
    /// Guard: the most the candidate's error rate (traps, timeouts, invalid output, open
    /// circuit) may exceed the live version's, as a fraction.
    pub max_error_rate: f64,
    /// Guard: the most its denial rate (refused connects, subscribes and publishes, skipped
    /// deliveries) may exceed the live version's, as a fraction.
    pub max_denial_rate: f64,
    /// Guard: the most forwards per publish it may make, as a multiple of the live
    /// version's (at least one per ten publishes is always allowed).
    pub max_forward_ratio: f64,
    /// Canary: promote to every user after this long without a breach; never when absent.
    pub promote_after_ms: Option<u64>,
    /// Shadow: shadow calls queued at most (each holds a copy of its message); past it they
    /// are shed.
    pub budget: usize,
    /// Shadow: whether recorded disagreements show excerpts of the data (off: only sizes).
    pub excerpts: bool,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            stage: Role::Shadow,
            percent: None,
            tenants: String::new(),
            by: ShareBy::User,
            window_ms: 30_000,
            min_calls: 20,
            max_error_rate: 0.05,
            max_denial_rate: 0.10,
            max_forward_ratio: 2.0,
            promote_after_ms: None,
            budget: 1024,
            excerpts: false,
        }
    }
}

impl Plan {
    /// Checks the plan, saying what is wrong in the API's terms.
    pub fn validate(&self) -> Result<(), String> {
        let percent = self.percent.unwrap_or(0.0);
        if !(0.0..=100.0).contains(&percent) {
            return Err(format!("percent must be 0 to 100, not {percent}"));
        }
        match self.stage {
            Role::Live => return Err("stage must be shadow or canary".into()),
            Role::Shadow if self.percent == Some(0.0) => {
                return Err("a shadow of 0 percent of calls would never run".into());
            }
            Role::Shadow if !self.tenants.is_empty() => {
                return Err("tenants apply to a canary, not a shadow".into());
            }
            Role::Canary if percent == 0.0 && self.tenant_list().is_empty() => {
                return Err("a canary needs tenants or a percent above 0".into());
            }
            _ => {}
        }
        for (name, v) in [
            ("max_error_rate", self.max_error_rate),
            ("max_denial_rate", self.max_denial_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} is a fraction from 0 to 1, not {v}"));
            }
        }
        if self.max_forward_ratio.is_nan() || self.max_forward_ratio < 1.0 {
            return Err("max_forward_ratio must be at least 1".into());
        }
        if self.window_ms < 100 || self.min_calls == 0 {
            return Err("window_ms must be at least 100 and min_calls at least 1".into());
        }
        // Each queued call holds a copy of its message.
        if self.budget == 0 || self.budget > 65_536 {
            return Err("budget must be 1 to 65536 calls".into());
        }
        Ok(())
    }

    /// The canary's tenants.
    pub fn tenant_list(&self) -> Vec<&str> {
        self.tenants
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    }
}

/// One hook call, owned, for the shadow's thread.
enum Call {
    Connect(Identity, String, String, Vec<(String, String)>),
    Subscribe(Identity, String),
    Publish(Identity, String, String),
    Deliver(Group, String, Vec<u8>),
}

impl Call {
    fn hook(&self) -> Hook {
        match self {
            Call::Connect(..) => Hook::Connect,
            Call::Subscribe(..) => Hook::Subscribe,
            Call::Publish(..) => Hook::Publish,
            Call::Deliver(..) => Hook::Deliver,
        }
    }
}

/// A decision in two forms: in full (compared), and as shown to operators (data only as
/// excerpts, and only when the plan allows).
#[derive(Debug, Clone)]
pub struct Verdict {
    full: String,
    shown: String,
}

impl Verdict {
    fn same(full: String) -> Self {
        Self {
            shown: full.clone(),
            full,
        }
    }

    fn of_error(e: &PluginError) -> Self {
        Self::same(format!("error: {}", e.failure.kind()))
    }

    fn connect(d: &Result<ConnectDecision, PluginError>) -> Self {
        match d {
            Ok(ConnectDecision::Accept) => Self::same("accept".into()),
            Ok(ConnectDecision::Reject(r)) => Self::same(format!("reject: {r}")),
            Ok(ConnectDecision::Enrich(i)) => Self {
                full: format!("enrich {:?} {:?} {}", i.user, i.tenant, i.claims),
                shown: format!("enrich user {:?} tenant {:?}", i.user, i.tenant),
            },
            Err(e) => Self::of_error(e),
        }
    }

    fn subscribe(d: &Result<SubscribeDecision, PluginError>) -> Self {
        match d {
            Ok(SubscribeDecision::Allow) => Self::same("allow".into()),
            Ok(SubscribeDecision::AllowInGroup(g)) => Self::same(format!("allow in group {g}")),
            Ok(SubscribeDecision::Deny(r)) => Self::same(format!("deny: {r}")),
            Err(e) => Self::of_error(e),
        }
    }

    fn publish(d: &Result<PublishDecision, PluginError>, excerpts: bool) -> Self {
        match d {
            Ok(PublishDecision::Pass) => Self::same("pass".into()),
            Ok(PublishDecision::Drop) => Self::same("drop".into()),
            Ok(PublishDecision::Reject(r)) => Self::same(format!("reject: {r}")),
            Ok(PublishDecision::Forward(list)) => {
                let full = list
                    .iter()
                    .map(|o| format!("{} {}", o.channel, o.data))
                    .collect::<Vec<_>>()
                    .join("\n");
                let shown = list
                    .iter()
                    .map(|o| {
                        format!(
                            "{} ({})",
                            o.channel,
                            data_shown(o.data.as_bytes(), excerpts)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                Self {
                    full: format!("forward {full}"),
                    shown: format!("forward to {shown}"),
                }
            }
            Err(e) => Self::of_error(e),
        }
    }

    fn deliver(p: &Prepared, excerpts: bool) -> Self {
        match p {
            Prepared::Unchanged => Self::same("deliver".into()),
            Prepared::Skip => Self::same("skip".into()),
            Prepared::Failed => Self::same("error".into()),
            Prepared::Rewritten(data) => Self {
                full: format!("rewrite {}", String::from_utf8_lossy(data)),
                shown: format!("rewrite ({})", data_shown(data, excerpts)),
            },
        }
    }
}

/// Data as operators may see it: its size, and its first 64 bytes when excerpts are allowed.
fn data_shown(data: &[u8], excerpts: bool) -> String {
    if !excerpts {
        return format!("{} bytes", data.len());
    }
    let text = String::from_utf8_lossy(data);
    format!(
        "{} bytes: {}",
        data.len(),
        super::loaded::truncate(text.into_owned(), 64)
    )
}

/// A shadow call waiting for the shadow's thread.
struct Job {
    candidate: Arc<LoadedPlugin>,
    call: Call,
    live: Verdict,
}

/// A call on which the shadow decided otherwise than the live version.
#[derive(Debug, Clone, Serialize)]
pub struct Disagreement {
    /// When (ms since the Unix epoch).
    pub at: u64,
    /// The hook.
    pub hook: &'static str,
    /// The channel (empty for connects).
    pub channel: String,
    /// The caller's user, when known.
    pub user: Option<String>,
    /// The caller's (or the delivery group's) tenant.
    pub tenant: Option<String>,
    /// Size of the data the hook got, in bytes.
    pub bytes: usize,
    /// The live version's decision.
    pub live: String,
    /// The shadow's decision.
    pub shadow: String,
    /// An excerpt of the data, when the plan allows.
    pub data: Option<String>,
}

/// Disagreements kept per trial (the most recent).
const RECENT: usize = 20;

/// Shadow figures of one hook, with its `switchyard_plugin_shadow_calls_total` series
/// (registered once: a label lookup per call would cost as much as the call).
struct HookShadow {
    calls: AtomicU64,
    agreed: AtomicU64,
    disagreed: AtomicU64,
    shed: AtomicU64,
    /// agree, disagree, shed.
    series: [metrics::Counter; 3],
}

impl HookShadow {
    fn new(plugin: &str, hook: Hook) -> Self {
        let series = ["agree", "disagree", "shed"].map(|result| {
            metrics::counter!("switchyard_plugin_shadow_calls_total", "plugin" => plugin.to_owned(), "hook" => hook.as_str(), "result" => result)
        });
        Self {
            calls: AtomicU64::new(0),
            agreed: AtomicU64::new(0),
            disagreed: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            series,
        }
    }
}

/// One hook's shadow figures in the admin list.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ShadowFigures {
    /// Calls run on the shadow.
    pub calls: u64,
    /// Of those, decided as the live version did.
    pub agreed: u64,
    /// Decided otherwise.
    pub disagreed: u64,
    /// `agreed / calls` (1 with no calls).
    pub agreement: f64,
    /// Calls not run because the shadow's queue was full.
    pub shed: u64,
}

/// What the shadow found, shared with its thread.
struct Findings {
    hooks: [HookShadow; Hook::ALL.len()],
    recent: Mutex<VecDeque<Disagreement>>,
}

impl Findings {
    fn new(plugin: &str) -> Self {
        Self {
            hooks: Hook::ALL.map(|h| HookShadow::new(plugin, h)),
            recent: Mutex::default(),
        }
    }
}

/// Calls, failures, denials and forwards of one version, summed over its instance sets.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Hook calls (init excluded).
    pub calls: u64,
    /// Failed calls, refusals by an open circuit included.
    pub errors: u64,
    /// Refused connects, subscribes and publishes, skipped deliveries.
    pub denied: u64,
    /// Publish calls.
    pub publishes: u64,
    /// Messages forwarded by publish calls.
    pub forwarded: u64,
}

impl Counts {
    fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            calls: self.calls.saturating_sub(earlier.calls),
            errors: self.errors.saturating_sub(earlier.errors),
            denied: self.denied.saturating_sub(earlier.denied),
            publishes: self.publishes.saturating_sub(earlier.publishes),
            forwarded: self.forwarded.saturating_sub(earlier.forwarded),
        }
    }

    fn rate(part: u64, whole: u64) -> f64 {
        if whole == 0 {
            0.0
        } else {
            part as f64 / whole as f64
        }
    }

    /// Adds `plugin`'s figures.
    pub fn add(&mut self, plugin: &LoadedPlugin) {
        let outcomes = &plugin.outcomes;
        for hook in &Hook::ALL[1..] {
            let stats = &plugin.stats[*hook as usize];
            self.calls += stats.calls();
            self.errors += stats.errors();
        }
        let refused = outcomes.refused.load(Relaxed);
        self.calls += refused;
        self.errors += refused;
        self.denied += outcomes.denied.load(Relaxed);
        self.publishes += plugin.stats[Hook::Publish as usize].calls();
        self.forwarded += outcomes.forwarded.load(Relaxed);
    }
}

/// The rates the guard compares, over its window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rates {
    /// Calls in the window.
    pub calls: u64,
    /// Failed calls / calls.
    pub error_rate: f64,
    /// Denials / calls.
    pub denial_rate: f64,
    /// Forwards / publish calls.
    pub forwards_per_publish: f64,
}

impl From<Counts> for Rates {
    fn from(c: Counts) -> Self {
        Rates {
            calls: c.calls,
            error_rate: Counts::rate(c.errors, c.calls),
            denial_rate: Counts::rate(c.denied, c.calls),
            forwards_per_publish: Counts::rate(c.forwarded, c.publishes),
        }
    }
}

/// What the guard decided at one look.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Nothing to do yet.
    Wait,
    /// Roll back, for this reason.
    Breach(String),
    /// The clean window the plan asked for has passed: promote.
    Promote,
}

/// A candidate version on trial: its code, plan, shadow findings and guard window.
pub struct Trial {
    /// The plugin.
    pub plugin: String,
    /// The candidate's code.
    pub code: Code,
    /// The plan.
    pub plan: Plan,
    /// When it started (ms since the Unix epoch), the same on every node.
    pub started_at: u64,
    tenants: Vec<String>,
    /// Canary: the share served, in ten-thousandths; shadow: of calls run.
    share: u64,
    sampled: AtomicU64,
    queue: Option<SyncSender<Job>>,
    findings: Arc<Findings>,
    /// (when, live, candidate) snapshots over the guard's window, oldest first.
    window: Mutex<VecDeque<(u64, Counts, Counts)>>,
}

impl Trial {
    /// A trial of `code` for plugin `plugin` under a validated `plan`; a shadow starts its
    /// thread here (it ends when the trial is dropped).
    pub fn new(plugin: &str, code: Code, plan: Plan, started_at: u64) -> Arc<Self> {
        let default = if plan.stage == Role::Shadow {
            100.0
        } else {
            0.0
        };
        let share = (plan.percent.unwrap_or(default) * 100.0).round() as u64;
        let findings = Arc::new(Findings::new(plugin));
        let queue = (plan.stage == Role::Shadow).then(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel(plan.budget);
            let findings = findings.clone();
            let excerpts = plan.excerpts;
            std::thread::Builder::new()
                .name(format!("shadow-{plugin}"))
                .spawn(move || shadow_thread(rx, &findings, excerpts))
                .expect("spawn the shadow thread");
            tx
        });
        Arc::new(Self {
            plugin: plugin.to_owned(),
            tenants: plan.tenant_list().into_iter().map(str::to_owned).collect(),
            code,
            plan,
            started_at,
            share,
            sampled: AtomicU64::new(0),
            queue,
            findings,
            window: Mutex::new(VecDeque::new()),
        })
    }

    /// The role its candidate instances play.
    pub fn role(&self) -> Role {
        self.plan.stage
    }

    /// Canary: whether the candidate serves a caller of `tenant` on `key` (the user, or the
    /// channel).
    pub fn serves(&self, tenant: Option<&str>, key: &str) -> bool {
        if tenant.is_some_and(|t| self.tenants.iter().any(|x| x == t)) {
            return true;
        }
        self.share > 0 && bucket(&self.plugin, key) < self.share
    }

    /// Shadow: whether this call is one of the sample.
    fn sampled(&self) -> bool {
        if self.share >= 10_000 {
            return true;
        }
        let n = self.sampled.fetch_add(1, Relaxed);
        // Spread evenly: the call whose running share crosses a whole number runs.
        (n + 1) * self.share / 10_000 != n * self.share / 10_000
    }

    /// Queues a shadow call unless the queue is full (then it is shed, counted).
    fn offer(&self, job: Job) {
        let Some(queue) = &self.queue else { return };
        let hook = job.call.hook();
        match queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let figures = &self.findings.hooks[hook as usize];
                figures.shed.fetch_add(1, Relaxed);
                figures.series[2].increment(1);
            }
        }
    }

    /// Shadow figures per hook that was shadowed.
    pub fn shadow_figures(&self) -> Vec<(&'static str, ShadowFigures)> {
        Hook::ALL
            .iter()
            .filter_map(|h| {
                let s = &self.findings.hooks[*h as usize];
                let calls = s.calls.load(Relaxed);
                let shed = s.shed.load(Relaxed);
                let agreed = s.agreed.load(Relaxed);
                (calls + shed > 0).then(|| {
                    (
                        h.as_str(),
                        ShadowFigures {
                            calls,
                            agreed,
                            disagreed: s.disagreed.load(Relaxed),
                            agreement: if calls == 0 {
                                1.0
                            } else {
                                agreed as f64 / calls as f64
                            },
                            shed,
                        },
                    )
                })
            })
            .collect()
    }

    /// The most recent disagreements, oldest first.
    pub fn disagreements(&self) -> Vec<Disagreement> {
        let recent = self
            .findings
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        recent.iter().cloned().collect()
    }

    /// The guard's look at `now`: `live` and `candidate` are the versions' running totals.
    /// Compares what each did over the last `window_ms` (or since the trial started).
    pub fn judge(&self, now: u64, live: Counts, candidate: Counts) -> (Judgement, Rates, Rates) {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        // Totals that went down (instances rebuilt by a reload) start the window again.
        if window
            .back()
            .is_some_and(|(_, l, c)| l.calls > live.calls || c.calls > candidate.calls)
        {
            window.clear();
        }
        window.push_back((now, live, candidate));
        while window.len() > 1 && window[1].0 + self.plan.window_ms <= now {
            window.pop_front();
        }
        let (_, l0, c0) = window.front().copied().expect("just pushed");
        let (l, c) = (live.since(&l0), candidate.since(&c0));
        let (lr, cr) = (Rates::from(l), Rates::from(c));
        let plan = &self.plan;
        if self.plan.stage != Role::Canary {
            return (Judgement::Wait, lr, cr);
        }
        let pct = |v: f64| format!("{:.1} %", v * 100.0);
        let secs = plan.window_ms as f64 / 1000.0;
        if c.calls >= plan.min_calls {
            let rates = [
                ("error", cr.error_rate, lr.error_rate, plan.max_error_rate),
                (
                    "denial",
                    cr.denial_rate,
                    lr.denial_rate,
                    plan.max_denial_rate,
                ),
            ];
            for (what, candidate, live, allowed) in rates {
                if candidate > live + allowed {
                    let why = format!(
                        "{what} rate {} over {} calls in {secs} s (live {}, allowed +{})",
                        pct(candidate),
                        c.calls,
                        pct(live),
                        pct(allowed)
                    );
                    return (Judgement::Breach(why), lr, cr);
                }
            }
            let allowed = (lr.forwards_per_publish * plan.max_forward_ratio).max(0.1);
            if c.publishes > 0 && cr.forwards_per_publish > allowed {
                return (
                    Judgement::Breach(format!(
                        "{:.2} forwards per publish over {} publishes in {secs} s (live {:.2}, allowed {allowed:.2})",
                        cr.forwards_per_publish, c.publishes, lr.forwards_per_publish
                    )),
                    lr,
                    cr,
                );
            }
        }
        match plan.promote_after_ms {
            Some(after) if now >= self.started_at + after => (Judgement::Promote, lr, cr),
            _ => (Judgement::Wait, lr, cr),
        }
    }
}

/// Where `key` falls among 10,000 buckets for `plugin`: FNV-1a, so every node (and every
/// build) puts a user in the same bucket, and different plugins' canaries pick different users.
fn bucket(plugin: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in plugin.bytes().chain([0]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % 10_000
}

/// Runs shadow calls until the trial is dropped.
fn shadow_thread(rx: Receiver<Job>, findings: &Findings, excerpts: bool) {
    while let Ok(job) = rx.recv() {
        let hook = job.call.hook();
        let (shadow, channel, who, bytes, data) = match &job.call {
            Call::Connect(who, addr, query, headers) => {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let info = super::bindings::ConnectInfo {
                    remote_addr: addr,
                    headers: &headers,
                    query,
                    identity: super::wit(who),
                };
                let v = Verdict::connect(&job.candidate.on_connect(info));
                (v, "", Some(who), query.len(), query.as_bytes())
            }
            Call::Subscribe(who, channel) => {
                let v = Verdict::subscribe(&job.candidate.on_subscribe(super::wit(who), channel));
                (v, channel.as_str(), Some(who), 0, &b""[..])
            }
            Call::Publish(who, channel, data) => {
                let d = job.candidate.on_publish(super::wit(who), channel, data);
                let v = Verdict::publish(&d, excerpts);
                (v, channel.as_str(), Some(who), data.len(), data.as_bytes())
            }
            Call::Deliver(group, channel, data) => {
                let v = Verdict::deliver(&job.candidate.prepare(channel, group, data), excerpts);
                (v, channel.as_str(), None, data.len(), &data[..])
            }
        };
        let figures = &findings.hooks[hook as usize];
        figures.calls.fetch_add(1, Relaxed);
        if shadow.full == job.live.full {
            figures.agreed.fetch_add(1, Relaxed);
            figures.series[0].increment(1);
            continue;
        }
        figures.disagreed.fetch_add(1, Relaxed);
        figures.series[1].increment(1);
        let tenant = match &job.call {
            Call::Deliver(group, ..) => group.tenant.as_deref().map(str::to_owned),
            _ => who.and_then(|w| w.tenant.clone()),
        };
        let seen = Disagreement {
            at: crate::clock::now_ms(),
            hook: hook.as_str(),
            channel: channel.to_owned(),
            user: who.and_then(|w| w.user.clone()),
            tenant,
            bytes,
            live: job.live.shown,
            shadow: shadow.shown,
            data: (excerpts && !data.is_empty()).then(|| data_shown(data, true)),
        };
        let mut recent = findings
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(seen);
    }
}

/// Where a plugin name is bound: the live instance set and, during a trial, the candidate's.
#[derive(Clone)]
pub struct Slot {
    /// The live version.
    pub live: Arc<LoadedPlugin>,
    /// The candidate on trial, if any.
    pub candidate: Option<Candidate>,
}

/// A candidate's instance set in one slot.
#[derive(Clone)]
pub struct Candidate {
    /// The candidate version.
    pub plugin: Arc<LoadedPlugin>,
    /// Its trial.
    pub trial: Arc<Trial>,
    /// Shadow: the deliver hook that runs the live version and shadows it.
    shadowed: Option<Arc<dyn GroupHook>>,
}

impl Candidate {
    /// The candidate `plugin` of `trial`, paired with `live`.
    pub fn new(plugin: Arc<LoadedPlugin>, trial: Arc<Trial>, live: &Arc<LoadedPlugin>) -> Self {
        let shadowed = (trial.role() == Role::Shadow).then(|| {
            Arc::new(Shadowed {
                live: live.clone(),
                candidate: plugin.clone(),
                trial: trial.clone(),
            }) as Arc<dyn GroupHook>
        });
        Self {
            plugin,
            trial,
            shadowed,
        }
    }
}

impl Slot {
    /// A slot with no trial.
    pub fn live(plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            live: plugin,
            candidate: None,
        }
    }

    /// The version to call for a caller of `tenant` keyed by `key`, and the candidate to
    /// shadow the call on, when this call is shadowed.
    pub fn choose(
        &self,
        tenant: Option<&str>,
        key: &str,
    ) -> (&Arc<LoadedPlugin>, Option<&Candidate>) {
        match &self.candidate {
            None => (&self.live, None),
            Some(c) if c.trial.role() == Role::Canary => match c.trial.serves(tenant, key) {
                true => (&c.plugin, None),
                false => (&self.live, None),
            },
            Some(c) => (&self.live, c.trial.sampled().then_some(c)),
        }
    }

    /// The deliver hook for a group of `tenant` on `channel`.
    pub fn deliver(&self, tenant: Option<&str>, channel: &str) -> Arc<dyn GroupHook> {
        match &self.candidate {
            None => self.live.clone(),
            Some(c) => match &c.shadowed {
                Some(shadowed) => shadowed.clone(),
                None if c.trial.serves(tenant, channel) => c.plugin.clone(),
                None => self.live.clone(),
            },
        }
    }
}

/// The key a canary's share is decided by for `who` on `channel`.
pub fn share_key<'a>(by: ShareBy, who: &'a Identity, channel: &'a str) -> &'a str {
    match (by, &who.user) {
        (ShareBy::User, Some(user)) => user,
        _ => channel,
    }
}

impl Candidate {
    /// Shadows a connect whose live decision was `live`.
    pub fn shadow_connect(
        &self,
        info: &super::Connecting<'_>,
        live: &Result<ConnectDecision, PluginError>,
    ) {
        let headers = info
            .headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.trial.offer(Job {
            candidate: self.plugin.clone(),
            call: Call::Connect(
                info.identity.clone(),
                info.remote_addr.to_owned(),
                info.query.to_owned(),
                headers,
            ),
            live: Verdict::connect(live),
        });
    }

    /// Shadows a subscribe whose live decision was `live`.
    pub fn shadow_subscribe(
        &self,
        who: &Identity,
        channel: &str,
        live: &Result<SubscribeDecision, PluginError>,
    ) {
        self.trial.offer(Job {
            candidate: self.plugin.clone(),
            call: Call::Subscribe(who.clone(), channel.to_owned()),
            live: Verdict::subscribe(live),
        });
    }

    /// Shadows a publish whose live decision was `live`.
    pub fn shadow_publish(
        &self,
        who: &Identity,
        channel: &str,
        data: &str,
        live: &Result<PublishDecision, PluginError>,
    ) {
        self.trial.offer(Job {
            candidate: self.plugin.clone(),
            call: Call::Publish(who.clone(), channel.to_owned(), data.to_owned()),
            live: Verdict::publish(live, self.trial.plan.excerpts),
        });
    }
}

/// The deliver hook of a shadowed slot: the live version decides, the shadow is offered the
/// same call.
struct Shadowed {
    live: Arc<LoadedPlugin>,
    candidate: Arc<LoadedPlugin>,
    trial: Arc<Trial>,
}

impl GroupHook for Shadowed {
    fn prepare(&self, channel: &str, group: &Group, data: &[u8]) -> Prepared {
        let live = self.live.prepare(channel, group, data);
        if self.trial.sampled() {
            self.trial.offer(Job {
                candidate: self.candidate.clone(),
                call: Call::Deliver(group.clone(), channel.to_owned(), data.to_vec()),
                live: Verdict::deliver(&live, self.trial.plan.excerpts),
            });
        }
        live
    }

    fn placement(&self) -> &Placement {
        self.live.placement()
    }

    fn describe(&self) -> String {
        self.live.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(stage: Role) -> Plan {
        Plan {
            stage,
            ..Plan::default()
        }
    }

    #[test]
    fn plans_are_checked() {
        assert!(plan(Role::Shadow).validate().is_ok());
        let canary = plan(Role::Canary);
        assert_eq!(
            canary.validate().unwrap_err(),
            "a canary needs tenants or a percent above 0"
        );
        let by_tenant = Plan {
            tenants: " acme, ,beta".into(),
            ..canary.clone()
        };
        assert!(by_tenant.validate().is_ok());
        assert_eq!(by_tenant.tenant_list(), ["acme", "beta"]);
        let too_much = Plan {
            percent: Some(101.0),
            ..canary.clone()
        };
        assert!(too_much.validate().unwrap_err().contains("0 to 100"));
        let live = plan(Role::Live);
        assert!(live.validate().is_err());
        let bad_rate = Plan {
            percent: Some(5.0),
            max_error_rate: 2.0,
            ..canary
        };
        assert!(bad_rate.validate().unwrap_err().contains("max_error_rate"));
    }

    #[test]
    fn shares_are_stable_and_about_right() {
        let code = Code::new(b"\0asm".to_vec());
        let trial = Trial::new(
            "p",
            code,
            Plan {
                stage: Role::Canary,
                percent: Some(10.0),
                ..Plan::default()
            },
            0,
        );
        let served = (0..10_000)
            .filter(|i| trial.serves(None, &format!("user-{i}")))
            .count();
        assert!((800..1200).contains(&served), "{served} of 10000");
        for i in 0..100 {
            let key = format!("user-{i}");
            assert_eq!(trial.serves(None, &key), trial.serves(None, &key));
        }
        assert!(!trial.serves(Some("acme"), "nobody-in-the-share-0"));
    }

    #[test]
    fn a_shadow_sample_runs_its_share_of_calls() {
        let trial = Trial::new(
            "p",
            Code::new(b"\0asm".to_vec()),
            Plan {
                percent: Some(25.0),
                ..plan(Role::Shadow)
            },
            0,
        );
        let runs = (0..1000).filter(|_| trial.sampled()).count();
        assert_eq!(runs, 250);
    }

    fn counts(calls: u64, errors: u64) -> Counts {
        Counts {
            calls,
            errors,
            ..Counts::default()
        }
    }

    #[test]
    fn the_guard_compares_the_window_with_the_live_version() {
        let trial = Trial::new(
            "p",
            Code::new(b"\0asm".to_vec()),
            Plan {
                stage: Role::Canary,
                tenants: "acme".into(),
                window_ms: 1000,
                min_calls: 10,
                promote_after_ms: Some(5000),
                ..Plan::default()
            },
            0,
        );
        // Too few calls to judge, however bad.
        let (j, ..) = trial.judge(0, counts(0, 0), counts(0, 0));
        assert_eq!(j, Judgement::Wait);
        let (j, ..) = trial.judge(100, counts(100, 0), counts(5, 5));
        assert_eq!(j, Judgement::Wait);
        // 1 in 10 failing against none: over the allowed 5 %.
        let (j, _, rates) = trial.judge(200, counts(200, 0), counts(10, 1));
        assert!(
            matches!(&j, Judgement::Breach(why) if why.starts_with("error rate 10.0 % over 10 calls")),
            "{j:?}"
        );
        assert_eq!(rates.calls, 10);
        // Later windows forget the early failures.
        let (j, ..) = trial.judge(3000, counts(300, 0), counts(20, 1));
        let (j2, ..) = trial.judge(4500, counts(400, 0), counts(40, 1));
        assert_eq!((j, j2), (Judgement::Wait, Judgement::Wait));
        let (j, ..) = trial.judge(5000, counts(500, 0), counts(50, 1));
        assert_eq!(j, Judgement::Promote);
    }
}
