#!/usr/bin/env bash
# Makes sure what the tests run is installed: redis-server, redis-cli (which
# makes the tests' Redis Clusters), and tmux (the pseudo-terminal that drives
# the interactive client in e2e/tests/client.rs).
# Installs what is missing with apt-get when we are root, otherwise prints
# the one command that does it and fails.
set -euo pipefail
missing=()
# tool:package
for need in redis-server:redis-server redis-cli:redis-tools tmux:tmux; do
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
