#!/usr/bin/env bash
# Runs a Switchyard node (the command after `--`) and, once it is ready, starts a rollout on it
# through the admin API: bench/compare.sh's `allow-all-shadow` server. The node stays this
# script's child, so run.sh's CPU and memory figures (a process and its descendants) include it;
# a TERM or INT is passed on to it.
#
# usage: bench/with-rollout.sh PLUGIN FILE QUERY TOKEN -- switchyard --listen ADDR ...
set -euo pipefail
[ $# -ge 6 ] && [ "$5" = "--" ] || { echo "usage: $0 PLUGIN FILE QUERY TOKEN -- switchyard --listen ADDR ..." >&2; exit 2; }
plugin=$1 file=$2 query=$3 token=$4
shift 5
listen=
args=("$@")
for ((i = 0; i < ${#args[@]} - 1; i++)); do
  [ "${args[$i]}" = "--listen" ] && listen=${args[$((i + 1))]}
done
[ -n "$listen" ] || { echo "$0: the node's command needs --listen ADDR" >&2; exit 2; }

"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit' TERM INT
for _ in $(seq 300); do
  curl -sf "http://$listen/readyz" >/dev/null 2>&1 && break
  kill -0 "$child" 2>/dev/null || { wait "$child"; exit; }
  sleep 0.1
done
# Both nodes ask; with Redis the second finds the same trial running (`"changed":false`).
curl -sf -X PUT --data-binary @"$file" -H "Authorization: Bearer $token" \
  "http://$listen/admin/plugins/$plugin/rollout?$query" >&2 ||
  echo "$0: the rollout was refused; the node runs without it" >&2
wait "$child"
