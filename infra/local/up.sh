#!/usr/bin/env bash
# Start a loopback-only development stack: a Ray head on 127.0.0.1 (plus optional worker nodes, see cluster.py) and an S3
# server (moto_server) with a bucket. Prints the environment variables to export; state lives in $BLT_STACK_DIR.
#   infra/local/up.sh [--workers N] [--cpus N] [--bucket NAME]      then: eval "$(infra/local/up.sh ...)"
#   infra/local/down.sh
set -euo pipefail
workers=0 cpus=4 bucket=blt
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers="$2"; shift 2 ;;
    --cpus) cpus="$2"; shift 2 ;;
    --bucket) bucket="$2"; shift 2 ;;
    *) echo "up.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
bin="$(dirname "$(command -v python)")"
state="${BLT_STACK_DIR:-/tmp/blt-stack}"
mkdir -p "$state"
free_port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
s3_port=$(free_port); dash_port=$(free_port)
export AWS_ACCESS_KEY_ID=blt-local AWS_SECRET_ACCESS_KEY=blt-local AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port"
nohup "$bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"$state/moto.log" 2>&1 &
echo $! >"$state/moto.pid"
for _ in $(seq 50); do
  python -c "import urllib.request; urllib.request.urlopen('$AWS_ENDPOINT_URL')" 2>/dev/null && break
  sleep 0.2
done
python -c "import boto3; boto3.client('s3').create_bucket(Bucket='$bucket')" >&2
export RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
ray_temp="$(mktemp -d /tmp/bltray.XXXX)"   # Ray's socket paths must stay short
echo "$ray_temp" >"$state/ray_temp"
nohup python "$(dirname "$0")/cluster.py" "$state" --workers "$workers" --cpus "$cpus" \
  --dashboard-port "$dash_port" --temp-dir "$ray_temp" >"$state/ray.log" 2>&1 &
echo $! >"$state/cluster.pid"
for _ in $(seq 300); do
  [ -f "$state/cluster.json" ] && break
  kill -0 "$(cat "$state/cluster.pid")" 2>/dev/null || { echo "up.sh: Ray failed to start, see $state/ray.log" >&2; exit 1; }
  sleep 0.2
done
[ -f "$state/cluster.json" ] || { echo "up.sh: Ray did not come up in 60 s, see $state/ray.log" >&2; exit 1; }
gcs=$(python -c "import json; print(json.load(open('$state/cluster.json'))['gcs'])")
cat >"$state/env.sh" <<ENV
export AWS_ACCESS_KEY_ID=blt-local AWS_SECRET_ACCESS_KEY=blt-local AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL
export RAY_ADDRESS=$gcs
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$dash_port
export RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export BLT_BUCKET=s3://$bucket
ENV
cat "$state/env.sh"
