# The two commands a newcomer runs: `make up` and `make test`.
CARGO ?= cargo

.PHONY: up test build certs redis lint clean

## Start the whole system in the foreground (Ctrl-C stops it).
up: redis build certs
	./scripts/up.sh

## Run every test (unit, property and end-to-end, with real Redis and TLS).
test: redis
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

## Release build of the services and the client.
build:
	$(CARGO) build --release --workspace --bins

## Development CA and server certificate in certs/ (only when missing).
certs: build
	./target/release/chat-certs certs

## Install redis-server when missing (apt-get, as root).
redis:
	./scripts/ensure-redis.sh

## Formatting and lints, as CI runs them.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
