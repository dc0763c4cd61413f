FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 chat
COPY --from=build /src/target/release/auth-svc /src/target/release/router-svc \
     /src/target/release/edge-svc /src/target/release/chat \
     /src/target/release/chat-certs /usr/local/bin/
USER chat
WORKDIR /home/chat
