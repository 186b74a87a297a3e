#!/usr/bin/env bash
# Run the gateway: embedded broker, example plugins bound as in examples/switchyard.toml.
#   scripts/run.sh [extra switchyard flags, e.g. --listen 127.0.0.1:9000 --redis-url redis://127.0.0.1:6379
#                   or --config my.toml instead of the example config]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The example config unless the caller names one (switchyard takes --config once).
config=(--config examples/switchyard.toml)
for arg in "$@"; do
    case "$arg" in
    -c | --config | --config=* | -c?*) config=() ;;
    esac
done
scripts/build-plugins.sh >&2
exec cargo run --release -p switchyard -- "${config[@]}" "$@"
