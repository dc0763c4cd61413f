#!/usr/bin/env bash
# make compose-test: builds the compose stack, starts it with three auth-svc and two router-svc, runs the container end-to-end test against it, then removes it with down -v and checks that nothing is left.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
started=$SECONDS
# A project of its own, and edges on free ports of 127.0.0.1 that Docker
# picks, so that neither a `make compose-up` stack nor `make up` is touched.
export COMPOSE_PROJECT_NAME=chat-compose-test
export CHAT_EDGE_1_PORT=127.0.0.1: CHAT_EDGE_2_PORT=127.0.0.1:
project=$COMPOSE_PROJECT_NAME
label=label=com.docker.compose.project=$project
source "$root/scripts/compose.sh"
echo "compose: ${compose[*]}; base images: $CHAT_RUST_IMAGE, $CHAT_RUNTIME_IMAGE, $CHAT_REDIS_IMAGE"

leftovers() {
  docker ps -aq --filter "$label"
  docker volume ls -q --filter "$label"
  docker network ls -q --filter "$label"
}
finish() {
  local status=$?
  if [ $status != 0 ]; then
    echo "compose-test failed; the stack's last log lines:" >&2
    chat_compose logs --no-color --tail 40 >&2 || true
  fi
  chat_compose down -v --remove-orphans --timeout 10 || status=1
  if [ -n "$(leftovers)" ]; then
    echo "down -v left containers, volumes or networks of $project:" >&2
    leftovers >&2
    status=1
  fi
  [ $status = 0 ] && echo "compose-test: passed in $((SECONDS - started)) s; down -v left nothing behind"
  exit $status
}
chat_compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
trap finish EXIT

t=$SECONDS
chat_compose build
echo "image built in $((SECONDS - t)) s; size: $(docker image inspect -f '{{.Size}}' chat:latest | awk '{printf "%.0f MB", $1 / 1e6}')"

chat_compose up --detach --scale auth-svc=3 --scale router-svc=2
# Redis, three auth-svc, two router-svc and two edges: each has a health check.
echo "waiting for the 8 services to be healthy..."
for _ in $(seq 180); do
  healthy=$(docker ps -q --filter "$label" --filter health=healthy | wc -l)
  [ "$healthy" -ge 8 ] && break
  sleep 1
done
[ "$healthy" -ge 8 ] || { echo "only $healthy of 8 containers became healthy" >&2; exit 1; }
chat_compose ps

CHAT_COMPOSE_PROJECT=$project "${CARGO:-cargo}" test -p e2e --test compose -- --nocapture

