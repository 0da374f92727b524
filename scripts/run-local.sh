#!/usr/bin/env bash
# Start the API and one worker together; Ctrl-C stops both (the worker gives its job back first).
set -euo pipefail
BIN=${BIN:-.venv/bin}
host=${TRAINJOBS_HOST:-127.0.0.1}
port=${TRAINJOBS_PORT:-8000}
export TRAINJOBS_API_URL=${TRAINJOBS_API_URL:-http://$host:$port}

"$BIN/trainjobs-api" &
api=$!
"$BIN/trainjobs-worker" &
worker=$!
trap 'kill -TERM $worker $api 2>/dev/null; wait $worker $api 2>/dev/null' INT TERM EXIT
echo "trainjobs: API on $TRAINJOBS_API_URL (docs at $TRAINJOBS_API_URL/docs), worker pid $worker" >&2
wait -n $api $worker
