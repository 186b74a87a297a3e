#!/usr/bin/env bash
# Compare Switchyard with the floor and seed-ws baselines, same scenarios, same invocation.
#
# usage: bench/compare.sh
#
# Builds switchyard, the loadgen and the plugins (and the floor baseline), then runs every
# scenario against every server with ../shared/bench/run.sh, collects run.sh's JSON lines in
# target/bench-results/<timestamp>.jsonl and prints a markdown table (bench/table.py) with
# each figure's ratio to floor and to seed-ws from this invocation.
#
# Servers (SERVERS, space-separated, in this order by default):
#   embedded    switchyard, 1 node, embedded broker (no Redis)   bench/configs/plain.toml
#   redis       switchyard, 2 nodes + Redis, no plugin           bench/configs/plain.toml
#   allow-all   switchyard, 2 nodes + Redis, allow-all on "*"    bench/configs/allow-all.toml
#   allow-all-js, allow-all-py
#               the same with the pass-through plugin in JavaScript or Python (plugins/js/allow-all,
#               plugins/python/allow-all; built with `switchyard plugin build`, which needs npm, and
#               the Python SDK with componentize-py in target/venv or SWITCHYARD_PYTHON)
#   redact      switchyard, 2 nodes + Redis, the `redact` example on "*": a real plugin on the
#               publish path (parses, walks and checks every payload)   bench/configs/redact.toml
#   allow-all-shadow
#               allow-all with a shadow on every call (`deny-closed`, which agrees with it on
#               every bench channel), started by bench/with-rollout.sh once each node is ready
#   history     switchyard, 2 nodes + Redis, history on every channel  bench/configs/history.toml
#   embedded-history
#               switchyard, 1 node, embedded broker, history on every channel
#               (the pairs history/redis and embedded-history/embedded are what history costs)
#   cluster     switchyard, 2 nodes + a 3-master Redis Cluster (sharded pub/sub), no plugin;
#               not in the default list. The cluster is started by this script; run.sh's CPU
#               and memory figures do not include its three redis-server processes, so compare
#               its latency with `redis`, not its CPU.
#   floor       ../shared/bench/floor, 2 nodes + Redis
#   seed-ws     ../shared/bench/peers/seed-ws (Node ws), 2 nodes + Redis
#   nchan       ../shared/bench/peers/nchan (nginx + the nchan module, C), 2 nodes + Redis in
#               nchan's default "distributed" storage mode; driven by the shared loadgen (ours
#               speaks only the JSON protocol), built into target/bench-shared-loadgen
#   nchan:nostore
#               the same with Redis for pub/sub only (one PUBLISH per message)
#   base-embedded, base-redis, base-allow-all
#               the same as embedded, redis and allow-all with another switchyard binary,
#               $BASE_BIN (say, a release build of the commit before a change): a before/after
#               pair measured in one invocation, round by round.
#
# Environment:
#   SCENARIOS     "fanout-light fanout throughput idle" (run.sh scenario names)
#   SERVERS       "embedded redis allow-all floor seed-ws"
#   QUIET_WAIT    seconds run.sh waits for an idle machine before each run (default 120)
#   ROUNDS        rounds per scenario (default 3): each round runs every server once, back to
#                 back, and the table shows each figure's median over the rounds. CPU per
#                 delivery moves ±10-30 % between single runs on a shared VM (mostly the
#                 kernel's share: softirq work lands on whichever process is running), so one
#                 run per server can put any of them on either side of a limit.
#   TRIES         runs per (scenario, server, round) while foreign CPU > MAX_FOREIGN % (default 2)
#   MAX_FOREIGN   % of a core used by unrelated processes that makes a run repeat (default 10)
#   PIN=1         run.sh --pin (servers + Redis on CPU 0, loadgen on CPU 1)
#   KEEP_LOGS=1   run.sh --keep-logs (run directories under target/bench-results/harness/results)
#   JOBS          cargo -j for the builds (default 1: the machine is shared)
#   SHARED_BENCH  the shared bench directory (default <workspace>/../shared/bench)
#   BASE_BIN      the switchyard binary of the base-* servers
#   PROFILE=DIR   sample the whole machine with `perf record -a` (cpu-clock, kernel stacks) over
#                 each run and write DIR/<scenario>-<server>-r<round>.txt: time by process
#                 and module, then each process's hottest symbols (self time). Sampling costs
#                 CPU: judge a profiled run's shares, not its figures.
#   PREPARE_ONLY=1  build and lay out the harness, then stop (bench/curves.py and bench/conns.py
#                 use this before driving run.sh themselves)
#   WINDOW_MODE   what the throughput scenario's window counts (loadgen --window-mode; default
#                 deliveries: W messages' worth of undelivered deliveries per publisher, the
#                 only bound that works for servers that do not acknowledge publishes)
#
# run.sh always uses the loadgen at <its directory>/loadgen/target/release/loadgen and writes
# its run directories next to itself. So that it drives *our* loadgen (switchyard-loadgen, which
# accepts run.sh's flags) and writes nothing into the shared directory, run.sh is invoked
# through a directory of symbolic links, target/bench-results/harness/, that points at the
# shared run.sh, lib/, floor sources and seed-ws sources, and holds its own build outputs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=$(cd "${SHARED_BENCH:-$ROOT/../shared/bench}" && pwd)
SCENARIOS=${SCENARIOS:-"fanout-light fanout throughput idle"}
SERVERS=${SERVERS:-"embedded redis allow-all floor seed-ws"}
QUIET_WAIT=${QUIET_WAIT:-120}
ROUNDS=${ROUNDS:-3}
TRIES=${TRIES:-2}
MAX_FOREIGN=${MAX_FOREIGN:-10}
PIN=${PIN:-0}
KEEP_LOGS=${KEEP_LOGS:-0}
PROFILE=${PROFILE:-}
JOBS=${JOBS:-1}

RESULTS=$ROOT/target/bench-results
HARNESS=$RESULTS/harness
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$RESULTS/$STAMP.jsonl

log() { echo "[compare] $*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
wants() { [[ " $SERVERS " == *" $1 "* ]]; }

for s in $SERVERS; do
  case $s in
    embedded | redis | allow-all | allow-all-shadow | redact | allow-all-js | allow-all-py | history | embedded-history | cluster | floor | seed-ws | nchan | nchan:nostore) ;;
    base-embedded | base-redis | base-allow-all)
      [ -x "${BASE_BIN:-}" ] || die "server '$s' needs BASE_BIN, an executable switchyard binary"
      ;;
    *) die "unknown server '$s' (embedded redis allow-all allow-all-shadow redact allow-all-js allow-all-py history embedded-history cluster floor seed-ws nchan nchan:nostore base-embedded base-redis base-allow-all)" ;;
  esac
done
for s in $SCENARIOS; do
  case $s in
    fanout | fanout-light | throughput | idle) ;;
    *) die "unknown scenario '$s' (fanout-light fanout throughput idle)" ;;
  esac
done
[ -x "$SHARED/run.sh" ] || die "$SHARED/run.sh not found (set SHARED_BENCH)"
command -v python3 >/dev/null || die "python3 is needed (run.sh and bench/table.py use it)"

# Any cargo that run.sh itself might start stays on $JOBS jobs too.
export CARGO_BUILD_JOBS=$JOBS
# run.sh cannot pass loadgen flags per server; the loadgen reads these from the environment.
# Same window semantics for every server (floor and seed-ws never send `published`).
export LOADGEN_WINDOW_MODE=${WINDOW_MODE:-deliveries}
# run.sh's targets are ws://127.0.0.1:PORT; Switchyard serves /ws (the baselines any path).
export LOADGEN_PATH=/ws

# ------------------------------------------------------------------ build
cd "$ROOT"
log "building switchyard and the loadgen (gateway: dist profile; loadgen: release; -j$JOBS)"
# Two invocations: built together, feature unification would give both different dependency
# builds from the usual `cargo build --profile dist -p switchyard` (and rebuild them). The gateway
# is measured as shipped: the `dist` profile (whole-program optimisation).
cargo build -j"$JOBS" --profile dist -p switchyard >&2
cargo build -j"$JOBS" --release -p switchyard-loadgen >&2
if wants allow-all || wants base-allow-all || wants allow-all-shadow || wants redact; then
  log "building the plugins"
  scripts/build-plugins.sh -j"$JOBS" >&2
  [ -f "$ROOT/target/plugins/allow-all.wasm" ] || die "target/plugins/allow-all.wasm missing"
fi
FLOOR_TARGET=$ROOT/target/bench-floor
if wants floor; then
  log "building the floor baseline into target/bench-floor"
  cargo build -j"$JOBS" --release --manifest-path "$SHARED/floor/Cargo.toml" \
    --target-dir "$FLOOR_TARGET" >&2
fi

# ------------------------------------------------------------------ harness (run.sh's view)
mkdir -p "$HARNESS/results" "$HARNESS/loadgen/target/release" "$HARNESS/floor/target/release" \
  "$HARNESS/peers/seed-ws"
ln -sfn "$SHARED/run.sh" "$HARNESS/run.sh"
ln -sfn "$SHARED/lib" "$HARNESS/lib"
ln -sfn "$ROOT/target/release/loadgen" "$HARNESS/loadgen/target/release/loadgen"
for f in src Cargo.toml Cargo.lock; do
  ln -sfn "$SHARED/floor/$f" "$HARNESS/floor/$f"
  # run.sh rebuilds floor when its sources are newer than the binary: keep the links old.
  touch -h -d '2000-01-01' "$HARNESS/floor/$f"
done
ln -sfn "$FLOOR_TARGET/release/floor" "$HARNESS/floor/target/release/floor"
if wants seed-ws; then
  for f in server.js package.json package-lock.json; do
    ln -sfn "$SHARED/peers/seed-ws/$f" "$HARNESS/peers/seed-ws/$f"
  done
  if [ ! -d "$HARNESS/peers/seed-ws/node_modules" ]; then
    command -v npm >/dev/null || die "npm is needed for seed-ws"
    log "installing seed-ws's npm packages into the harness"
    (cd "$HARNESS/peers/seed-ws" && npm ci --no-audit --no-fund >&2) || die "npm ci failed"
  fi
  # node resolves modules from server.js's real path (in the shared directory): point it at
  # the harness's node_modules.
  export NODE_PATH=$HARNESS/peers/seed-ws/node_modules
fi

# nchan speaks its own protocol (a connection per channel), which only the shared loadgen
# drives: a second harness, the same run.sh with the shared loadgen in its place.
NCHAN_HARNESS=$RESULTS/harness-nchan
if wants nchan || wants nchan:nostore; then
  log "building the shared loadgen (for nchan) into target/bench-shared-loadgen"
  cargo build -j"$JOBS" --release --manifest-path "$SHARED/loadgen/Cargo.toml" \
    --target-dir "$ROOT/target/bench-shared-loadgen" >&2
  mkdir -p "$NCHAN_HARNESS/results" "$NCHAN_HARNESS/loadgen/target/release" "$NCHAN_HARNESS/peers"
  ln -sfn "$SHARED/run.sh" "$NCHAN_HARNESS/run.sh"
  ln -sfn "$SHARED/lib" "$NCHAN_HARNESS/lib"
  ln -sfn "$SHARED/peers/nchan" "$NCHAN_HARNESS/peers/nchan"
  ln -sfn "$ROOT/target/bench-shared-loadgen/release/loadgen" "$NCHAN_HARNESS/loadgen/target/release/loadgen"
fi

# ------------------------------------------------------------------ redis cluster (server "cluster")
CLUSTER_SEEDS=""
CLUSTER_PIDS=()
stop_cluster() { for p in "${CLUSTER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap stop_cluster EXIT
if wants cluster; then
  CLUSTER_DIR=$RESULTS/cluster-$STAMP
  mkdir -p "$CLUSTER_DIR"
  ports=()
  for _ in 1 2 3; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    bus=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --cluster-enabled yes \
      --cluster-config-file "nodes-$port.conf" --dir "$CLUSTER_DIR" --cluster-port "$bus" \
      >"$CLUSTER_DIR/redis-$port.log" 2>&1 &
    CLUSTER_PIDS+=($!)
    ports+=("$port")
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$CLUSTER_DIR/create.log" 2>&1 ||
    die "redis-cli --cluster create failed (see $CLUSTER_DIR/create.log)"
  for port in "${ports[@]}"; do
    for _ in $(seq 100); do redis-cli -p "$port" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
  done
  CLUSTER_SEEDS=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}")
  CLUSTER_SEEDS=${CLUSTER_SEEDS%,}
  log "redis cluster: $CLUSTER_SEEDS"
fi

# ------------------------------------------------------------------ servers
SY=$(printf '%q' "$ROOT/target/dist/switchyard")
BASE=$(printf '%q' "${BASE_BIN:-}")
PLAIN=$(printf '%q' "$ROOT/bench/configs/plain.toml")
ALLOW=$(printf '%q' "$ROOT/bench/configs/allow-all.toml")
SHADOW="$(printf '%q' "$ROOT/bench/with-rollout.sh") allow-all $(printf '%q' "$ROOT/target/plugins/deny-closed.wasm") stage=shadow bench-admin-token-0123456789 --"
SHADOW_CONFIG=$(printf '%q' "$ROOT/bench/configs/allow-all-shadow.toml")
HISTORY=$(printf '%q' "$ROOT/bench/configs/history.toml")
# server name -> "nodes|peer"; run.sh replaces {PORT} and {REDIS_URL} per node.
server_spec() {
  case $1 in
    embedded) echo "1|cmd:exec $SY --listen 127.0.0.1:{PORT} --config $PLAIN" ;;
    redis) echo "2|cmd:exec $SY --listen 127.0.0.1:{PORT} --redis-url {REDIS_URL} --config $PLAIN" ;;
    allow-all) echo "2|cmd:exec $SY --listen 127.0.0.1:{PORT} --redis-url {REDIS_URL} --config $ALLOW" ;;
    redact) echo "2|cmd:exec $SY --listen 127.0.0.1:{PORT} --redis-url {REDIS_URL} --config $(printf '%q' "$ROOT/bench/configs/redact.toml")" ;;
    allow-all-shadow) echo "2|cmd:exec $SHADOW $SY --listen 127.0.0.1:{PORT} --redis-url {REDIS_URL} --config $SHADOW_CONFIG" ;;
    allow-all-js | allow-all-py)
      echo "2|cmd:exec $SY --listen 127.0.0.1:{PORT} --redis-url {REDIS_URL} --config $(printf '%q' "$ROOT/bench/configs/$1.toml")" ;;
    history) echo "2|cmd:exec $SY --listen 127.0.0.1:{PORT} --redis-url {REDIS_URL} --config $HISTORY" ;;
    embedded-history) echo "1|cmd:exec $SY --listen 127.0.0.1:{PORT} --config $HISTORY" ;;
    cluster) echo "2|cmd:exec $SY --listen 127.0.0.1:{PORT} --redis-cluster $CLUSTER_SEEDS --config $PLAIN" ;;
    floor) echo "2|floor" ;;
    seed-ws) echo "2|seed-ws" ;;
    nchan | nchan:nostore) echo "2|$1" ;;
    base-embedded) echo "1|cmd:exec $BASE --listen 127.0.0.1:{PORT} --config $PLAIN" ;;
    base-redis) echo "2|cmd:exec $BASE --listen 127.0.0.1:{PORT} --redis-url {REDIS_URL} --config $PLAIN" ;;
    base-allow-all) echo "2|cmd:exec $BASE --listen 127.0.0.1:{PORT} --redis-url {REDIS_URL} --config $ALLOW" ;;
  esac
}
for lang in js py; do
  wants "allow-all-$lang" || continue
  dir=$([ "$lang" = js ] && echo plugins/js/allow-all || echo plugins/python/allow-all)
  log "building the $lang allow-all plugin"
  "$ROOT/target/dist/switchyard" plugin build "$ROOT/$dir" -o "$ROOT/target/plugins/allow-all-$lang.wasm" >&2 ||
    die "cannot build $dir (switchyard plugin build)"
  # Compiles it once into the plugins' cache, before any node must start quickly.
  "$ROOT/target/dist/switchyard" --check --config "$ROOT/bench/configs/allow-all-$lang.toml" >/dev/null ||
    die "switchyard --check --config bench/configs/allow-all-$lang.toml failed"
done
for cfg in "$ROOT/bench/configs/plain.toml" "$ROOT/bench/configs/allow-all.toml" "$ROOT/bench/configs/history.toml"; do
  if [ "$cfg" = "$ROOT/bench/configs/allow-all.toml" ] && ! wants allow-all && ! wants base-allow-all; then continue; fi
  "$ROOT/target/dist/switchyard" --check --config "$cfg" >/dev/null 2>&1 ||
    die "switchyard --check --config $cfg failed"
done

if [ "${PREPARE_ONLY:-0}" = 1 ]; then
  log "prepared (PREPARE_ONLY=1): binaries built, harness in $HARNESS"
  exit 0
fi

# ------------------------------------------------------------------ runs
mkdir -p "$RESULTS"
log "results: $OUT"
annotate() { # annotate JSON SERVER SCENARIO ROUND TRY ACCEPTED -> JSON with our fields added
  python3 -c 'import json, sys
r = json.loads(sys.argv[1])
r["server"] = sys.argv[2]
r["compare"] = {"stamp": sys.argv[6], "scenario": sys.argv[3], "round": int(sys.argv[4]), "try": int(sys.argv[5]), "accepted": sys.argv[7] == "1"}
print(json.dumps(r, separators=(",", ":")))' "$1" "$2" "$3" "$4" "$5" "$STAMP" "$6"
}
# profile_report DATA -> DATA's report next to it (.txt): time by process and module, then
# self time by symbol for each process a run involves.
profile_report() {
  local data=$1 txt=${1%.data}.txt comm
  perf report -i "$data" --stdio --no-children --sort comm,dso -g none --percent-limit 0.5 \
    >"$txt" 2>/dev/null
  for comm in switchyard floor nginx node redis-server loadgen; do
    grep -q " $comm " "$txt" || continue
    printf '\n## %s: self time by symbol (%% of all samples)\n' "$comm" >>"$txt"
    perf report -i "$data" --stdio --no-children --comms "$comm" --sort dso,sym -g none \
      --percent-limit 0.2 2>/dev/null | grep -v '^#' | grep . >>"$txt"
  done
  rm -f "$data"
  log "profile: $txt"
}
failed=0
for scen in $SCENARIOS; do
  # Rounds outermost: the servers of one round run minutes apart, not the same server's runs,
  # so a slow stretch of the machine hits one round of every server, not every run of one.
  for ((round = 1; round <= ROUNDS; round++)); do
    for server in $SERVERS; do
      IFS='|' read -r nodes peer <<<"$(server_spec "$server")"
      opts=(--nodes "$nodes" --quiet-wait "$QUIET_WAIT" --label "$server/$scen")
      [ "$PIN" = 1 ] && opts+=(--pin)
      [ "$KEEP_LOGS" = 1 ] && opts+=(--keep-logs)
      for ((t = 1; t <= TRIES; t++)); do
        log "$scen / $server ($nodes node(s)), round $round/$ROUNDS, try $t"
        harness=$HARNESS
        [[ $server == nchan* ]] && harness=$NCHAN_HARNESS
        sample=()
        if [ -n "$PROFILE" ]; then
          mkdir -p "$PROFILE"
          data="$PROFILE/$scen-$server-r$round.data"
          # cpu-clock: this machine's virtual CPUs have no hardware cycle counter.
          sample=(perf record -q -a -e cpu-clock -F 999 -g -o "$data" --)
        fi
        line=$("${sample[@]}" "$harness/run.sh" "${opts[@]}" "$peer" "$scen" | tail -n 1) || line=""
        [ -n "$PROFILE" ] && profile_report "$data"
        if [ -z "$line" ] || [ "${line:0:1}" != "{" ]; then
          log "run failed: $scen / $server"
          failed=$((failed + 1))
          break
        fi
        foreign=$(python3 -c 'import json,sys; print(int(float(json.loads(sys.argv[1])["machine"]["foreign_pct"])))' "$line" 2>/dev/null || echo 0)
        accept=1
        if [ "$foreign" -ge "$MAX_FOREIGN" ] && [ "$t" -lt "$TRIES" ]; then accept=0; fi
        annotate "$line" "$server" "$scen" "$round" "$t" "$accept" >>"$OUT"
        [ $accept = 1 ] && break
        log "${foreign}% of a core went to unrelated processes during the window; repeating"
        sleep 10
      done
    done
  done
done

[ -s "$OUT" ] || die "no run produced a result"
python3 "$ROOT/bench/table.py" "$OUT"
log "raw results: $OUT"
[ $failed -eq 0 ] || log "WARNING: $failed run(s) failed (see the run.sh messages above)"
