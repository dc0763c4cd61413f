# The two commands a newcomer runs: `make up` and `make test`.
CARGO ?= cargo

.PHONY: up test bench bench-cluster bench-irc soak model build certs redis up-deps lint fuzz compose-up compose-users compose-test report clean

## Start the whole system in the foreground, supervised: a service that
## dies is restarted (Ctrl-C stops everything). More instances:
## ROUTERS=2 AUTHS=2 EDGES=3 make up; on a Redis Cluster of 3 masters:
## REDIS_CLUSTER=3 make up; scripts/up.sh lists every setting.
up: up-deps build certs
	./scripts/up.sh

## Run every test (unit, property and end-to-end, with real Redis and TLS).
test: redis
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
	@if docker info >/dev/null 2>&1; then \
		echo "a Docker engine is here: make compose-test runs the container test"; \
	else \
		echo "no Docker engine running: the container test is make compose-test (scripts/ensure-docker.sh starts an engine as root; CI does that, then runs it)"; \
	fi

## Benchmark: starts a fresh local system on free ports, runs every
## scenario of chat-bench (a few minutes), writes target/bench/results.json
## and the report docs/benchmarks.md. BENCH_ARGS passes options
## (./target/release/chat-bench --help).
BENCH_ARGS ?=
bench: redis
	$(CARGO) build --release --workspace --bins
	ulimit -n $$(ulimit -Hn); ./target/release/chat-bench $(BENCH_ARGS)

## rooms and fanout against one Redis, then against a Redis Cluster of 3
## masters that the bench starts (about two minutes each): per-shard Redis
## calls per message, CROSSSLOT errors, throughput and latency (figures in
## target/bench/node.json and target/bench/cluster.json, not the report).
bench-cluster: redis
	$(CARGO) build --release --workspace --bins
	ulimit -n $$(ulimit -Hn); for mode in node:0 cluster:3; do \
		./target/release/chat-bench --cluster $${mode#*:} --only rooms,fanout --rates 1000,5000,10000 \
			--no-report --json target/bench/$${mode%:*}.json --dir target/bench/$${mode%:*} $(BENCH_ARGS) || exit 1; \
	done

## The fanout sweep against InspIRCd 3 (Debian's package `inspircd`),
## which chat-bench starts on a free loopback port with TLS: the same
## generator against a single-process IRC daemon (about three minutes;
## figures in target/bench/irc.json, not the report).
bench-irc:
	$(CARGO) build --release --workspace --bins
	ulimit -n $$(ulimit -Hn); PATH="$$PATH:/usr/sbin" ./target/release/chat-bench --irc inspircd \
		--no-report --json target/bench/irc.json $(BENCH_ARGS)

## The abuse soak alone (about two minutes): hostile load against a fresh
## system with the default limits; fails if a bound of docs/security.md
## breaks. Writes target/bench/results.json, not the report.
soak: redis
	$(CARGO) build --release --workspace --bins
	ulimit -n $$(ulimit -Hn); ./target/release/chat-bench --only abuse --no-report $(BENCH_ARGS)

## The model of the routers' rules (docs/models/routers.pml) checked with
## spin (Debian's package `spin`): no violation, and one without each rule
## (about 2.5 minutes and 5 GB of memory).
model:
	bash scripts/model-check.sh

## The whole system in containers (Redis, auth-svc, router-svc, two edges),
## with docker compose or docker-compose; base images that cannot be pulled
## are built locally from Debian packages (scripts/local-base.sh).
compose-up:
	./scripts/compose.sh up --build

## The demo accounts, in the compose stack's Redis.
compose-users:
	./scripts/compose.sh run --rm -e DEMO_ALWAYS=1 users

## The container test: the stack scaled (3 auth-svc, 2 router-svc), the
## end-to-end scenario against it, then down -v (needs a Docker engine;
## scripts/ensure-docker.sh starts one as root).
compose-test:
	./scripts/compose-test.sh

## The written report: docs/report.md to docs/report.pdf (pandoc and
## weasyprint, from Debian's packages).
report:
	./scripts/report.sh

## Release build of the services and the client.
build:
	$(CARGO) build --release --workspace --bins

## Development CA and server certificate, and auth-svc's seal key pair
## (auth-seal.key, auth-seal.pub), in certs/ (only when missing).
certs: build
	./target/release/chat-certs certs

## Install redis-server and tmux (for the client tests) when missing (apt-get, as root).
redis:
	./scripts/ensure-redis.sh
## What make up needs: redis-server and redis-cli, unless REDIS_URL names a Redis.
up-deps:
	./scripts/ensure-redis.sh up

## Formatting and lints, as CI runs them.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Fuzz the line framer and parser for FUZZ_SECONDS (default 60): with
## cargo-fuzz on a nightly toolchain when present, else the same harness
## under proptest with many cases.
FUZZ_SECONDS ?= 60
fuzz:
	@if $(CARGO) +nightly fuzz --version >/dev/null 2>&1; then \
		cd fuzz && $(CARGO) +nightly fuzz run lines -- -max_total_time=$(FUZZ_SECONDS); \
	else \
		echo "cargo-fuzz or nightly missing: running the fuzz harness under proptest"; \
		PROPTEST_CASES=20000 $(CARGO) test --release -p edge-svc --lib frame::tests; \
	fi

clean:
	$(CARGO) clean
