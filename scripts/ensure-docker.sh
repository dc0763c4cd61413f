#!/usr/bin/env bash
# Makes sure a Docker engine and compose are here for `make compose-test`: as root, installs docker.io and docker-compose with apt-get when missing and starts dockerd in the background when no engine answers. Exits 1, saying why, when none can be had.
set -euo pipefail
engine() { docker info >/dev/null 2>&1; }
have_compose() { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; }
engine && have_compose && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "no Docker engine or compose here, and no root to install them (apt-get install docker.io docker-compose, then start dockerd)" >&2
  exit 1
fi
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
have_compose || missing+=(docker-compose)
if [ ${#missing[@]} != 0 ]; then
  echo "installing ${missing[*]} with apt-get..." >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; } >&2; then
    echo "apt-get could not install ${missing[*]}" >&2
    exit 1
  fi
fi
engine && exit 0
log=/var/log/dockerd.log
echo "starting dockerd in the background (log: $log)" >&2
nohup dockerd >"$log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 60); do
  engine && exit 0
  kill -0 "$pid" 2>/dev/null || break
  sleep 1
done
echo "dockerd did not start; the end of $log:" >&2
tail -n 15 "$log" >&2
kill "$pid" 2>/dev/null || true
exit 1
