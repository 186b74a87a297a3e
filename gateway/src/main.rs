//! The `switchyard` binary: configuration, logging, serve.

use std::process::ExitCode;

use clap::Parser;
use switchyard::{Cli, Config, Gateway, server, telemetry};

/// jemalloc: its size classes pack the many small per-connection objects more densely than
/// glibc's malloc or mimalloc, at the same CPU per delivery (docs/benchmarks.md, "allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Descriptors the node needs besides its clients: Redis connections, plugin files, logs.
const SPARE_FDS: u64 = 64;

/// Raises the soft limit on open files to the hard one (the soft default, often 1,024, is far
/// below what `limits.max_connections` allows), and warns when the connection limits do not
/// fit under it: past it, accepts fail and clients wait, whatever the limits say.
fn raise_fd_limit(config: &Config) {
    let limits = &config.limits;
    let need = (limits.max_connections + limits.max_http_connections) as u64 + SPARE_FDS;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(have) if have < need => tracing::warn!(
            fd_limit = have,
            needed = need,
            "the file-descriptor limit is below limits.max_connections + limits.max_http_connections + {SPARE_FDS}: raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower the limits"
        ),
        Ok(have) => tracing::debug!(fd_limit = have, "file-descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the file-descriptor limit"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(switchyard::cli::Command::Plugin(command)) = cli.command {
        return match switchyard::toolkit::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard plugin: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let source = cli.source();
    let config = match Config::load(&source) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        for warning in &source.warnings {
            eprintln!("switchyard: warning: {warning}");
        }
        // The key files are read and parsed as at start.
        if let Err(e) = switchyard::auth::Authenticator::new(&config.auth) {
            eprintln!("switchyard: invalid config: {e}");
            return ExitCode::from(2);
        }
        // Load every bound plugin too: compile, instantiate and `init` must all succeed.
        return match switchyard::plugins::Plugins::load(
            &config.plugins,
            config.limits.max_json_depth,
        ) {
            Ok(plugins) => {
                for binding in plugins.describe() {
                    println!("plugin OK: {binding}");
                }
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard: plugins: {e}");
                ExitCode::from(2)
            }
        };
    }
    telemetry::init(&config.log);
    for warning in &source.warnings {
        tracing::warn!("{warning}");
    }
    raise_fd_limit(&config);
    let runtime = match server::runtime(&config.server) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let gateway = Gateway::bind(config).await?.reload_from(source);
        gateway.run(server::shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("switchyard: {e}");
            ExitCode::FAILURE
        }
    }
}
