#!/usr/bin/env bash
# Local demo: Redis, three Switchyard nodes and nginx in front, all on loopback.
#   examples/nginx/demo.sh            # then connect to ws://127.0.0.1:8080/ws
# Ports: nginx 8080 (NGINX_PORT), nodes 8091-8093, Redis 6391 (REDIS_PORT). Ctrl-C stops all.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
nginx_port="${NGINX_PORT:-8080}"
redis_port="${REDIS_PORT:-6391}"
work="$root/target/nginx-demo"
mkdir -p "$work"

command -v nginx >/dev/null || { echo "nginx not found: apt-get install nginx-light" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; exit 1; }
scripts/build-plugins.sh >/dev/null
cargo build --release -p switchyard

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" &
pids+=($!)
upstreams=""
for i in 1 2 3; do
    port=$((8090 + i))
    target/release/switchyard --config examples/switchyard.toml --listen "127.0.0.1:$port" \
        --redis-url "redis://127.0.0.1:$redis_port" --node-id "node-$i" >"$work/node-$i.log" 2>&1 &
    pids+=($!)
    upstreams+="server 127.0.0.1:$port max_fails=0; "
done
sed -e "s|@LISTEN@|$nginx_port|" -e "s|@UPSTREAMS@|$upstreams|" -e "s|@PREFIX@|$work|g" \
    examples/nginx/nginx.conf.template >"$work/nginx.conf"
nginx -p "$work" -c "$work/nginx.conf" &
pids+=($!)
echo "Switchyard x3 behind nginx: ws://127.0.0.1:$nginx_port/ws (logs in $work). Ctrl-C to stop."
wait
