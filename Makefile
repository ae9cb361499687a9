# Busbar: `make run` starts a node with embedded defaults; `make test` runs every test.
# Everything these targets need is installed by them (cargo, pip into .venv).

CARGO   ?= cargo
PYTHON  ?= python3
VENV    ?= .venv
ARGS    ?=

.PHONY: run build web test-browser test test-rust test-python test-typescript test-cluster cluster cluster-engines python-package lint fmt codegen check-codegen examples clean bench chaos fuzz

## Build a release binary and start a node (TLS, auth, ./busbar-data). Pass flags with ARGS="...".
run: web
	$(CARGO) build --release -p busbar
	./target/release/busbar serve $(ARGS)

build:
	$(CARGO) build --workspace --all-targets

## Every test: codegen up to date, Rust unit and end-to-end tests, examples, Python e2e
## tests, the TypeScript client's tests, the web console in a real browser, and the
## cluster tests on real PostgreSQL and NATS.
test: check-codegen test-rust test-python test-typescript test-browser test-cluster

test-rust: web
	$(CARGO) build -p busbar
	$(CARGO) test --workspace --all-targets

## A cluster's engines from Debian's packages: PostgreSQL's server and nats-server.
## Missing ones are installed (as root, or through sudo); the cluster tests fail without them.
cluster-engines:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	{ command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; } || missing="$$missing nats-server"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing from Debian's packages"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

## A local three-node cluster on PostgreSQL and NATS (data in ./cluster-data); Ctrl-C stops it.
cluster: cluster-engines
	$(CARGO) build --release -p busbar
	sh scripts/cluster.sh target/release/busbar

## Several nodes sharing a real PostgreSQL and NATS (crates/busbar/tests/cluster).
test-cluster: cluster-engines
	$(CARGO) build -p busbar
	$(CARGO) test -p busbar --test cluster -- --ignored

## The web console (web/), bundled with the TypeScript client's source into web/dist/, which
## the node embeds when it is compiled. npm ci fetches esbuild and the client's packages from
## the npm registry; dist/ is rebuilt only when a source is newer.
WEB_SOURCES = $(wildcard web/src/*.ts web/src/pages/*.ts web/static/* clients/typescript/src/*.ts) web/build.mjs
web: web/dist/index.html

web/node_modules/.installed: web/package-lock.json clients/typescript/package-lock.json
	cd clients/typescript && npm ci --no-audit --no-fund
	cd web && npm ci --no-audit --no-fund
	touch $@

web/dist/index.html: $(WEB_SOURCES) web/node_modules/.installed
	cd web && ../clients/typescript/node_modules/.bin/tsc -p tsconfig.json
	cd web && npm run build

## The console in a real browser (tests/browser): Debian's chromium (installed when missing,
## as root or through sudo) driven by playwright-core against a node that serves the console.
test-browser: web python-package
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "installing chromium from Debian's packages"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium; \
	fi
	$(CARGO) build -p busbar
	cd tests/browser && npm ci --no-audit --no-fund && \
	  BUSBAR_BIN=$${BUSBAR_BIN:-$(CURDIR)/target/debug/busbar} BUSBAR_PYTHON=$(CURDIR)/$(VENV)/bin/python npm test

$(VENV)/.installed: tests/python/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r tests/python/requirements.txt
	touch $@

## The Python package (python/) installed into .venv the way the README tells users to:
## `pip install ./python` (maturin builds a release wheel; cargo reuses target/ between runs).
## --force-reinstall: pip would otherwise keep an installed busbar of the same version.
PY_INSTALL = $(VENV)/bin/pip install --quiet --force-reinstall --no-deps ./python

python-package: $(VENV)/.installed
	$(PY_INSTALL)

test-python: python-package
	$(CARGO) build -p busbar
	$(CARGO) build -p busbar-client --examples
	BUSBAR_BIN=$(CURDIR)/target/debug/busbar $(VENV)/bin/pytest -q tests/python

## The TypeScript client (clients/typescript): npm ci, then `npm test` (tsc, node --test) against
## real nodes; the mesh test uses the Python SDK in .venv as a provider when it is installed.
test-typescript: python-package
	$(CARGO) build -p busbar
	cd clients/typescript && npm ci --no-audit --no-fund && \
	  BUSBAR_BIN=$${BUSBAR_BIN:-$(CURDIR)/target/debug/busbar} BUSBAR_PYTHON=$(CURDIR)/$(VENV)/bin/python npm test

## kill -9 the node at random moments under write load, CYCLES times, and check
## every acknowledged write after each restart (tests/python/chaos.py).
CYCLES ?= 20
chaos: python-package
	$(CARGO) build -p busbar
	BUSBAR_BIN=$(CURDIR)/target/debug/busbar $(VENV)/bin/python tests/python/chaos.py --cycles $(CYCLES)

## Run every fuzz target (fuzz/) for FUZZ_SECONDS each with cargo-fuzz (installed
## when missing; libFuzzer without a sanitizer, so the stable toolchain does).
## New inputs go to fuzz/work/, crashes to fuzz/artifacts/; `cargo test` replays
## the checked-in corpus (fuzz/corpus/) without libFuzzer.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = path config flight_ticket flight_command series_points sql client_series_read cli_import
fuzz:
	command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p work/$$t && \
	  $(CARGO) fuzz run -s none $$t work/$$t corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 || exit 1; \
	done

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Regenerate crates/busbar-proto/src/generated from proto/.
codegen:
	$(CARGO) run -q -p codegen

## Fails when the checked-in generated code differs from what proto/ produces.
check-codegen: codegen
	git diff --exit-code -- crates/busbar-proto/src/generated

clean:
	$(CARGO) clean
	rm -rf $(VENV) web/dist web/node_modules clients/typescript/node_modules tests/browser/node_modules

$(VENV)/.bench-installed: bench/requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r bench/requirements.txt
	touch $@

## Side-by-side benchmark: Busbar vs bare tonic, NATS and raw TCP on loopback, ratios
## printed and written to bench/results/latest.{json,png}. QUICK=1: small sizes (< 2 min).
bench: $(VENV)/.bench-installed cluster-engines
	$(CARGO) build --release -p busbar -p busbar-bench
	$(PY_INSTALL)
	./target/release/busbar-bench $(if $(QUICK),--quick,)
	$(VENV)/bin/python bench/chart.py bench/results/latest.json bench/results/latest.png
