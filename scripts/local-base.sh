#!/usr/bin/env bash
# scripts/local-base.sh KIND: builds a local stand-in for an official base image that cannot be pulled, from Debian packages, and prints its name.
#
# KIND is `debian` (for debian:bookworm-slim), `redis` (for redis:7) or
# `rust` (for rust:1-bookworm). The stand-ins are named chat-local/...,
# never like the official images, and are built once: a second call only
# prints the name.
#   debian  debootstrap --variant=minbase bookworm, then docker import
#   redis   debian + Debian's redis-server, protected mode off (as the
#           official image), running as user redis in /data
#   rust    debian + gcc, libc6-dev, ca-certificates, this machine's Rust
#           toolchain (rustc --print sysroot) and its locally added CA
#           certificates (/usr/local/share/ca-certificates), which a build
#           needs where the crate registry is reached through them
set -euo pipefail
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
label='org.opencontainers.image.description="local stand-in built by scripts/local-base.sh from Debian packages; not an official image"'
debian=chat-local/debian:bookworm-minbase

have() { docker image inspect "$1" >/dev/null 2>&1; }

build_debian() {
  have "$debian" && return
  if ! command -v debootstrap >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "debootstrap missing: sudo apt-get install -y debootstrap" >&2; exit 1; }
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >&2
  fi
  local dir
  dir=$(mktemp -d)
  echo "building $debian: debootstrap --variant=minbase bookworm" >&2
  debootstrap --variant=minbase bookworm "$dir" "$mirror" >&2
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | docker import \
    --change "LABEL $label" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$debian" >&2
  rm -rf "$dir"
}

build_redis() {
  local name=chat-local/redis:7-bookworm
  have "$name" && { echo "$name"; return; }
  build_debian
  echo "building $name from Debian's redis-server" >&2
  docker build -t "$name" - >&2 <<EOF
FROM $debian
LABEL $label
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server \\
 && rm -rf /var/lib/apt/lists/* \\
 && mkdir /data && chown redis:redis /data \\
 && printf '#!/bin/sh\nexec /usr/bin/redis-server "\$@" --protected-mode no\n' >/usr/local/bin/redis-server \\
 && chmod +x /usr/local/bin/redis-server
USER redis
WORKDIR /data
EXPOSE 6379
CMD ["redis-server"]
EOF
  echo "$name"
}

build_rust() {
  local sysroot version name ctx
  sysroot=$(rustc --print sysroot)
  version=$(rustc --version | cut -d' ' -f2)
  name=chat-local/rust:$version-bookworm
  have "$name" && { echo "$name"; return; }
  build_debian
  echo "building $name with the toolchain in $sysroot" >&2
  ctx=$(mktemp -d)
  mkdir -p "$ctx/rust" "$ctx/ca"
  cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/rust/"
  [ -d "$sysroot/libexec" ] && cp -a "$sysroot/libexec" "$ctx/rust/"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  docker build -t "$name" -f - "$ctx" >&2 <<EOF
FROM $debian
LABEL $label
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY rust/ /usr/local/rust/
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:\$PATH CARGO_HOME=/usr/local/cargo
RUN cargo --version && rustc --version
EOF
  rm -rf "$ctx"
  echo "$name"
}

case ${1:-} in
  debian) build_debian; echo "$debian" ;;
  redis) build_redis ;;
  rust) build_rust ;;
  *) echo "usage: $0 debian|redis|rust" >&2; exit 64 ;;
esac
