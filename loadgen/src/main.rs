//! `loadgen`: a WebSocket pub/sub load generator for Switchyard (and servers speaking the
//! Node `ws` seed protocol).
//!
//! Pub/sub mode: `--subs` subscriber connections (subscriber `i` subscribes `bench:{i % M}`)
//! and `--publishers` publisher connections, both round-robin over `--targets`. Publishers
//! send at a fixed total `--rate`, or with `--rate 0` as fast as a bounded in-flight
//! `--window` allows. Every published `data` carries the publisher id, a sequence number and
//! the send time on a process-wide monotonic clock, so subscribers measure end-to-end latency
//! and detect duplicates and re-ordering. Idle mode (`--idle N --hold S`) opens N subscribed
//! connections and holds them. One JSON line goes to stdout, a human summary to stderr.

mod accounting;
mod report;
mod run;
mod wire;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

/// How `--rate 0` bounds the messages in flight.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum WindowMode {
    /// `ack` when the server acknowledges a probe publish with `published`, else `deliveries`.
    Auto,
    /// At most W publishes without a `published` acknowledgement, per publisher.
    Ack,
    /// At most W messages' worth of deliveries not yet received, per publisher (works with
    /// servers that never acknowledge, and bounds end-to-end backlog instead of broker intake).
    Deliveries,
}

/// Wire protocol (`seed` only; the flag exists for `../shared/bench/run.sh` compatibility).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// JSON `subscribe` / `publish` frames (Switchyard, Node `ws` seed server).
    Seed,
}

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    version,
    about = "WebSocket pub/sub load generator for Switchyard and seed-ws compatible servers"
)]
pub struct Args {
    /// Comma-separated server URLs (ws://host:port[/path]); connections go round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub targets: Vec<String>,
    /// Path used for targets given without one (seed-ws and floor accept any path).
    #[arg(long, env = "LOADGEN_PATH", default_value = "/ws")]
    pub path: String,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    pub subs: usize,
    /// Channels: subscriber i subscribes `<prefix>{i % channels}`.
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    /// Channel name prefix.
    #[arg(long, default_value = "bench:")]
    pub channel_prefix: String,
    /// Channels per subscriber connection: connection i subscribes `(i * K + j) % channels`
    /// for j < K (pub/sub mode; idle connections subscribe one).
    #[arg(long, default_value_t = 1)]
    pub subs_per_conn: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Total publish rate, messages/s over all publishers and channels; 0 = window-bounded.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// In-flight window per publisher, in messages, for --rate 0.
    #[arg(long, default_value_t = 32)]
    pub window: u64,
    /// What the --rate 0 window counts.
    #[arg(long, value_enum, env = "LOADGEN_WINDOW_MODE", default_value = "auto")]
    pub window_mode: WindowMode,
    /// Size in bytes of each published `data` object.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Publishing before the measured window (not counted), seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Longest wait for outstanding deliveries after publishing stops, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Idle mode: open N connections, each subscribed to one channel, and hold them.
    #[arg(long, visible_alias = "connect-only", value_name = "N")]
    pub idle: Option<usize>,
    /// Churn mode: N connections subscribe to a fresh channel, unsubscribe, and again, for
    /// --duration s after --warmup s; reports cycles per second and subscribe latency.
    #[arg(long, value_name = "N", conflicts_with = "idle")]
    pub churn: Option<usize>,
    /// Idle mode: how long to hold the connections, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Concurrent connection attempts.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Give up on one connection (TCP + upgrade + subscribe) after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Shell command run synchronously at each phase with the phase name appended: ready,
    /// measure_start, measure_end, done (pub/sub); ready, hold_end (idle).
    #[arg(long)]
    pub phase_hook: Option<String>,
    /// Free-form label echoed in the output.
    #[arg(long)]
    pub label: Option<String>,
    /// Wire protocol.
    #[arg(long, value_enum, default_value = "seed")]
    pub proto: Proto,
    /// Pub/sub mode: extra connections held open beside the subscribers and publishers, each
    /// subscribed to one of 100 channels nobody publishes to (`<prefix>held-{i % 100}`).
    #[arg(long, default_value_t = 0)]
    pub hold_extra: usize,
    /// Tenants of the subscriber connections: connection i carries an HS256 token
    /// (`?token=`) of tenant `t{i % N}`, so a channel has up to N delivery groups; 0 = anonymous.
    #[arg(long, env = "LOADGEN_TENANTS", default_value_t = 0)]
    pub tenants: usize,
    /// Secret that signs the `--tenants` tokens (the server's `auth.hs256_secret`).
    #[arg(long, env = "LOADGEN_HS256_SECRET")]
    pub hs256_secret: Option<String>,
    /// Loopback source addresses: connection i binds 127.0.0.{1 + i % N}, for more
    /// connections to one server than one address has ephemeral ports.
    #[arg(long, env = "LOADGEN_SOURCES", default_value_t = 1)]
    pub sources: u8,
}

/// One server node to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL requested in the upgrade (path filled in).
    pub url: String,
    /// The resolved socket address.
    pub addr: SocketAddr,
}

/// Parses `ws://host:port[/path]`, filling in `default_path` when there is no path.
pub fn parse_target(raw: &str, default_path: &str) -> Result<Target, String> {
    let raw = raw.trim();
    let rest = raw
        .strip_prefix("ws://")
        .ok_or_else(|| format!("target {raw:?}: only ws:// URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = if path.is_empty() { default_path } else { path };
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("target {raw:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("target {raw:?}: no address"))?;
    Ok(Target {
        url: format!("ws://{hostport}{path}"),
        addr,
    })
}

fn validate(args: &Args) -> Result<(), String> {
    if args.channels == 0 {
        return Err("--channels must be at least 1".into());
    }
    if args.subs_per_conn == 0 || args.subs_per_conn > args.channels {
        return Err(
            "--subs-per-conn must be 1..=--channels (a connection's channels are distinct)".into(),
        );
    }
    if args.tenants > 0 && args.hs256_secret.is_none() {
        return Err("--tenants needs --hs256-secret (the server's auth.hs256_secret)".into());
    }
    if args.sources == 0 || args.sources > 254 {
        return Err("--sources must be 1..=254 (127.0.0.1 to 127.0.0.254)".into());
    }
    if args.connect_concurrency == 0 {
        return Err("--connect-concurrency must be at least 1".into());
    }
    let secs = [
        ("--duration", args.duration),
        ("--warmup", args.warmup),
        ("--drain", args.drain),
        ("--hold", args.hold),
        ("--connect-timeout", args.connect_timeout),
    ];
    for (name, v) in secs {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("{name} must be a non-negative number of seconds"));
        }
    }
    if args.idle.is_none() && args.churn.is_none() {
        if args.publishers == 0 {
            return Err("--publishers must be at least 1".into());
        }
        if !(args.rate.is_finite() && args.rate >= 0.0) {
            return Err("--rate must be >= 0".into());
        }
        if args.rate == 0.0 && args.window == 0 {
            return Err("--rate 0 needs --window >= 1".into());
        }
        if args.duration <= 0.0 {
            return Err("--duration must be > 0".into());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = validate(&args) {
        eprintln!("loadgen: {e}");
        return ExitCode::from(2);
    }
    let targets = match args
        .targets
        .iter()
        .map(|t| parse_target(t, &args.path))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(t) if !t.is_empty() => t,
        Ok(_) => {
            eprintln!("loadgen: no targets");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    run::init_clock();
    let outcome = runtime.block_on(async {
        if let Some(n) = args.idle {
            run::idle(&args, targets, n, threads).await
        } else if let Some(n) = args.churn {
            run::churn(&args, targets, n, threads).await
        } else {
            run::pubsub(&args, targets, threads).await
        }
    });
    // Connections still open are simply dropped with the runtime.
    runtime.shutdown_background();
    match outcome {
        Ok(report) => {
            eprint!("{}", report.human);
            println!("{}", report.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_get_the_default_path() {
        let t = parse_target("ws://127.0.0.1:9001", "/ws").unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:9001/ws");
        assert_eq!(t.addr.port(), 9001);
        let t = parse_target(" ws://127.0.0.1:9001/other ", "/ws").unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:9001/other");
        let t = parse_target("ws://127.0.0.1:9001", "ws").unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:9001/ws");
        assert!(parse_target("http://127.0.0.1:9001", "/ws").is_err());
        assert!(
            parse_target("ws://127.0.0.1", "/ws").is_err(),
            "port required"
        );
    }

    #[test]
    fn run_sh_arguments_are_accepted() {
        let a = Args::try_parse_from([
            "loadgen",
            "--proto",
            "seed",
            "--targets",
            "ws://127.0.0.1:1,ws://127.0.0.1:2",
            "--label",
            "x",
            "--phase-hook",
            "true",
            "--subs",
            "1000",
            "--channels",
            "10",
            "--subs-per-conn",
            "1",
            "--publishers",
            "1",
            "--rate",
            "2000",
            "--payload",
            "256",
            "--duration",
            "15",
            "--warmup",
            "3",
            "--drain",
            "5",
        ])
        .unwrap();
        assert_eq!(a.targets.len(), 2);
        assert!(validate(&a).is_ok());
        let a = Args::try_parse_from([
            "loadgen",
            "--targets",
            "ws://127.0.0.1:1",
            "--connect-only",
            "10000",
            "--channels",
            "100",
            "--hold",
            "15",
            "--connect-concurrency",
            "256",
        ])
        .unwrap();
        assert_eq!(a.idle, Some(10000));
        let mut several = a.clone();
        several.subs_per_conn = 100;
        assert!(validate(&several).is_ok());
        let mut bad = a.clone();
        bad.subs_per_conn = 101;
        assert!(
            validate(&bad).is_err(),
            "more channels per connection than channels"
        );
        bad.subs_per_conn = 0;
        assert!(validate(&bad).is_err());
        let mut tenants = a.clone();
        tenants.tenants = 10;
        assert!(validate(&tenants).is_err(), "--tenants without a secret");
        tenants.hs256_secret = Some("bench-secret-0123456789".into());
        assert!(validate(&tenants).is_ok());
    }
}
