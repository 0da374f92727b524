#!/usr/bin/env bash
# Start the API and one worker together; Ctrl-C stops both (the worker gives its job back first).
set -euo pipefail
BIN=${BIN:-.venv/bin}
host=${TRAINJOBS_HOST:-127.0.0.1}
port=${TRAINJOBS_PORT:-8000}
export TRAINJOBS_API_URL=${TRAINJOBS_API_URL:-http://$host:$port}
if [ -z "${TRAINJOBS_WORKER_TOKEN:-}" ]; then
  # This run's API and worker share a fresh worker token; it is in no file and no log.
  TRAINJOBS_WORKER_TOKEN=$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(32))')
  export TRAINJOBS_WORKER_TOKEN
fi

"$BIN/trainjobs-api" &
api=$!
"$BIN/trainjobs-worker" &
worker=$!
trap 'kill -TERM $worker $api 2>/dev/null; wait $worker $api 2>/dev/null' INT TERM EXIT
echo "trainjobs: API on $TRAINJOBS_API_URL (docs at $TRAINJOBS_API_URL/docs), worker pid $worker" >&2
echo "trainjobs: your token and the admin's password are in ${TRAINJOBS_ADMIN_CREDENTIALS_FILE:-var/admin-credentials} (after the first start)" >&2
wait -n $api $worker
