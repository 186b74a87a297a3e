//! Results: one JSON line for machines, a table for people, and the process CPU reading.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::accounting::Integrity;
use crate::run::Errors;

/// A finished run: the JSON line (stdout) and the human summary (stderr).
pub struct Report {
    /// One line of JSON.
    pub json: String,
    /// A multi-line table.
    pub human: String,
}

/// Percentiles of a µs histogram.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Recorded values.
    pub count: u64,
    /// Median, µs.
    pub p50: u64,
    /// 90th percentile, µs.
    pub p90: u64,
    /// 99th percentile, µs.
    pub p99: u64,
    /// 99.9th percentile, µs.
    pub p999: u64,
    /// Maximum, µs.
    pub max: u64,
    /// Mean, µs.
    pub mean: f64,
}

impl Percentiles {
    /// Reads the percentiles of `h` (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }

    /// As JSON, in milliseconds.
    fn json_ms(&self) -> Value {
        json!({
            "count": self.count,
            "p50": ms(self.p50),
            "p90": ms(self.p90),
            "p99": ms(self.p99),
            "p999": ms(self.p999),
            "max": ms(self.max),
            "mean": r3(self.mean / 1000.0),
        })
    }
}

fn ms(us: u64) -> f64 {
    r3(us as f64 / 1000.0)
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Connection set-up figures (TCP connect + WebSocket upgrade, per connection).
#[derive(Debug, Clone, Copy)]
pub struct ConnectFigures {
    /// Connections opened.
    pub ok: u64,
    /// Connections that failed (connect, upgrade, subscribe or timeout).
    pub failed: u64,
    /// Per-connection time percentiles, µs.
    pub time_us: Percentiles,
    /// Wall time to open all of them.
    pub wall: Duration,
}

impl ConnectFigures {
    /// Summarises per-connection times in µs.
    pub fn of(times_us: &[u64], failed: u64, wall: Duration) -> Self {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
        for &t in times_us {
            h.saturating_record(t.max(1));
        }
        Self {
            ok: times_us.len() as u64,
            failed,
            time_us: Percentiles::of(&h),
            wall,
        }
    }

    fn json(&self) -> Value {
        json!({
            "ok": self.ok,
            "failed": self.failed,
            "p50_ms": ms(self.time_us.p50),
            "p99_ms": ms(self.time_us.p99),
            "max_ms": ms(self.time_us.max),
            "wall_ms": r3(self.wall.as_secs_f64() * 1000.0),
        })
    }
}

/// A snapshot of the error counters.
#[derive(Debug, Clone, Default)]
pub struct ErrorFigures {
    counts: BTreeMap<&'static str, u64>,
    server: BTreeMap<String, u64>,
    close_codes: BTreeMap<String, u64>,
}

impl ErrorFigures {
    /// Reads `errors`.
    pub fn of(errors: &Errors) -> Self {
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut counts = BTreeMap::new();
        counts.insert("connect", l(&errors.connect));
        counts.insert("subscribe", l(&errors.subscribe));
        counts.insert("closed_early", l(&errors.closed_early));
        counts.insert("send", l(&errors.send));
        counts.insert("unparsed", l(&errors.unparsed));
        counts.insert("wrong_channel", l(&errors.wrong_channel));
        counts.insert("window_stalls", l(&errors.window_stalls));
        let server = errors
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let close_codes = errors
            .close_codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Self {
            counts,
            server,
            close_codes,
        }
    }

    fn total(&self) -> u64 {
        self.counts.values().sum::<u64>() + self.server.values().sum::<u64>()
    }

    fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (k, v) in &self.counts {
            m.insert((*k).to_owned(), json!(v));
        }
        m.insert("server".into(), json!(self.server));
        m.insert("close".into(), json!(self.close_codes));
        m.insert("total".into(), json!(self.total()));
        Value::Object(m)
    }

    fn human(&self) -> String {
        let mut parts: Vec<String> = self
            .counts
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        parts.extend(self.server.iter().map(|(k, v)| format!("server:{k} {v}")));
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Per-target figures of a pub/sub run.
#[derive(Debug, Clone)]
pub struct TargetFigures {
    /// The target URL.
    pub url: String,
    /// Subscriber connections on it.
    pub connections: u64,
    /// Expected deliveries to its subscribers.
    pub expected: u64,
    /// First deliveries of measured messages to its subscribers.
    pub delivered: u64,
    /// `expected - delivered`.
    pub lost: u64,
    /// Deliveries that arrived in the measured window, per second.
    pub delivered_per_s: f64,
    /// Latency of its deliveries, µs.
    pub latency_us: Percentiles,
}

/// Everything a pub/sub run reports.
#[derive(Debug, Clone)]
pub struct PubSubFigures {
    /// `--label`.
    pub label: Option<String>,
    /// Target URLs.
    pub targets: Vec<String>,
    /// Subscriber connections requested.
    pub subs: usize,
    /// Subscriber connections that ran.
    pub subs_connected: usize,
    /// Channels.
    pub channels: usize,
    /// Publisher connections that ran.
    pub publishers: usize,
    /// `--rate` (0 = window-bounded).
    pub rate: f64,
    /// `--window` when window-bounded.
    pub window: Option<u64>,
    /// What the window counted (`ack` or `deliveries`).
    pub window_mode: Option<&'static str>,
    /// Payload size, bytes.
    pub payload: usize,
    /// Warm-up, s.
    pub warmup_s: f64,
    /// Measured window, s.
    pub duration_s: f64,
    /// Time spent draining after the window, s.
    pub drain_s: f64,
    /// Messages published in total (warm-up included).
    pub published: u64,
    /// Messages published in the measured window.
    pub published_measured: u64,
    /// Expected deliveries of measured messages.
    pub expected: u64,
    /// First deliveries of measured messages.
    pub delivered: u64,
    /// `expected - delivered`.
    pub lost: u64,
    /// Duplicates and re-orderings.
    pub integrity: Integrity,
    /// Deliveries that arrived in the measured window, per second.
    pub delivered_per_s: f64,
    /// End-to-end latency of measured deliveries, µs.
    pub latency_us: Percentiles,
    /// Connection set-up.
    pub connect: ConnectFigures,
    /// Per target.
    pub per_target: Vec<TargetFigures>,
    /// Errors.
    pub errors: ErrorFigures,
    /// Runtime worker threads.
    pub threads: usize,
    /// Load generator CPU over the whole run, s.
    pub cpu_total_s: Option<f64>,
    /// Load generator CPU over the measured window, s.
    pub cpu_window_s: Option<f64>,
}

/// Everything an idle run reports.
#[derive(Debug, Clone)]
pub struct IdleFigures {
    /// `--label`.
    pub label: Option<String>,
    /// Target URLs.
    pub targets: Vec<String>,
    /// Connections requested.
    pub requested: usize,
    /// Channels.
    pub channels: usize,
    /// Connections opened and subscribed.
    pub connected: usize,
    /// Connections lost during the hold.
    pub dropped: u64,
    /// Hold time, s.
    pub hold_s: f64,
    /// Connection set-up.
    pub connect: ConnectFigures,
    /// Connections per target.
    pub per_target: Vec<(String, u64)>,
    /// Errors.
    pub errors: ErrorFigures,
    /// Runtime worker threads.
    pub threads: usize,
    /// Load generator CPU over the whole run, s.
    pub cpu_total_s: Option<f64>,
    /// Load generator CPU over the hold, s.
    pub cpu_window_s: Option<f64>,
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat`.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on Linux for every /proc interface.
    Some((utime + stime) / 100.0)
}

fn loadgen_json(threads: usize, total: Option<f64>, window: Option<f64>, window_s: f64) -> Value {
    json!({
        "threads": threads,
        "cpu_total_s": total.map(r3),
        "cpu_window_s": window.map(r3),
        "cpu_window_pct": window.filter(|_| window_s > 0.0).map(|w| r3(w / window_s * 100.0)),
    })
}

/// Builds the report of a pub/sub run.
pub fn pubsub(f: &PubSubFigures) -> Report {
    let per_target: Vec<Value> = f
        .per_target
        .iter()
        .map(|t| {
            json!({
                "target": t.url,
                "subs": t.connections,
                "expected": t.expected,
                "delivered": t.delivered,
                "lost": t.lost,
                "delivered_per_s": r3(t.delivered_per_s),
                "p50_ms": ms(t.latency_us.p50),
                "p99_ms": ms(t.latency_us.p99),
            })
        })
        .collect();
    let json = json!({
        "tool": "switchyard-loadgen",
        "mode": "pubsub",
        "label": f.label,
        "targets": f.targets,
        "subs": f.subs,
        "subs_connected": f.subs_connected,
        "channels": f.channels,
        "publishers": f.publishers,
        "rate": f.rate,
        "window": f.window,
        "window_mode": f.window_mode,
        "payload_bytes": f.payload,
        "warmup_s": f.warmup_s,
        "duration_s": f.duration_s,
        "drain_s": r3(f.drain_s),
        "published": f.published,
        "published_measured": f.published_measured,
        "published_per_s": r3(f.published_measured as f64 / f.duration_s),
        "expected": f.expected,
        "delivered": f.delivered,
        "lost": f.lost,
        "duplicates": f.integrity.duplicates,
        "reordered": f.integrity.reordered,
        "stale": f.integrity.stale,
        "delivered_per_s": r3(f.delivered_per_s),
        "latency_ms": f.latency_us.json_ms(),
        "connect": f.connect.json(),
        "per_target": per_target,
        "errors": f.errors.json(),
        "loadgen": loadgen_json(f.threads, f.cpu_total_s, f.cpu_window_s, f.duration_s),
    });

    let mut h = String::new();
    let pace = match f.window_mode {
        Some(mode) => format!(
            "rate 0, window {} msgs/publisher ({mode})",
            f.window.unwrap_or(0)
        ),
        None => format!("{} msg/s", f.rate),
    };
    let _ = writeln!(
        h,
        "\nloadgen pub/sub{}: {} subs ({} connected) over {} channels, {} publisher(s), {pace}, {} B",
        f.label
            .as_deref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default(),
        f.subs,
        f.subs_connected,
        f.channels,
        f.publishers,
        f.payload
    );
    let row = |h: &mut String, k: &str, v: String| {
        let _ = writeln!(h, "  {k:<14} {v}");
    };
    row(
        &mut h,
        "window",
        format!(
            "{:.1} s measured after {:.1} s warm-up; drained {:.2} s",
            f.duration_s, f.warmup_s, f.drain_s
        ),
    );
    row(
        &mut h,
        "published",
        format!(
            "{} in window ({:.1}/s), {} in total",
            f.published_measured,
            f.published_measured as f64 / f.duration_s,
            f.published
        ),
    );
    row(&mut h, "delivered/s", format!("{:.1}", f.delivered_per_s));
    row(
        &mut h,
        "expected",
        format!("{}  delivered {}  lost {}", f.expected, f.delivered, f.lost),
    );
    row(
        &mut h,
        "integrity",
        format!(
            "duplicates {}  reordered {} (stale {})",
            f.integrity.duplicates, f.integrity.reordered, f.integrity.stale
        ),
    );
    let l = &f.latency_us;
    row(
        &mut h,
        "latency ms",
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        ),
    );
    row(&mut h, "connect ms", connect_human(&f.connect));
    row(&mut h, "errors", f.errors.human());
    row(
        &mut h,
        "loadgen cpu",
        cpu_human(f.threads, f.cpu_window_s, f.duration_s),
    );
    let _ = writeln!(
        h,
        "  {:<32} {:>6} {:>12} {:>12} {:>10} {:>12} {:>9} {:>9}",
        "target", "subs", "expected", "delivered", "lost", "delivered/s", "p50 ms", "p99 ms"
    );
    for t in &f.per_target {
        let _ = writeln!(
            h,
            "  {:<32} {:>6} {:>12} {:>12} {:>10} {:>12.1} {:>9.3} {:>9.3}",
            t.url,
            t.connections,
            t.expected,
            t.delivered,
            t.lost,
            t.delivered_per_s,
            ms(t.latency_us.p50),
            ms(t.latency_us.p99)
        );
    }
    Report {
        json: json.to_string(),
        human: h,
    }
}

fn connect_human(c: &ConnectFigures) -> String {
    format!(
        "p50 {:.3}  p99 {:.3}  max {:.3}  ({} ok, {} failed, {:.2} s wall)",
        ms(c.time_us.p50),
        ms(c.time_us.p99),
        ms(c.time_us.max),
        c.ok,
        c.failed,
        c.wall.as_secs_f64()
    )
}

fn cpu_human(threads: usize, window: Option<f64>, window_s: f64) -> String {
    match window {
        Some(w) if window_s > 0.0 => format!(
            "{w:.2} s in the window ({:.0}% of one core), {threads} runtime threads",
            w / window_s * 100.0
        ),
        _ => format!("n/a, {threads} runtime threads"),
    }
}

/// What a churn run measured.
pub struct ChurnFigures {
    /// `--label`.
    pub label: Option<String>,
    /// Connections asked for.
    pub connections: usize,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Subscribe + unsubscribe cycles started and finished inside the window.
    pub cycles: u64,
    /// Time from sending `subscribe` to its `subscribed`, µs.
    pub subscribe_us: Percentiles,
    /// Connection set-up.
    pub connect: ConnectFigures,
    /// Error counters.
    pub errors: ErrorFigures,
    /// Runtime threads.
    pub threads: usize,
    /// The load generator's CPU over the whole run, seconds.
    pub cpu_total_s: Option<f64>,
    /// The load generator's CPU inside the window, seconds.
    pub cpu_window_s: Option<f64>,
}

/// Builds the report of a churn run.
pub fn churn(f: &ChurnFigures) -> Report {
    let per_s = if f.duration_s > 0.0 {
        f.cycles as f64 / f.duration_s
    } else {
        0.0
    };
    let json = json!({
        "tool": "switchyard-loadgen",
        "mode": "churn",
        "label": f.label,
        "connections": f.connections,
        "duration_s": f.duration_s,
        "cycles": f.cycles,
        "subscribes_per_s": r3(per_s),
        "subscribe_ms": {
            "p50": ms(f.subscribe_us.p50),
            "p99": ms(f.subscribe_us.p99),
            "max": ms(f.subscribe_us.max),
        },
        "connect": f.connect.json(),
        "errors": f.errors.json(),
        "loadgen": loadgen_json(f.threads, f.cpu_total_s, f.cpu_window_s, f.duration_s),
    });
    let mut h = String::new();
    let _ = writeln!(
        h,
        "\nloadgen churn: {} connections, {} subscribe+unsubscribe cycles in {:.1} s ({per_s:.0}/s)",
        f.connections, f.cycles, f.duration_s
    );
    let _ = writeln!(
        h,
        "  {:<14} p50 {:.3}  p99 {:.3}  max {:.3}",
        "subscribe ms",
        f.subscribe_us.p50 as f64 / 1000.0,
        f.subscribe_us.p99 as f64 / 1000.0,
        f.subscribe_us.max as f64 / 1000.0
    );
    let _ = writeln!(h, "  {:<14} {}", "errors", f.errors.human());
    Report {
        json: json.to_string(),
        human: h,
    }
}

/// Builds the report of an idle run.
pub fn idle(f: &IdleFigures) -> Report {
    let per_target: Vec<Value> = f
        .per_target
        .iter()
        .map(|(url, n)| json!({ "target": url, "connected": n }))
        .collect();
    let json = json!({
        "tool": "switchyard-loadgen",
        "mode": "idle",
        "label": f.label,
        "targets": f.targets,
        "connections": f.requested,
        "channels": f.channels,
        "connected": f.connected,
        "dropped": f.dropped,
        "hold_s": f.hold_s,
        "connect": f.connect.json(),
        "per_target": per_target,
        "errors": f.errors.json(),
        "loadgen": loadgen_json(f.threads, f.cpu_total_s, f.cpu_window_s, f.hold_s),
    });
    let mut h = String::new();
    let _ = writeln!(
        h,
        "\nloadgen idle{}: {} connections over {} channels, held {:.1} s",
        f.label
            .as_deref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default(),
        f.requested,
        f.channels,
        f.hold_s
    );
    let _ = writeln!(
        h,
        "  {:<14} {} (dropped during hold: {})",
        "connected", f.connected, f.dropped
    );
    let _ = writeln!(h, "  {:<14} {}", "connect ms", connect_human(&f.connect));
    let _ = writeln!(h, "  {:<14} {}", "errors", f.errors.human());
    let _ = writeln!(
        h,
        "  {:<14} {}",
        "loadgen cpu",
        cpu_human(f.threads, f.cpu_window_s, f.hold_s)
    );
    for (url, n) in &f.per_target {
        let _ = writeln!(h, "  {url:<32} {n:>8} connected");
    }
    Report {
        json: json.to_string(),
        human: h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_empty_and_filled() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        assert_eq!(Percentiles::of(&h).count, 0);
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((499..=501).contains(&p.p50), "{}", p.p50);
        assert!((989..=991).contains(&p.p99), "{}", p.p99);
        assert_eq!(p.max, 1000);
    }

    #[test]
    fn cpu_reading_works_here() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu_seconds().is_some());
        }
    }
}
