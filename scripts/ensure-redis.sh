#!/usr/bin/env bash
# Makes sure redis-server is installed: installs it with apt-get when we are
# root, otherwise prints the one command that does it and fails.
set -euo pipefail
command -v redis-server >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "redis-server is missing; installing it with apt-get..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq redis-server >&2
  exit 0
fi
echo "redis-server is not installed. Install it with:" >&2
echo "    sudo apt-get install -y redis-server" >&2
exit 1
