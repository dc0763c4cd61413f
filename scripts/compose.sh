#!/usr/bin/env bash
# scripts/compose.sh ARGS: docker compose (or the older docker-compose) ARGS on this repository's stack, with base images that can be had here.
#
# Sourced (scripts/compose-test.sh), it defines chat_compose ARGS instead.
# Each base image is the official one when it is here or `docker pull`
# gets it, else a local stand-in built from Debian packages
# (scripts/local-base.sh); CHAT_RUST_IMAGE, CHAT_RUNTIME_IMAGE and
# CHAT_REDIS_IMAGE, when set, are used as they are.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# base_image OFFICIAL KIND: the name to build or run with.
base_image() {
  if docker image inspect "$1" >/dev/null 2>&1 || docker pull -q "$1" >/dev/null 2>&1; then
    echo "$1"
  else
    echo "docker pull $1 failed: using a local stand-in" >&2
    "$root/scripts/local-base.sh" "$2"
  fi
}

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "neither docker compose nor docker-compose is installed (Debian: apt-get install docker-compose)" >&2
  exit 1
fi
docker info >/dev/null 2>&1 || { echo "no Docker engine answers (docker info failed)" >&2; exit 1; }

CHAT_RUST_IMAGE=${CHAT_RUST_IMAGE:-$(base_image rust:1-bookworm rust)}
CHAT_RUNTIME_IMAGE=${CHAT_RUNTIME_IMAGE:-$(base_image debian:bookworm-slim debian)}
CHAT_REDIS_IMAGE=${CHAT_REDIS_IMAGE:-$(base_image redis:7 redis)}
export CHAT_RUST_IMAGE CHAT_RUNTIME_IMAGE CHAT_REDIS_IMAGE
chat_compose() { "${compose[@]}" --project-directory "$root" -f "$root/docker-compose.yml" "$@"; }
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  chat_compose "$@"
fi
