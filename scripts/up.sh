#!/usr/bin/env bash
# `make up`: the whole system in the foreground on this machine. Ctrl-C stops
# everything. Settings: REDIS_URL (use that Redis instead of starting one),
# REDIS_PORT (6380, clear of a system Redis on 6379), EDGE1_PORT (7001), EDGE2_PORT (7002), BIN (target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
REDIS_PORT=${REDIS_PORT:-6380}
EDGE1_PORT=${EDGE1_PORT:-7001}
EDGE2_PORT=${EDGE2_PORT:-7002}
export RUST_LOG=${RUST_LOG:-info}

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped."
  exit 0
}
trap stop INT TERM EXIT

if [ -z "${REDIS_URL:-}" ]; then
  mkdir -p data/redis
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    echo "a Redis already answers on port $REDIS_PORT; set REDIS_PORT or REDIS_URL" >&2
    exit 1
  fi
  # Snapshots rather than an append-only file: the AOF would record every
  # login request, password included (docs/design.md, Known limits).
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$PWD/data/redis" \
    --appendonly no --save "300 1 60 1000" --logfile "$PWD/data/redis/redis.log" &
  pids+=($!)
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
export CHAT_REDIS_URL="$REDIS_URL"

# The demo passwords are shorter than auth.min_password (8) wants.
for user in alice bob carol dave; do
  printf '%s-pw\n' "$user" | CHAT_AUTH__MIN_PASSWORD=6 "$BIN/auth-svc" user add "$user" --if-missing
done

# Anyone may create an account here with REGISTER (off by default).
CHAT_AUTH__REGISTRATION="${CHAT_AUTH__REGISTRATION:-true}" "$BIN/auth-svc" & pids+=($!)
"$BIN/router-svc" & pids+=($!)
CHAT_EDGE__ID=edge-1 CHAT_EDGE__LISTEN="0.0.0.0:$EDGE1_PORT" "$BIN/edge-svc" & pids+=($!)
CHAT_EDGE__ID=edge-2 CHAT_EDGE__LISTEN="0.0.0.0:$EDGE2_PORT" CHAT_EDGE__ADMIN_LISTEN=127.0.0.1:9104 "$BIN/edge-svc" & pids+=($!)

for port in "$EDGE1_PORT" "$EDGE2_PORT"; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
cat <<MSG

  The chat is up: Redis at $REDIS_URL, edges on ports $EDGE1_PORT and $EDGE2_PORT.
  Demo accounts (test credentials only): alice, bob, carol, dave; password <name>-pw.
  New accounts: type REGISTER <name> <password> (8 characters or more) after connecting.

  Connect, in two other terminals:
      $BIN/chat --server localhost:$EDGE1_PORT --user alice     # password: alice-pw
      $BIN/chat --server localhost:$EDGE2_PORT --user bob       # password: bob-pw
  Look inside:
      redis-cli -u $REDIS_URL hgetall chat:session:alice
      redis-cli -u $REDIS_URL smembers chat:room:lobby

  Health and metrics: curl localhost:9101/healthz (edge-1), 9104 (edge-2),
  9102 (auth-svc), 9103 (router-svc); /metrics on each.

  Ctrl-C stops everything.

MSG
# Wait until Ctrl-C, or until a service dies.
wait -n "${pids[@]}" || true
echo "a service stopped; shutting down the rest" >&2
