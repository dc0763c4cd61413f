#!/usr/bin/env bash
# make compose-test: the end-to-end scenario against the compose stack.
set -euo pipefail
cd "$(dirname "$0")/.."
docker info >/dev/null 2>&1 || { echo "no Docker engine: nothing to test"; exit 1; }
trap 'docker compose down' EXIT
docker compose up --build --detach
healthy=
for _ in $(seq 90); do
  if docker compose exec -T edge-1 healthz 9101 && docker compose exec -T edge-2 healthz 9101; then
    healthy=yes
    break
  fi
  sleep 2
done
if [ -z "$healthy" ]; then
  echo "the edges did not become healthy" >&2
  docker compose logs --tail 50 >&2
  exit 1
fi
docker compose run --rm users
mkdir -p target
docker compose cp certs:/certs/ca.pem target/compose-ca.pem
CHAT_COMPOSE_EDGES=localhost:7001,localhost:7002 CHAT_COMPOSE_CA=target/compose-ca.pem \
  cargo test -p e2e --test compose -- --nocapture
