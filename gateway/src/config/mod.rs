//! Configuration: defaults, TOML file, `SWITCHYARD__SECTION__KEY` environment overrides and
//! command-line flags, in rising order of precedence, validated once at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::{Deserialize, Serialize};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("invalid config {origin}: {message}")]
    Parse {
        /// Where the text came from (file path or environment).
        origin: String,
        /// The parser's explanation, with line and column when known.
        message: String,
    },
    /// A value is out of its allowed range or inconsistent with another.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// Dotted key, e.g. `limits.max_subscriptions`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Command-line interface of the `switchyard` binary.
#[derive(Debug, Clone, Parser, Default)]
#[command(
    name = "switchyard",
    version,
    about = "Real-time WebSocket message gateway with WebAssembly channel plugins"
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(short, long, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides `server.listen`).
    #[arg(long, env = "SWITCHYARD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Redis URL; setting it switches from the embedded broker to Redis (overrides `broker.redis_url`).
    #[arg(long, env = "SWITCHYARD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Redis Cluster seed node URLs, comma-separated; switches to sharded pub/sub (overrides `broker.redis_cluster`).
    #[arg(long, env = "SWITCHYARD_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
    /// Node identity in logs, metrics and presence (overrides `server.node_id`).
    #[arg(long, env = "SWITCHYARD_NODE_ID")]
    pub node_id: Option<String>,
    /// Log format (overrides `log.format`).
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `switchyard=debug` (overrides `log.filter`; `RUST_LOG` also works).
    #[arg(long, env = "SWITCHYARD_LOG")]
    pub log: Option<String>,
    /// Validate the configuration (and everything it references), print the result and exit.
    #[arg(long)]
    pub check: bool,
}

/// The whole gateway configuration. Every key is documented in `examples/switchyard.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listener and node identity.
    pub server: ServerConfig,
    /// Per-connection and per-node limits.
    pub limits: Limits,
    /// Message broker selection.
    pub broker: BrokerConfig,
    /// Logging.
    pub log: LogConfig,
    /// WebAssembly plugins and the channel namespaces they are bound to.
    pub plugins: PluginsConfig,
    /// Connection authentication.
    pub auth: crate::auth::AuthConfig,
    /// HTTP API for backends.
    pub api: ApiConfig,
    /// Presence tracking.
    pub presence: PresenceConfig,
    /// Plugin administration and hot swap.
    pub admin: AdminConfig,
}

/// Plugin administration and hot swap (`[admin]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*`; unset disables the admin API (401).
    pub token: Option<String>,
    /// Serve `/admin/*` on this address instead of the main listener.
    pub listen: Option<SocketAddr>,
    /// Largest plugin upload, bytes.
    pub max_upload_bytes: usize,
    /// Watch `plugins.dir` and the config file, swapping plugins and bindings on change.
    pub watch: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token: None,
            listen: None,
            max_upload_bytes: 16 * 1024 * 1024,
            watch: true,
        }
    }
}

/// Presence tracking (`[presence]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Seconds a node's entries survive without its heartbeat (it refreshes every third).
    pub ttl_secs: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self { ttl_secs: 30 }
    }
}

/// HTTP API for backends (`[api]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Keys accepted by `POST /api/publish` and the presence endpoints (`Authorization:
    /// Bearer <key>`); empty disables them (every request gets 401).
    pub keys: Vec<String>,
}

/// Listener and node identity.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP/WebSocket listener binds.
    pub listen: SocketAddr,
    /// Node id; derived from the host name and port when unset.
    pub node_id: Option<String>,
    /// Seconds to wait for clients to close during graceful shutdown.
    pub shutdown_grace_secs: u64,
    /// Seconds between leaving readiness and closing clients on shutdown, so load balancers
    /// stop routing here first.
    pub drain_secs: u64,
    /// Threads that run connections, plugin hooks and the broker: 0 = one per CPU core; 1 =
    /// everything on one thread (cheapest per message when several nodes share a machine).
    pub worker_threads: usize,
    /// Connections the kernel queues for the listener before the node accepts them (capped by
    /// `net.core.somaxconn`). Past it the kernel drops SYNs and clients retry after 1 s.
    pub listen_backlog: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            node_id: None,
            shutdown_grace_secs: 5,
            drain_secs: 0,
            worker_threads: 0,
            listen_backlog: 4096,
        }
    }
}

/// Limits protecting the node from any one client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted client frame in bytes; larger publishes get `message_too_large`.
    pub max_message_bytes: usize,
    /// Frames beyond this many bytes are not even read: the connection is closed with 1009.
    pub max_frame_bytes: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Longest channel name in bytes.
    pub max_channel_len: usize,
    /// Characters allowed in channel names besides ASCII letters and digits.
    pub channel_chars: String,
    /// Seconds without any frame from the client (pongs included) before it is closed.
    pub idle_timeout_secs: u64,
    /// Seconds between server pings; 0 disables them.
    pub ping_interval_secs: u64,
    /// Frames queued for one client before it counts as a slow consumer and is closed.
    pub outbound_queue: usize,
    /// Concurrent WebSocket connections per node; further upgrades get HTTP 503.
    pub max_connections: usize,
    /// Publishes per second per connection; 0 means unlimited.
    pub publish_rate: u32,
    /// Publishes a connection may burst above the rate.
    pub publish_burst: u32,
    /// Deepest nesting of arrays and objects in published `data` (clients, the HTTP API and
    /// plugin output); deeper gets `invalid_json`.
    pub max_json_depth: usize,
    /// Seconds a client has to send a complete request head, and the longest a keep-alive
    /// connection may sit idle between requests; then it is closed.
    pub http_header_timeout_secs: u64,
    /// Seconds an HTTP request (reading its body and answering it) may take; then it gets 408
    /// and the connection is closed. WebSocket sessions are not affected once upgraded.
    pub http_request_timeout_secs: u64,
    /// Connections that have not become WebSocket sessions (requests in progress, idle
    /// keep-alive, upgrades under way). At the limit the node stops accepting until one ends;
    /// upgraded sessions count toward `max_connections` instead.
    pub max_http_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_frame_bytes: 1024 * 1024,
            max_subscriptions: 256,
            max_channel_len: 128,
            channel_chars: ":_-.@/=".to_owned(),
            idle_timeout_secs: 90,
            ping_interval_secs: 30,
            outbound_queue: 1024,
            max_connections: 100_000,
            publish_rate: 0,
            publish_burst: 100,
            max_json_depth: 128,
            http_header_timeout_secs: 10,
            http_request_timeout_secs: 30,
            max_http_connections: 1024,
        }
    }
}

/// Which broker carries messages between nodes.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Redis URL (`redis://host:port/db`); unset means the embedded single-node broker.
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes (`redis://host:port` each); set means sharded pub/sub
    /// (SSUBSCRIBE/SPUBLISH) on a Redis Cluster, instead of `redis_url`.
    pub redis_cluster: Vec<String>,
    /// Prefix for Redis pub/sub channel names.
    pub prefix: String,
}

/// What happens on channels no plugin binding matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// Subscribe and publish freely, no plugin involved.
    #[default]
    Allow,
    /// Refuse subscribe and publish with `forbidden`.
    Deny,
}

/// A plugin and the JSON config its `init` receives.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// Plugin name: the file `<plugins.dir>/<name>.wasm`.
    pub plugin: String,
    /// Passed to the plugin's `init` as JSON text.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// This plugin's call deadline in milliseconds, instead of `plugins.timeout_ms` (e.g. a
    /// tighter budget for one tenant's plugin).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Binds a channel namespace to a plugin.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// Channel pattern: `chat:*`, `tenant:*:orders`, or an exact name.
    pub pattern: String,
    /// Plugin name: the file `<plugins.dir>/<name>.wasm`.
    pub plugin: String,
    /// Passed to the plugin's `init` as JSON text.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Per-tenant plugins for this namespace: connections of these tenants use their own
    /// plugin (own instances, limits and metrics); everyone else uses `plugin`.
    #[serde(default)]
    pub tenants: std::collections::BTreeMap<String, PluginRef>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// Plugin runtime settings and namespace bindings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory holding `<name>.wasm` plugin components.
    pub dir: PathBuf,
    /// Policy for channels that no binding matches.
    pub default: DefaultPolicy,
    /// Wall-clock budget of one plugin call, in milliseconds (an overrunning call is stopped
    /// within this plus ~1 ms, or within ~6 ms if this is under 5: see `plugins::runtime`).
    pub timeout_ms: u64,
    /// Linear memory one plugin instance may use, in bytes.
    pub max_memory_bytes: usize,
    /// Total bytes of JSON a publish or deliver hook may return.
    pub max_output_bytes: usize,
    /// Messages one publish hook may forward.
    pub max_forwards: usize,
    /// Longest text a plugin may hand back besides JSON data: a deny or reject reason, a
    /// delivery group key, an enriched identity's user or tenant; longer is invalid output.
    pub max_text_bytes: usize,
    /// Longest claims JSON an enriching connect hook may hand back.
    pub max_claims_bytes: usize,
    /// A call that succeeds but takes longer than this fraction of its deadline counts as a
    /// failure for the plugin's circuit breaker (the result is still used).
    pub slow_call_fraction: f64,
    /// A deliver hook call longer than this (microseconds) moves that plugin's deliver hook
    /// off the broker's task to an isolation lane of its own until it is fast again (read at
    /// start, not on reload).
    pub deliver_inline_max_us: u64,
    /// Idle instances kept per plugin for reuse.
    pub pool_size: usize,
    /// Directory for compiled components (keyed by content hash); unset keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Request headers (lower-case) passed to the connect hook.
    pub forward_headers: Vec<String>,
    /// Plugin whose connect hook accepts, rejects or enriches new connections.
    pub connect: Option<PluginRef>,
    /// Namespace bindings; the most specific matching pattern wins.
    pub bindings: Vec<BindingConfig>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("plugins"),
            default: DefaultPolicy::Allow,
            timeout_ms: 20,
            max_memory_bytes: 32 * 1024 * 1024,
            max_output_bytes: 1024 * 1024,
            max_forwards: 16,
            max_text_bytes: 1024,
            max_claims_bytes: 16 * 1024,
            slow_call_fraction: 0.5,
            deliver_inline_max_us: 1000,
            pool_size: 16,
            cache_dir: None,
            forward_headers: vec!["user-agent".to_owned(), "origin".to_owned()],
            connect: None,
            bindings: Vec::new(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// Filter directives (`RUST_LOG` syntax).
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: "info".to_owned(),
        }
    }
}

/// Environment variables of the form `SWITCHYARD__SECTION__KEY=value` override file keys.
const ENV_PREFIX: &str = "SWITCHYARD__";

impl Config {
    /// Loads the configuration the binary runs with: file (if any), environment, then flags.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let text = match &cli.config {
            Some(path) => read(path)?,
            None => String::new(),
        };
        let origin = cli
            .config
            .as_ref()
            .map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string());
        let mut config = Self::from_toml_with_env(&text, &origin, std::env::vars())?;
        if let Some(base) = cli.config.as_ref().and_then(|p| p.parent()) {
            config.resolve_paths(base);
        }
        config.apply_cli(cli);
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text and applies `SWITCHYARD__…` overrides from `env`; does not validate.
    pub fn from_toml_with_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: origin.to_owned(),
                    message: e.to_string(),
                })?;
        for (name, value) in env {
            let Some(path) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            set_path(&mut table, path, &value).map_err(|message| ConfigError::Parse {
                origin: format!("from environment variable {name}"),
                message,
            })?;
        }
        Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Parses and validates TOML text alone (no environment, no flags).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config = Self::from_toml_with_env(text, "(text)", std::iter::empty())?;
        config.validate()?;
        Ok(config)
    }

    /// Makes relative paths in the file relative to the file's own directory, so a config
    /// means the same thing whatever directory the gateway is started from.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.plugins.dir);
        if let Some(p) = &mut self.plugins.cache_dir {
            fix(p);
        }
        if let Some(p) = &mut self.auth.rs256_public_key_file {
            fix(p);
        }
        if let Some(p) = &mut self.auth.es256_public_key_file {
            fix(p);
        }
    }

    fn apply_cli(&mut self, cli: &Cli) {
        if let Some(listen) = cli.listen {
            self.server.listen = listen;
        }
        if let Some(url) = &cli.redis_url {
            self.broker.redis_url = Some(url.clone());
        }
        if !cli.redis_cluster.is_empty() {
            self.broker.redis_cluster = cli.redis_cluster.clone();
        }
        if let Some(id) = &cli.node_id {
            self.server.node_id = Some(id.clone());
        }
        if let Some(format) = cli.log_format {
            self.log.format = format;
        }
        if let Some(filter) = &cli.log {
            self.log.filter = filter.clone();
        }
    }

    /// Checks ranges and cross-field consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.to_owned(),
                message: message.to_owned(),
            })
        };
        if self.server.listen_backlog == 0 {
            return invalid("server.listen_backlog", "must be at least 1");
        }
        if l.max_message_bytes < 64 {
            return invalid("limits.max_message_bytes", "must be at least 64");
        }
        if l.max_frame_bytes < l.max_message_bytes {
            return invalid(
                "limits.max_frame_bytes",
                "must be at least limits.max_message_bytes",
            );
        }
        if l.max_subscriptions == 0 {
            return invalid("limits.max_subscriptions", "must be at least 1");
        }
        if l.max_channel_len == 0 {
            return invalid("limits.max_channel_len", "must be at least 1");
        }
        if let Some(c) = l
            .channel_chars
            .chars()
            .find(|c| !c.is_ascii_punctuation() || matches!(c, '"' | '\\' | '$'))
        {
            return invalid(
                "limits.channel_chars",
                &format!(
                    "{c:?} is not allowed: only ASCII punctuation other than quote, backslash and `$` (reserved)"
                ),
            );
        }
        if l.idle_timeout_secs == 0 {
            return invalid("limits.idle_timeout_secs", "must be at least 1");
        }
        if l.ping_interval_secs >= l.idle_timeout_secs {
            return invalid(
                "limits.ping_interval_secs",
                "must be shorter than limits.idle_timeout_secs, or idle clients that answer pings are closed",
            );
        }
        if l.outbound_queue == 0 {
            return invalid("limits.outbound_queue", "must be at least 1");
        }
        if l.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        if l.max_json_depth == 0 {
            return invalid("limits.max_json_depth", "must be at least 1");
        }
        if l.http_header_timeout_secs == 0 {
            return invalid("limits.http_header_timeout_secs", "must be at least 1");
        }
        if l.http_request_timeout_secs == 0 {
            return invalid("limits.http_request_timeout_secs", "must be at least 1");
        }
        if l.max_http_connections == 0 {
            return invalid("limits.max_http_connections", "must be at least 1");
        }
        if l.publish_rate > 0 && l.publish_burst == 0 {
            return invalid(
                "limits.publish_burst",
                "must be at least 1 when publish_rate is set",
            );
        }
        if let Some(url) = &self.broker.redis_url
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix:"))
        {
            return invalid(
                "broker.redis_url",
                "must start with redis://, rediss:// or unix:",
            );
        }
        if !self.broker.redis_cluster.is_empty() && self.broker.redis_url.is_some() {
            return invalid(
                "broker.redis_cluster",
                "set either broker.redis_url (one Redis) or broker.redis_cluster (a Redis Cluster), not both",
            );
        }
        if let Some(i) = self
            .broker
            .redis_cluster
            .iter()
            .position(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
        {
            return invalid(
                &format!("broker.redis_cluster[{i}]"),
                "must start with redis:// or rediss://",
            );
        }
        if self.broker.prefix.contains(['{', '}']) {
            return invalid(
                "broker.prefix",
                "must not contain `{` or `}`: they would change which Redis Cluster slot keys hash to",
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return invalid("log.filter", &e.to_string());
        }
        if self.presence.ttl_secs < 3 {
            return invalid("presence.ttl_secs", "must be at least 3");
        }
        if self.admin.token.as_ref().is_some_and(|t| t.len() < 16) {
            return invalid("admin.token", "must be at least 16 characters");
        }
        if let Some(i) = self.api.keys.iter().position(|k| k.len() < 16) {
            return invalid(&format!("api.keys[{i}]"), "must be at least 16 characters");
        }
        if let Err(e) = crate::auth::Authenticator::new(&self.auth) {
            return invalid(e.key, &e.message);
        }
        self.validate_plugins()
    }

    fn validate_plugins(&self) -> Result<(), ConfigError> {
        let p = &self.plugins;
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        if p.timeout_ms == 0 {
            return invalid("plugins.timeout_ms".into(), "must be at least 1".into());
        }
        if p.max_memory_bytes < 1024 * 1024 {
            return invalid(
                "plugins.max_memory_bytes".into(),
                "must be at least 1 MiB".into(),
            );
        }
        if p.max_text_bytes < 64 {
            return invalid(
                "plugins.max_text_bytes".into(),
                "must be at least 64".into(),
            );
        }
        if p.max_claims_bytes < 64 {
            return invalid(
                "plugins.max_claims_bytes".into(),
                "must be at least 64".into(),
            );
        }
        if p.deliver_inline_max_us == 0 {
            return invalid(
                "plugins.deliver_inline_max_us".into(),
                "must be at least 1".into(),
            );
        }
        if !(p.slow_call_fraction > 0.0 && p.slow_call_fraction <= 1.0) {
            return invalid(
                "plugins.slow_call_fraction".into(),
                "must be more than 0 and at most 1".into(),
            );
        }
        if p.max_output_bytes < self.limits.max_message_bytes {
            return invalid(
                "plugins.max_output_bytes".into(),
                "must be at least limits.max_message_bytes".into(),
            );
        }
        let refs = p
            .bindings
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                std::iter::once((format!("plugins.bindings[{i}]"), &b.plugin, &b.config)).chain(
                    b.tenants.iter().map(move |(t, r)| {
                        (
                            format!("plugins.bindings[{i}].tenants.{t}"),
                            &r.plugin,
                            &r.config,
                        )
                    }),
                )
            })
            .chain(
                p.connect
                    .iter()
                    .map(|c| ("plugins.connect".to_owned(), &c.plugin, &c.config)),
            );
        for (key, name, config) in refs {
            if let Err(why) = crate::plugins::check_name(name) {
                return invalid(format!("{key}.plugin"), format!("{name:?}: {why}"));
            }
            if !config.is_object() {
                return invalid(format!("{key}.config"), "must be a table".into());
            }
        }
        let overrides = p
            .bindings
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                b.tenants
                    .iter()
                    .map(move |(t, r)| (format!("plugins.bindings[{i}].tenants.{t}"), r))
            })
            .chain(p.connect.iter().map(|c| ("plugins.connect".to_owned(), c)));
        for (key, r) in overrides {
            if r.timeout_ms == Some(0) {
                return invalid(format!("{key}.timeout_ms"), "must be at least 1".into());
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, b) in p.bindings.iter().enumerate() {
            if let Err(e) = crate::plugins::namespace::Pattern::parse(&b.pattern) {
                return invalid(format!("plugins.bindings[{i}].pattern"), e.to_string());
            }
            if !seen.insert(b.pattern.as_str()) {
                return invalid(
                    format!("plugins.bindings[{i}].pattern"),
                    format!("{:?} is bound twice", b.pattern),
                );
            }
        }
        Ok(())
    }

    /// This node's id: configured, or `<hostname>:<port>`.
    pub fn node_id(&self) -> String {
        self.server.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "node".to_owned());
            format!("{host}:{}", self.server.listen.port())
        })
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Sets `SECTION__KEY` (case-insensitive) in `table` to `value`, read as a TOML value when it
/// parses as one (numbers, booleans, arrays) and as a string otherwise.
fn set_path(table: &mut toml::Table, path: &str, value: &str) -> Result<(), String> {
    let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
    if keys.iter().any(String::is_empty) {
        return Err("empty key segment".to_owned());
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (last, parents) = keys.split_last().expect("split yields at least one key");
    let mut cur = table;
    for k in parents {
        cur = cur
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{k}` is not a table"))?;
    }
    cur.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert!(c.broker.redis_url.is_none());
    }

    #[test]
    fn redis_cluster_settings_are_checked() {
        let ok = Config::from_toml(
            "[broker]\nredis_cluster = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n",
        )
        .unwrap();
        assert_eq!(ok.broker.redis_cluster.len(), 2);
        for (text, key) in [
            (
                "[broker]\nredis_url = \"redis://a\"\nredis_cluster = [\"redis://b\"]\n",
                "broker.redis_cluster",
            ),
            (
                "[broker]\nredis_cluster = [\"redis://b\", \"http://c\"]\n",
                "broker.redis_cluster[1]",
            ),
            ("[broker]\nprefix = \"{app}:\"\n", "broker.prefix"),
        ] {
            let e = Config::from_toml(text).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml("[limits]\nmax_subscribtions = 3\n").unwrap_err();
        assert!(e.to_string().contains("max_subscribtions"), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let env = [
            (
                "SWITCHYARD__LIMITS__MAX_SUBSCRIPTIONS".to_owned(),
                "7".to_owned(),
            ),
            ("SWITCHYARD__BROKER__PREFIX".to_owned(), "sy:".to_owned()),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let c = Config::from_toml_with_env("[limits]\nmax_subscriptions = 3\n", "t", env).unwrap();
        assert_eq!(c.limits.max_subscriptions, 7);
        assert_eq!(c.broker.prefix, "sy:");
    }

    #[test]
    fn cross_field_errors_name_the_key() {
        let e = Config::from_toml("[limits]\nping_interval_secs = 100\nidle_timeout_secs = 10\n")
            .unwrap_err();
        assert!(e.to_string().contains("limits.ping_interval_secs"), "{e}");
    }
}
