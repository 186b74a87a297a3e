#!/usr/bin/env bash
# Run the gateway: embedded broker, example plugins bound as in examples/switchyard.toml.
#   scripts/run.sh [extra switchyard flags, e.g. --listen 127.0.0.1:9000 --redis-url redis://127.0.0.1:6379]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/build-plugins.sh >&2
exec cargo run --release -p switchyard -- --config examples/switchyard.toml "$@"
