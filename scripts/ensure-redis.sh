#!/usr/bin/env bash
# Makes sure what the tests run is installed: redis-server, redis-cli (which
# makes the tests' Redis Clusters), and tmux (the pseudo-terminal that drives
# the interactive client in e2e/tests/client.rs). With `up`: what `make up`
# needs, redis-server and redis-cli, and nothing when REDIS_URL names a
# Redis of the operator's.
# Installs what is missing with apt-get when we are root, otherwise prints
# the one command that does it and fails.
set -euo pipefail
# tool:package
needs=(redis-server:redis-server redis-cli:redis-tools tmux:tmux)
if [ "${1:-}" = up ]; then
  needs=(redis-server:redis-server redis-cli:redis-tools)
  [ -n "${REDIS_URL:-}" ] && exit 0
fi
missing=()
for need in "${needs[@]}"; do
  command -v "${need%%:*}" >/dev/null 2>&1 || missing+=("${need#*:}")
done
[ ${#missing[@]} = 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "${missing[*]} missing; installing with apt-get..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${missing[@]}" >&2
  exit 0
fi
echo "${missing[*]} not installed. Install with:" >&2
echo "    sudo apt-get install -y ${missing[*]}" >&2
exit 1
