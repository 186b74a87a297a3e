//! Prometheus metrics: the process-wide recorder and the names every module records under.
//!
//! Names (all prefixed `switchyard_`), documented in README's Metrics section:
//! connections, channels (gauges); connections_total, messages_published_total,
//! messages_delivered_total, messages_dropped_total{reason}, slow_consumer_closes_total,
//! publish_seconds, fanout_seconds (histograms); broker_connected (gauge),
//! broker_reconnects_total; plugin_calls_total / plugin_errors_total / plugin_call_seconds
//! {plugin, hook, version[, kind]}. The histograms are [`Latency`]s, rendered beside the
//! recorder's metrics by [`render`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets (seconds, `le`) for publish, fan-out and plugin-call histograms.
const BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The `node` label of this process's metrics (the first node's id).
static NODE: OnceLock<String> = OnceLock::new();

/// Installs the recorder once per process (the first node's id becomes the `node` label) and
/// returns the handle `/metrics` renders (with [`render`]).
pub fn handle(node: &str) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    NODE.get_or_init(|| node.to_owned());
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().add_global_label("node", node);
            match builder.install_recorder() {
                Ok(h) => h,
                // Another recorder is installed (an embedding application's): render an
                // empty registry rather than fail.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// The process's metrics in Prometheus text format: the recorder's, then every [`Latency`].
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    let node = escape(NODE.get().map_or("", String::as_str));
    let latencies = latencies().lock().expect("latency registry lock");
    let mut last = "";
    for ((name, labels), latency) in latencies.iter() {
        if *name != last {
            let _ = writeln!(out, "# TYPE {name} histogram");
            last = name;
        }
        let labels = if labels.is_empty() {
            format!("node=\"{node}\"")
        } else {
            format!("node=\"{node}\",{labels}")
        };
        latency.write(&mut out, name, &labels);
    }
    out
}

/// The sum of every sample of counter or gauge `name` in `text` (as [`render`] writes it),
/// over all label sets: what the console shows as one node's total.
pub fn total(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            // `name{labels} value` or `name value`; not a longer name sharing the prefix.
            let value = match rest.as_bytes().first()? {
                b'{' => &rest[rest.find("} ")? + 2..],
                b' ' => &rest[1..],
                _ => return None,
            };
            value.trim().parse::<f64>().ok()
        })
        .sum::<f64>() as u64
}

/// Every latency histogram in the process, by name and rendered labels.
type Latencies = BTreeMap<(&'static str, String), Arc<Latency>>;

fn latencies() -> &'static Mutex<Latencies> {
    static ALL: OnceLock<Mutex<Latencies>> = OnceLock::new();
    ALL.get_or_init(Default::default)
}

/// A latency histogram (seconds, the fixed `BUCKETS`) for the hot path: a sample is two relaxed
/// atomic additions, and the buckets are rendered at scrape time.
///
/// Why not the recorder's histograms: the Prometheus exporter keeps every sample (value and
/// a clock reading) in a lock-free queue until its upkeep folds it into buckets: too costly with
/// a histogram per publish, per fan-out and per plugin call (docs/benchmarks.md, "histograms").
pub struct Latency {
    /// Samples per bucket; the last one is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Latency {
    /// The process's histogram `name` with `labels` (besides `node`), created on first use;
    /// the same name and labels always give the same histogram, as the recorder's do.
    pub fn get(name: &'static str, labels: &[(&str, &str)]) -> Arc<Self> {
        let mut rendered = String::new();
        for (i, (key, value)) in labels.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(rendered, "{sep}{key}=\"{}\"", escape(value));
        }
        latencies()
            .lock()
            .expect("latency registry lock")
            .entry((name, rendered))
            .or_insert_with(|| {
                Arc::new(Self {
                    counts: std::array::from_fn(|_| AtomicU64::new(0)),
                    sum_nanos: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Counts one sample.
    pub fn record(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS.partition_point(|&le| le < secs);
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(elapsed.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// Appends the `_bucket` (cumulative), `_sum` and `_count` series.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count.load(Relaxed);
            let _ = match BUCKETS.get(i) {
                Some(le) => writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {seen}"),
                None => writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {seen}"),
            };
        }
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {seen}");
    }
}

/// A label value escaped for the text format (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_renders_cumulative_buckets_sum_and_count() {
        let latency = Latency::get("test_render_seconds", &[("plugin", "a\"b\\c")]);
        latency.record(Duration::from_micros(3));
        // Bounds are inclusive (`le`).
        latency.record(Duration::from_micros(5));
        latency.record(Duration::from_millis(2));
        latency.record(Duration::from_secs(3));
        assert!(Arc::ptr_eq(
            &latency,
            &Latency::get("test_render_seconds", &[("plugin", "a\"b\\c")])
        ));
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let text = render(&handle);
        let value = |series: &str| {
            let line = text
                .lines()
                .find(|l| l.starts_with("test_render_seconds") && l.contains(series))
                .unwrap_or_else(|| panic!("no {series} in {text}"));
            line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap()
        };
        assert!(text.contains("# TYPE test_render_seconds histogram"));
        assert!(text.contains(r#"plugin="a\"b\\c""#), "{text}");
        assert_eq!(value(r#"le="0.000005"}"#), 2.0);
        assert_eq!(value(r#"le="0.001"}"#), 2.0);
        assert_eq!(value(r#"le="0.0025"}"#), 3.0);
        assert_eq!(value(r#"le="1"}"#), 3.0);
        assert_eq!(value(r#"le="+Inf"}"#), 4.0);
        assert_eq!(value("_count{"), 4.0);
        assert!((value("_sum{") - 3.002_008).abs() < 1e-9);
    }

    #[test]
    fn total_sums_one_name_over_its_label_sets_and_no_longer_name() {
        let text = "# TYPE a_total counter\n\
                    a_total{node=\"n\",k=\"x\"} 3\n\
                    a_total{node=\"n\",k=\"y\"} 4\n\
                    a_total_more 100\n\
                    b 7\n\
                    a_total 1\n";
        assert_eq!(total(text, "a_total"), 8);
        assert_eq!(total(text, "b"), 7);
        assert_eq!(total(text, "missing"), 0);
    }
}
