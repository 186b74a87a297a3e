//! Prometheus metrics: the process-wide recorder and the names every module records under.
//!
//! Names (all prefixed `switchyard_`), documented in README's Metrics section:
//! connections, channels (gauges); connections_total, messages_published_total,
//! messages_delivered_total, messages_dropped_total{reason}, slow_consumer_closes_total,
//! publish_seconds, fanout_seconds (histograms); broker_connected (gauge),
//! broker_reconnects_total; plugin_calls_total / plugin_errors_total / plugin_call_seconds
//! {plugin, hook, version[, kind]}.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets (seconds) for publish, fan-out and plugin-call histograms.
const BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Installs the recorder once per process (the first node's id becomes the `node` label) and
/// returns the handle `/metrics` renders.
pub fn handle(node: &str) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .add_global_label("node", node)
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("buckets are non-empty");
            match builder.install_recorder() {
                Ok(h) => h,
                // Another recorder is installed (an embedding application's): render an
                // empty registry rather than fail.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}
