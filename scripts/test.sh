#!/usr/bin/env bash
# The whole test suite, every language: Rust (unit, plugin, end-to-end), the JS client, the
# Python client, the chat demo in headless Chromium. Installs the project's own JS and Python
# packages when missing or stale (npm ci; a venv under target/); system packages (redis-server,
# nginx, chromium) are .ci/run's job. Runs every suite even when one fails; exits non-zero if
# any did.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
failed=()

echo "== rust: cargo test --workspace"
cargo test --workspace || failed+=(rust)

echo "== js: clients/js"
(
    set -e
    cd clients/js
    # npm records what it installed in node_modules/.package-lock.json.
    if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
        npm ci --no-audit --no-fund
    fi
    npm test
) || failed+=(js)

echo "== browser: tests/browser (chat demo, console) in chromium"
(
    set -e
    cd tests/browser
    if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
        npm ci --no-audit --no-fund
    fi
    # The page loads the JS client's dist/ and the test uses its harness (build/test/): both are
    # compiled by the JS suite above; compile again in case it stopped before.
    (cd ../../clients/js && npx tsc -p . && npx tsc -p test)
    npm test
) || failed+=(browser)

echo "== python: clients/python"
(
    set -e
    venv=target/venv
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    if [ ! -f "$venv/.installed" ] || [ clients/python/pyproject.toml -nt "$venv/.installed" ]; then
        "$venv/bin/pip" install -q --disable-pip-version-check -e 'clients/python[test]'
        touch "$venv/.installed"
    fi
    "$venv/bin/python" -m pytest clients/python -q
) || failed+=(python)

if ((${#failed[@]})); then
    echo "== FAILED: ${failed[*]}"
    exit 1
fi
echo "== all suites passed"
