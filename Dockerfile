# Build the three services and the client with the official Rust image,
# run them on a slim Debian image as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins \
 && mkdir /out \
 && cp target/release/auth-svc target/release/router-svc target/release/edge-svc \
       target/release/chat target/release/chat-certs /out/

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --create-home chat
COPY --from=build /out/ /usr/local/bin/
COPY scripts/healthz.sh /usr/local/bin/healthz
USER chat
WORKDIR /home/chat
# Configuration comes from CHAT_* environment variables and mounted files.
EXPOSE 7001 9101 9102 9103
