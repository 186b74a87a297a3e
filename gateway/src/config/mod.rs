//! Configuration: plain data, checked when it is loaded.
//!
//! Sources, in rising order of precedence: built-in defaults, the TOML file, environment
//! variables `SWITCHYARD__<SECTION>__<KEY>`, then command-line flags ([`source`]). Each
//! section deserializes into checked types (a binding's `pattern` is a parsed
//! [`Pattern`]) and validates its own ranges ([`Config::validate`] asks each in turn); an
//! error names the key and where the offending value came from. Nothing here depends on the
//! rest of the gateway: the modules that use a section read it, not the other way round.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::namespace::Pattern;

pub mod source;

pub use source::{Override, Source};

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
    /// A source is not valid TOML, or has unknown keys or wrong types.
    #[error("invalid config {origin}: {message}")]
    Parse {
        /// Where the text came from: the file, an environment variable or a flag.
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

/// A value out of range: the key and what is wrong.
fn invalid<T>(key: impl Into<String>, message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    })
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
    pub auth: AuthConfig,
    /// HTTP API for backends.
    pub api: ApiConfig,
    /// Presence tracking.
    pub presence: PresenceConfig,
    /// Plugin administration and hot swap.
    pub admin: AdminConfig,
    /// Channel namespaces with options (`[[namespaces]]`): history, join/leave events.
    pub namespaces: Vec<NamespaceConfig>,
}

/// Options of the channels a pattern matches (`[[namespaces]]`); the most specific pattern
/// wins, as for plugin bindings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Channel pattern: `chat:*`, `tenant:*:orders`, or an exact name.
    pub pattern: Pattern,
    /// Messages kept per channel for recovery and history requests; 0 keeps none.
    #[serde(default)]
    pub history_size: usize,
    /// Seconds a channel's history lives after its last publish.
    #[serde(default = "default_history_ttl")]
    pub history_ttl_secs: u64,
    /// Announce every subscription that starts or ends to the channel's subscribers
    /// (`join`/`leave` frames, through the deliver hook; never stored in history).
    #[serde(default)]
    pub join_leave: bool,
}

fn default_history_ttl() -> u64 {
    3600
}

/// Most messages a channel's history may keep.
pub const MAX_HISTORY_SIZE: usize = 1_000_000;

impl NamespaceConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.history_size > MAX_HISTORY_SIZE {
            return invalid(
                format!("{key}.history_size"),
                format!("must be at most {MAX_HISTORY_SIZE}"),
            );
        }
        if self.history_size > 0 && self.history_ttl_secs == 0 {
            return invalid(
                format!("{key}.history_ttl_secs"),
                "must be at least 1 when history_size is set",
            );
        }
        Ok(())
    }
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
            max_upload_bytes: 64 * 1024 * 1024,
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
    /// Live connections one user may hold across the cluster (as presence counts them);
    /// further upgrades get HTTP 429. 0 means unlimited.
    pub max_connections_per_user: usize,
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
            max_connections_per_user: 0,
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

/// One plugin's limits where they differ from `[plugins]`'s (`[plugins.limits.<name>]`); a
/// binding's or tenant's own `timeout_ms` wins over this one's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// Call deadline, ms.
    pub timeout_ms: Option<u64>,
    /// Instantiation and `init` deadline, ms.
    pub init_timeout_ms: Option<u64>,
    /// Bytes per linear memory.
    pub max_memory_bytes: Option<usize>,
    /// Core instances.
    pub max_instances: Option<usize>,
    /// Tables.
    pub max_tables: Option<usize>,
    /// Linear memories.
    pub max_memories: Option<usize>,
}

/// Binds a channel namespace to a plugin.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// Channel pattern: `chat:*`, `tenant:*:orders`, or an exact name.
    pub pattern: Pattern,
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
    /// Wall-clock budget of a fresh instance's instantiation and `init`, in milliseconds
    /// (interpreted plugins, JS and Python, start far slower than they run).
    pub init_timeout_ms: u64,
    /// Linear memory one plugin instance may use, in bytes (per memory).
    pub max_memory_bytes: usize,
    /// Core instances one plugin instance may create (a Rust component makes a few,
    /// componentize-py's ~38).
    pub max_instances: usize,
    /// Tables one plugin instance may create.
    pub max_tables: usize,
    /// Linear memories one plugin instance may create.
    pub max_memories: usize,
    /// Limits of single plugins by name (`[plugins.limits.<name>]`), overriding the above.
    pub limits: std::collections::BTreeMap<String, PluginLimits>,
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
    /// Keep compiled components on disk, keyed by content hash, so a version compiles once (a
    /// JS or Python component takes 10-30 s) and a restart loads it in milliseconds.
    pub cache: bool,
    /// Where (default `<dir>/.cache`).
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
            init_timeout_ms: 1000,
            max_memory_bytes: 32 * 1024 * 1024,
            max_instances: 64,
            max_tables: 8,
            max_memories: 4,
            limits: Default::default(),
            max_output_bytes: 1024 * 1024,
            max_forwards: 16,
            max_text_bytes: 1024,
            max_claims_bytes: 16 * 1024,
            slow_call_fraction: 0.5,
            deliver_inline_max_us: 1000,
            pool_size: 16,
            cache: true,
            cache_dir: None,
            forward_headers: vec!["user-agent".to_owned(), "origin".to_owned()],
            connect: None,
            bindings: Vec::new(),
        }
    }
}

/// Authentication settings (`[auth]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether connections without a token are accepted (as anonymous).
    pub anonymous: bool,
    /// Shared secret for HS256 tokens.
    pub hs256_secret: Option<String>,
    /// PEM file with the RSA public key for RS256 tokens.
    pub rs256_public_key_file: Option<PathBuf>,
    /// PEM file with the EC (P-256) public key for ES256 tokens.
    pub es256_public_key_file: Option<PathBuf>,
    /// Required `aud` claim, if set.
    pub audience: Option<String>,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Claim holding the user id.
    pub user_claim: String,
    /// Claim holding the tenant id.
    pub tenant_claim: String,
    /// Origins allowed to open WebSockets (`https://app.example.com`); empty allows any.
    /// Requests without an `Origin` header (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
    /// Seconds before a connection's token expires at which it is sent an `expiring` frame,
    /// so a client can refresh without a timer of its own; 0 sends none.
    pub expiry_warning_secs: u64,
    /// The longest life of a token this gateway accepts: how long a revocation is kept when
    /// `POST /api/revoke` does not say when the tokens it names expire.
    pub max_token_lifetime_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: true,
            hs256_secret: None,
            rs256_public_key_file: None,
            es256_public_key_file: None,
            audience: None,
            issuer: None,
            leeway_secs: 5,
            user_claim: "sub".to_owned(),
            tenant_claim: "tenant".to_owned(),
            allowed_origins: Vec::new(),
            expiry_warning_secs: 30,
            max_token_lifetime_secs: 86_400,
        }
    }
}

impl AuthConfig {
    /// Checks the settings (key files are read, and their keys parsed, when the node starts
    /// and by `--check`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hs256_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return invalid("auth.hs256_secret", "must be at least 16 bytes");
        }
        let keys = self.hs256_secret.is_some()
            || self.rs256_public_key_file.is_some()
            || self.es256_public_key_file.is_some();
        if !keys && !self.anonymous {
            return invalid(
                "auth.anonymous",
                "is false but no key is configured, so nobody could connect",
            );
        }
        Ok(())
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

impl Config {
    /// Loads the configuration from `source`: defaults, its file, its overrides (environment,
    /// flags), then checks it. Relative paths in the file are relative to the file.
    pub fn load(source: &Source) -> Result<Self, ConfigError> {
        let text = match &source.file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.clone(),
                source: e,
            })?,
            None => String::new(),
        };
        let origin = source
            .file
            .as_ref()
            .map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string());
        let mut config = source::build(&text, &origin, &source.overrides)?;
        if let Some(base) = source.file.as_ref().and_then(|p| p.parent()) {
            config.resolve_paths(base);
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates TOML text alone (no environment, no flags).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config = source::build(text, "(text)", &[])?;
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

    /// Checks every section's ranges, then what sections must agree on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.limits.validate()?;
        self.broker.validate()?;
        self.log.validate()?;
        self.auth.validate()?;
        self.plugins.validate()?;
        if self.presence.ttl_secs < 3 {
            return invalid("presence.ttl_secs", "must be at least 3");
        }
        if self.admin.token.as_ref().is_some_and(|t| t.len() < 16) {
            return invalid("admin.token", "must be at least 16 characters");
        }
        if let Some(i) = self.api.keys.iter().position(|k| k.len() < 16) {
            return invalid(format!("api.keys[{i}]"), "must be at least 16 characters");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, n) in self.namespaces.iter().enumerate() {
            let key = format!("namespaces[{i}]");
            n.validate(&key)?;
            if !seen.insert(n.pattern.as_str()) {
                return invalid(
                    format!("{key}.pattern"),
                    format!("{:?} is configured twice", n.pattern.as_str()),
                );
            }
        }
        let braces = |s: &str| s.contains(['{', '}']);
        if !self.broker.redis_cluster.is_empty()
            && self.namespaces.iter().any(|n| n.history_size > 0)
            && (braces(&self.limits.channel_chars) || braces(&self.broker.prefix))
        {
            // A channel's history keys share its hash slot through the tag `{<prefix>C}`,
            // which a brace inside the name would cut short.
            return invalid(
                "limits.channel_chars",
                "history on a Redis Cluster needs channel names and broker.prefix without `{` or `}`",
            );
        }
        if self.plugins.max_output_bytes < self.limits.max_message_bytes {
            return invalid(
                "plugins.max_output_bytes",
                "must be at least limits.max_message_bytes",
            );
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

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.listen_backlog == 0 {
            return invalid("server.listen_backlog", "must be at least 1");
        }
        Ok(())
    }
}

impl Limits {
    fn validate(&self) -> Result<(), ConfigError> {
        let at_least_1 = [
            ("limits.max_subscriptions", self.max_subscriptions as u64),
            ("limits.max_channel_len", self.max_channel_len as u64),
            ("limits.idle_timeout_secs", self.idle_timeout_secs),
            ("limits.outbound_queue", self.outbound_queue as u64),
            ("limits.max_connections", self.max_connections as u64),
            ("limits.max_json_depth", self.max_json_depth as u64),
            (
                "limits.http_header_timeout_secs",
                self.http_header_timeout_secs,
            ),
            (
                "limits.http_request_timeout_secs",
                self.http_request_timeout_secs,
            ),
            (
                "limits.max_http_connections",
                self.max_http_connections as u64,
            ),
        ];
        if let Some((key, _)) = at_least_1.iter().find(|(_, v)| *v == 0) {
            return invalid(*key, "must be at least 1");
        }
        if self.max_message_bytes < 64 {
            return invalid("limits.max_message_bytes", "must be at least 64");
        }
        if self.max_frame_bytes < self.max_message_bytes {
            return invalid(
                "limits.max_frame_bytes",
                "must be at least limits.max_message_bytes",
            );
        }
        if let Some(c) = self
            .channel_chars
            .chars()
            .find(|c| !c.is_ascii_punctuation() || matches!(c, '"' | '\\' | '$'))
        {
            return invalid(
                "limits.channel_chars",
                format!(
                    "{c:?} is not allowed: only ASCII punctuation other than quote, backslash and `$` (reserved)"
                ),
            );
        }
        if self.ping_interval_secs >= self.idle_timeout_secs {
            return invalid(
                "limits.ping_interval_secs",
                "must be shorter than limits.idle_timeout_secs, or idle clients that answer pings are closed",
            );
        }
        if self.publish_rate > 0 && self.publish_burst == 0 {
            return invalid(
                "limits.publish_burst",
                "must be at least 1 when publish_rate is set",
            );
        }
        Ok(())
    }
}

impl BrokerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix:"))
        {
            return invalid(
                "broker.redis_url",
                "must start with redis://, rediss:// or unix:",
            );
        }
        if !self.redis_cluster.is_empty() && self.redis_url.is_some() {
            return invalid(
                "broker.redis_cluster",
                "set either broker.redis_url (one Redis) or broker.redis_cluster (a Redis Cluster), not both",
            );
        }
        if let Some(i) = self
            .redis_cluster
            .iter()
            .position(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
        {
            return invalid(
                format!("broker.redis_cluster[{i}]"),
                "must start with redis:// or rediss://",
            );
        }
        if self.prefix.contains(['{', '}']) {
            return invalid(
                "broker.prefix",
                "must not contain `{` or `}`: they would change which Redis Cluster slot keys hash to",
            );
        }
        Ok(())
    }
}

impl LogConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.filter) {
            return invalid("log.filter", e.to_string());
        }
        Ok(())
    }
}

/// Longest plugin name, in bytes.
pub const MAX_PLUGIN_NAME: usize = 64;

/// Checks a plugin name: 1 to [`MAX_PLUGIN_NAME`] ASCII letters, digits, `-` and `_` (it names
/// a file, `<plugins.dir>/<name>.wasm`, a metrics label and Redis keys). The one rule for
/// names in the configuration and in admin uploads.
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_PLUGIN_NAME {
        return Err(format!(
            "plugin names are 1 to {MAX_PLUGIN_NAME} characters long; this one has {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "plugin names use ASCII letters, digits, - and _; this one contains {c:?}"
        ));
    }
    Ok(())
}

/// Checks one set of store and deadline limits; `at` names where they come from.
fn check_limits(at: &str, limits: &PluginLimits) -> Result<(), ConfigError> {
    let key = |k: &str| format!("{at}.{k}");
    if limits.timeout_ms == Some(0) {
        return invalid(key("timeout_ms"), "must be at least 1");
    }
    if limits.init_timeout_ms == Some(0) {
        return invalid(key("init_timeout_ms"), "must be at least 1");
    }
    if limits.max_memory_bytes.is_some_and(|b| b < 1024 * 1024) {
        return invalid(key("max_memory_bytes"), "must be at least 1 MiB");
    }
    for (name, value) in [
        ("max_instances", limits.max_instances),
        ("max_tables", limits.max_tables),
        ("max_memories", limits.max_memories),
    ] {
        if value == Some(0) {
            return invalid(key(name), "must be at least 1");
        }
    }
    Ok(())
}

impl PluginsConfig {
    /// The compiled-component cache directory, if the cache is on.
    pub fn cache_path(&self) -> Option<PathBuf> {
        self.cache.then(|| {
            self.cache_dir
                .clone()
                .unwrap_or_else(|| self.dir.join(".cache"))
        })
    }

    /// The limits of plugin `name`: its `[plugins.limits.<name>]` over the section's own.
    pub fn limits_of(&self, name: &str) -> PluginLimits {
        let own = self.limits.get(name).cloned().unwrap_or_default();
        PluginLimits {
            timeout_ms: own.timeout_ms.or(Some(self.timeout_ms)),
            init_timeout_ms: own.init_timeout_ms.or(Some(self.init_timeout_ms)),
            max_memory_bytes: own.max_memory_bytes.or(Some(self.max_memory_bytes)),
            max_instances: own.max_instances.or(Some(self.max_instances)),
            max_tables: own.max_tables.or(Some(self.max_tables)),
            max_memories: own.max_memories.or(Some(self.max_memories)),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let own = PluginLimits {
            timeout_ms: Some(self.timeout_ms),
            init_timeout_ms: Some(self.init_timeout_ms),
            max_memory_bytes: Some(self.max_memory_bytes),
            max_instances: Some(self.max_instances),
            max_tables: Some(self.max_tables),
            max_memories: Some(self.max_memories),
        };
        check_limits("plugins", &own)?;
        for (name, limits) in &self.limits {
            if let Err(why) = check_plugin_name(name) {
                return invalid(format!("plugins.limits.{name}"), why);
            }
            check_limits(&format!("plugins.limits.{name}"), limits)?;
        }
        if self.max_text_bytes < 64 {
            return invalid("plugins.max_text_bytes", "must be at least 64");
        }
        if self.max_claims_bytes < 64 {
            return invalid("plugins.max_claims_bytes", "must be at least 64");
        }
        if self.deliver_inline_max_us == 0 {
            return invalid("plugins.deliver_inline_max_us", "must be at least 1");
        }
        if !(self.slow_call_fraction > 0.0 && self.slow_call_fraction <= 1.0) {
            return invalid(
                "plugins.slow_call_fraction",
                "must be more than 0 and at most 1",
            );
        }
        let refs = self
            .bindings
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                std::iter::once((format!("plugins.bindings[{i}]"), &b.plugin, &b.config, None))
                    .chain(b.tenants.iter().map(move |(t, r)| {
                        (
                            format!("plugins.bindings[{i}].tenants.{t}"),
                            &r.plugin,
                            &r.config,
                            Some(r.timeout_ms),
                        )
                    }))
            })
            .chain(self.connect.iter().map(|c| {
                (
                    "plugins.connect".to_owned(),
                    &c.plugin,
                    &c.config,
                    Some(c.timeout_ms),
                )
            }));
        for (key, name, config, timeout_ms) in refs {
            if let Err(why) = check_plugin_name(name) {
                return invalid(format!("{key}.plugin"), format!("{name:?}: {why}"));
            }
            if !config.is_object() {
                return invalid(format!("{key}.config"), "must be a table");
            }
            if timeout_ms == Some(Some(0)) {
                return invalid(format!("{key}.timeout_ms"), "must be at least 1");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, b) in self.bindings.iter().enumerate() {
            if !seen.insert(b.pattern.as_str()) {
                return invalid(
                    format!("plugins.bindings[{i}].pattern"),
                    format!("{:?} is bound twice", b.pattern.as_str()),
                );
            }
        }
        Ok(())
    }
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
    fn patterns_are_parsed_when_loaded() {
        let e = Config::from_toml("[[plugins.bindings]]\npattern = \"a::b\"\nplugin = \"x\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("empty segment"), "{e}");
        let ok =
            Config::from_toml("[[plugins.bindings]]\npattern = \"a:*\"\nplugin = \"x\"\n").unwrap();
        assert!(ok.plugins.bindings[0].pattern.matches("a:b"));
    }

    #[test]
    fn namespaces_are_checked() {
        let ok = Config::from_toml(
            "[[namespaces]]\npattern = \"chat:*\"\nhistory_size = 100\nhistory_ttl_secs = 60\n",
        )
        .unwrap();
        assert_eq!(ok.namespaces[0].history_size, 100);
        for (text, key) in [
            (
                "[[namespaces]]\npattern = \"a:*\"\nhistory_size = 5\nhistory_ttl_secs = 0\n",
                "namespaces[0].history_ttl_secs",
            ),
            (
                "[[namespaces]]\npattern = \"a:*\"\nhistory_size = 10000000\n",
                "namespaces[0].history_size",
            ),
            (
                "[[namespaces]]\npattern = \"a\"\n[[namespaces]]\npattern = \"a\"\n",
                "namespaces[1].pattern",
            ),
            ("[[namespaces]]\npattern = \"a::b\"\n", "empty segment"),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn plugin_names_follow_one_rule() {
        assert!(check_plugin_name("chat-router_2").is_ok());
        for bad in ["", "a.b", "../x", &"a".repeat(65)] {
            assert!(check_plugin_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cross_field_errors_name_the_key() {
        let e = Config::from_toml("[limits]\nping_interval_secs = 100\nidle_timeout_secs = 10\n")
            .unwrap_err();
        assert!(e.to_string().contains("limits.ping_interval_secs"), "{e}");
    }
}
