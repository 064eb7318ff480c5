#!/usr/bin/env bash
# Stop what infra/local/up.sh started.
set -uo pipefail
state="${BLT_STACK_DIR:-/tmp/blt-stack}"
# Only this stack's processes: never `ray stop`, which would also end other Ray clusters on the machine.
if [ -f "$state/cluster.pid" ]; then
  pid="$(cat "$state/cluster.pid")"
  kill "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null
fi
[ -f "$state/moto.pid" ] && kill "$(cat "$state/moto.pid")" 2>/dev/null
[ -f "$state/ray_temp" ] && rm -rf "$(cat "$state/ray_temp")"
rm -rf "$state"
echo "local stack stopped" >&2
