#!/usr/bin/env bash
# The whole test suite, every language: Rust (unit, plugin, end-to-end), the JS and Python
# clients, the JS and Python plugin SDKs and their examples (natively, then the same checks as
# the Rust plugin through a gateway), the browser tests (chat demo, console) in headless
# Chromium. Installs the
# project's own JS and Python packages when missing or stale (npm ci; a venv under target/);
# system packages (redis-server, nginx, chromium) are .ci/run's job. Runs every suite even when one fails; exits non-zero if
# any did.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
failed=()

# npm ci in $1 when its node_modules is missing or older than its lock file (npm records what
# it installed in node_modules/.package-lock.json).
npm_ready() {
    if [ ! -f "$1/node_modules/.package-lock.json" ] || [ "$1/package-lock.json" -nt "$1/node_modules/.package-lock.json" ]; then
        (cd "$1" && npm ci --no-audit --no-fund)
    fi
}

echo "== rust: cargo test --workspace"
cargo test --workspace || failed+=(rust)

echo "== js: clients/js"
(
    set -e
    npm_ready clients/js
    cd clients/js
    npm test
) || failed+=(js)

echo "== python: clients/python, plugin-sdk/python, plugins/python"
(
    set -e
    venv=target/venv
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    if [ ! -f "$venv/.installed" ] || [ clients/python/pyproject.toml -nt "$venv/.installed" ] ||
        [ plugin-sdk/python/pyproject.toml -nt "$venv/.installed" ]; then
        "$venv/bin/pip" install -q --disable-pip-version-check -e 'clients/python[test]' \
            -e 'plugin-sdk/python[build,test]'
        touch "$venv/.installed"
    fi
    "$venv/bin/python" -m pytest clients/python -q
    "$venv/bin/python" -m pytest plugin-sdk/python plugins/python -q
    for plugin in redact tenant-guard; do
        "$venv/bin/python" -m switchyard_plugin build "plugins/python/$plugin/${plugin//-/_}.py" -o "target/plugins/$plugin-py.wasm"
    done
) || failed+=(python)

echo "== plugins in JavaScript: plugin-sdk/js, plugins/js"
(
    set -e
    npm_ready plugin-sdk/js
    (cd plugin-sdk/js && npm test)
    for plugin in redact tenant-guard; do
        npm_ready "plugins/js/$plugin"
        (cd "plugins/js/$plugin" && npm test && npm run build)
    done
) || failed+=(plugins-js)

echo "== plugins, every language through a gateway: tests/polyglot"
(
    set -e
    (cd clients/js && npx tsc -p . && npx tsc -p test)
    node --test --test-concurrency=1 tests/polyglot/
) || failed+=(polyglot)

echo "== browser: tests/browser (chat demo, console) in chromium"
(
    set -e
    npm_ready tests/browser
    cd tests/browser
    # The page loads the JS client's dist/ and the test uses its harness (build/test/): both are
    # compiled by the JS suite above; compile again in case it stopped before.
    (cd ../../clients/js && npx tsc -p . && npx tsc -p test)
    npm test
) || failed+=(browser)


if ((${#failed[@]})); then
    echo "== FAILED: ${failed[*]}"
    exit 1
fi
echo "== all suites passed"
