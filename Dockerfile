# The image of every service: dependencies built in a layer of their own, then auth-svc, router-svc, edge-svc and chat-certs, run on a Debian without build tools as a non-root user.
# The base images are build arguments: the official ones by default, local
# stand-ins built from Debian packages where no registry answers
# (scripts/compose.sh passes them; docs/operations.md, Containers).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Dependencies first, from the manifests alone with empty crates: this layer
# is built again only when a Cargo.toml or Cargo.lock changes.
COPY Cargo.toml Cargo.lock ./
COPY shared/Cargo.toml shared/
COPY auth-svc/Cargo.toml auth-svc/
COPY router-svc/Cargo.toml router-svc/
COPY edge-svc/Cargo.toml edge-svc/
COPY edge-svc/client/Cargo.toml edge-svc/client/
COPY e2e/Cargo.toml e2e/
COPY chat-bench/Cargo.toml chat-bench/
RUN mkdir -p shared/src/bin auth-svc/src router-svc/src edge-svc/src edge-svc/client/src e2e/src chat-bench/src \
 && for c in shared auth-svc router-svc edge-svc e2e; do touch $c/src/lib.rs; done \
 && for f in shared/src/bin/chat-certs.rs auth-svc/src/main.rs router-svc/src/main.rs edge-svc/src/main.rs \
             edge-svc/client/src/main.rs chat-bench/src/main.rs; do echo 'fn main() {}' > $f; done \
 && cargo build --release --locked -p shared -p auth-svc -p router-svc -p edge-svc --bins
# Then the sources of the crates the images run (.dockerignore keeps out the
# rest); touched so that cargo builds them rather than the empty ones.
COPY shared shared
COPY auth-svc auth-svc
COPY router-svc router-svc
COPY edge-svc/src edge-svc/src
RUN find shared auth-svc router-svc edge-svc/src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p shared -p auth-svc -p router-svc -p edge-svc --bins \
 && mkdir /out \
 && cp target/release/auth-svc target/release/router-svc target/release/edge-svc \
       target/release/chat-certs /out/

FROM ${RUNTIME_IMAGE}
RUN useradd --system --uid 10001 --create-home chat
COPY --from=build /out/ /usr/local/bin/
COPY scripts/healthz.sh /usr/local/bin/healthz
USER chat
WORKDIR /home/chat
# Configuration comes from CHAT_* environment variables and mounted files.
EXPOSE 7001 9101 9102 9103
