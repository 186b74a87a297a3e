//! The `switchyard` binary: configuration, logging, serve.

use std::process::ExitCode;

use clap::Parser;
use switchyard::{Cli, Config, Gateway, server, telemetry};

/// jemalloc instead of glibc's malloc: 10k idle connections took 2.87 KiB each instead of
/// 3.08-3.15 (three runs each), at the same CPU per delivery within noise; mimalloc saved a
/// little CPU but no memory (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        // Load every bound plugin too: compile, instantiate and `init` must all succeed.
        return match switchyard::plugins::Plugins::load(&config.plugins) {
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
    let runtime = match server::runtime(&config.server) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let gateway = Gateway::bind(config).await?.reload_from(cli);
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
