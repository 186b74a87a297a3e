#!/usr/bin/env bash
# The browser chat demo: Redis, two Switchyard nodes, nginx in front (when installed), and the
# page server, all on loopback.
#   examples/chat/run.sh            # then open http://127.0.0.1:8090/
# Ports: page 8090 (CHAT_PORT), nginx 8080 (NGINX_PORT), nodes 8081-8082, Redis 6392
# (REDIS_PORT). Kill a node (the page says which pid) to watch the page reconnect and recover.
# Ctrl-C stops all.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
chat_port="${CHAT_PORT:-8090}"
nginx_port="${NGINX_PORT:-8080}"
redis_port="${REDIS_PORT:-6392}"
work="$root/target/chat-demo"
mkdir -p "$work"

command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; exit 1; }
command -v node >/dev/null || { echo "node not found: install Node.js 20 or later" >&2; exit 1; }
scripts/build-plugins.sh >/dev/null
cargo build --release -p switchyard
(cd clients/js && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npm run build)

# A fresh secret per run: the page server mints demo tokens with it, the nodes verify them.
SWITCHYARD__AUTH__HS256_SECRET="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
export SWITCHYARD__AUTH__HS256_SECRET
# A backend API key for the page server's /members (the gateway's presence API).
SWITCHYARD_DEMO_API_KEY="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
export SWITCHYARD_DEMO_API_KEY
export SWITCHYARD__API__KEYS="[\"$SWITCHYARD_DEMO_API_KEY\"]"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" &
pids+=($!)
gateways=()
upstreams=""
for i in 1 2; do
    port=$((8080 + i))
    target/release/switchyard --config examples/switchyard.toml --listen "127.0.0.1:$port" \
        --redis-url "redis://127.0.0.1:$redis_port" --node-id "node-$i" >"$work/node-$i.log" 2>&1 &
    pids+=($!)
    echo "node-$i: pid $! on 127.0.0.1:$port"
    gateways+=("ws://127.0.0.1:$port/ws")
    upstreams+="server 127.0.0.1:$port max_fails=0; "
done
gateway="$(IFS=,; echo "${gateways[*]}")"
if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then
    sed -e "s|@LISTEN@|$nginx_port|" -e "s|@UPSTREAMS@|$upstreams|" -e "s|@PREFIX@|$work|g" \
        examples/nginx/nginx.conf.template >"$work/nginx.conf"
    PATH="$PATH:/usr/sbin" nginx -p "$work" -c "$work/nginx.conf" &
    pids+=($!)
    gateway="ws://127.0.0.1:$nginx_port/ws"
fi
node examples/chat/serve.mjs --port "$chat_port" --gateway "$gateway" --api "http://127.0.0.1:8081" &
pids+=($!)
echo "Open http://127.0.0.1:$chat_port/ (logs in $work). Ctrl-C to stop."
wait
