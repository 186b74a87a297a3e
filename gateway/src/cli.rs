//! The `switchyard` binary's command line; flags become configuration overrides.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::config::{LogFormat, Source, source::toml_list};

/// Command-line interface of the `switchyard` binary.
#[derive(Debug, Clone, Parser, Default)]
#[command(
    name = "switchyard",
    version,
    about = "Real-time WebSocket message gateway with WebAssembly channel plugins"
)]
pub struct Cli {
    /// TOML configuration file (also `SWITCHYARD_CONFIG`).
    #[arg(short, long, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (`server.listen`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Redis URL; setting it switches from the embedded broker to Redis (`broker.redis_url`).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Redis Cluster seed node URLs, comma-separated; switches to sharded pub/sub
    /// (`broker.redis_cluster`).
    #[arg(long)]
    pub redis_cluster: Option<String>,
    /// Node identity in logs, metrics and presence (`server.node_id`).
    #[arg(long)]
    pub node_id: Option<String>,
    /// Log format (`log.format`).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `switchyard=debug` (`log.filter`; `RUST_LOG` also works).
    #[arg(long)]
    pub log: Option<String>,
    /// Validate the configuration (and everything it references), print the result and exit.
    #[arg(long)]
    pub check: bool,
    /// A tool instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `switchyard <command>`: tools beside the server.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// The plugin author's toolkit: new, build, test, push.
    #[command(subcommand)]
    Plugin(crate::toolkit::PluginCommand),
}

impl Cli {
    /// Where the configuration comes from: the file, the process environment, then these
    /// flags.
    pub fn source(&self) -> Source {
        let mut source = Source::new(self.config.clone(), std::env::vars());
        let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
        if let Some(listen) = self.listen {
            source.flag("--listen", "server.listen", quoted(&listen.to_string()));
        }
        if let Some(url) = &self.redis_url {
            source.flag("--redis-url", "broker.redis_url", quoted(url));
        }
        if let Some(seeds) = &self.redis_cluster {
            source.flag("--redis-cluster", "broker.redis_cluster", toml_list(seeds));
        }
        if let Some(id) = &self.node_id {
            source.flag("--node-id", "server.node_id", quoted(id));
        }
        if let Some(format) = self.log_format {
            let name = match format {
                LogFormat::Human => "human",
                LogFormat::Json => "json",
            };
            source.flag("--log-format", "log.format", quoted(name));
        }
        if let Some(filter) = &self.log {
            source.flag("--log", "log.filter", quoted(filter));
        }
        source
    }
}
