//! What a shadow costs the node: CPU per publish call (the caller's and the shadow thread's,
//! summed over every thread of the process) with the live plugin alone, and with a shadow of
//! it on every call; in alternating rounds, reported as medians and as a ratio.
//!
//! `cargo bench -p switchyard --bench shadow` (`SHADOW_CALLS`, `SHADOW_ROUNDS` to change the
//! 300,000 calls per run and 5 rounds).

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use switchyard::config::{BindingConfig, PluginsConfig};
use switchyard::identity::Identity;
use switchyard::plugins::candidate::{Plan, Role, Trial};
use switchyard::plugins::{Plugins, read_code};

use common::{PAYLOAD_BYTES, padded};

const CHANNEL: &str = "chat:lobby";

/// `plugin` bound to `chat:*`, with a shadow of the same code on every call when `shadowed`.
fn load(plugin: &str, shadowed: bool) -> Plugins {
    let binding: BindingConfig =
        serde_json::from_value(serde_json::json!({ "pattern": "chat:*", "plugin": plugin }))
            .expect("binding config");
    let config = PluginsConfig {
        dir: common::plugins_dir(),
        bindings: vec![binding],
        // A call descheduled on a busy machine must not fail the run.
        timeout_ms: 1000,
        ..Default::default()
    };
    let mut trials = HashMap::new();
    if shadowed {
        let code = read_code(&config, plugin, "bench").expect("plugin file");
        let plan = Plan {
            stage: Role::Shadow,
            ..Plan::default()
        };
        trials.insert(plugin.to_owned(), Trial::new(plugin, code, plan, 0));
    }
    let code = |name: &str, key: &str| read_code(&config, name, key);
    Plugins::build(&config, 128, &code, None, &Default::default(), &trials)
        .unwrap_or_else(|e| panic!("loading {plugin}: {e}"))
}

/// Nanoseconds on CPU of every thread of this process so far.
fn process_cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// (CPU µs per call, wall µs per call) of `calls` publishes through `plugins`, waiting for the
/// shadow thread to drain its queue before the CPU is read.
fn run(plugins: &Plugins, data: &str, calls: u64) -> (f64, f64) {
    let who = Identity::anonymous();
    let cpu = process_cpu_ns();
    let wall = Instant::now();
    for _ in 0..calls {
        black_box(plugins.publish(black_box(&who), CHANNEL, black_box(data))).expect("publish");
    }
    let elapsed = wall.elapsed();
    // The shadow's queue empties within a few ms of the last call; its work counts.
    let mut seen = shadow_done(plugins);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(5));
        let now = shadow_done(plugins);
        if now == seen {
            break;
        }
        seen = now;
    }
    let cpu = (process_cpu_ns() - cpu) as f64 / 1000.0 / calls as f64;
    (cpu, elapsed.as_secs_f64() * 1e6 / calls as f64)
}

/// Shadow calls run or shed so far.
fn shadow_done(plugins: &Plugins) -> u64 {
    plugins
        .candidates()
        .flat_map(|c| c.trial.shadow_figures())
        .map(|(_, f)| f.calls + f.shed)
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let calls: u64 = std::env::var("SHADOW_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let rounds: usize = std::env::var("SHADOW_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let generic = padded(
        r#"{"text":"{pad}","user":"alice","room":"lobby","kind":"note","tags":["a","b"]}"#,
        PAYLOAD_BYTES,
    );
    let email = padded(
        r#"{"text": "write to jane.doe@example.com about {pad}", "user": "alice"}"#,
        PAYLOAD_BYTES,
    );
    println!(
        "| publish, {calls} calls x {rounds} rounds | CPU µs/call alone | with a shadow on every call | ratio | wall µs/call alone / shadowed | shadow calls run / shed |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (plugin, data) in [("allow-all", &generic), ("redact", &email)] {
        let alone = load(plugin, false);
        let shadowed = load(plugin, true);
        let (mut a_cpu, mut s_cpu, mut a_wall, mut s_wall) = (vec![], vec![], vec![], vec![]);
        run(&alone, data, calls / 10);
        run(&shadowed, data, calls / 10);
        for _ in 0..rounds {
            let (c, w) = run(&alone, data, calls);
            a_cpu.push(c);
            a_wall.push(w);
            let (c, w) = run(&shadowed, data, calls);
            s_cpu.push(c);
            s_wall.push(w);
        }
        let figures: Vec<_> = shadowed
            .candidates()
            .flat_map(|c| c.trial.shadow_figures())
            .collect();
        let (ran, shed) = figures
            .iter()
            .fold((0, 0), |(r, s), (_, f)| (r + f.calls, s + f.shed));
        let (a, s) = (median(a_cpu), median(s_cpu));
        println!(
            "| {plugin} | {a:.2} | {s:.2} | {:.2}x | {:.2} / {:.2} | {ran} / {shed} |",
            s / a,
            median(a_wall),
            median(s_wall)
        );
    }
}
