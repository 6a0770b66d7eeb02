# The README's two commands: `make demo` and `make test`. Each installs what a fresh Debian
# machine lacks first. The demo needs only cmake (Pingora's zlib-ng build) and curl. The tests
# also run against redis-server, prometheus (its promtool checks the alerting rules),
# chromium and Node.js (the OIDC login and dashboard tests: a real provider, oidc-provider,
# and a real browser, driven by playwright-core, both from npm into tests/browser), openssl
# (the TLS how-to makes its certificates) and, from PyPI, kubernetes-validate and
# openapi-spec-validator (check the manifests and `portico openapi`). `make docs` builds the
# book with mdBook (from crates.io) and runs the doc tests.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_APT := cmake curl
TEST_APT := $(DEMO_APT) redis-server prometheus chromium openssl
NODE_PACKAGES := nodejs npm
PIP_TOOLS := kubernetes-validate openapi-spec-validator
MDBOOK_VERSION := 0.4.52

.PHONY: deps demo-deps demo test docs bench fuzz api-test

# apt-get installs the packages of $(1) that are missing.
apt_install = missing=""; for p in $(1); do dpkg -s $$p 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo-deps:
	@$(call apt_install,$(DEMO_APT))

deps:
	@$(call apt_install,$(TEST_APT))
	@command -v node >/dev/null && command -v npm >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(NODE_PACKAGES); }
	@[ -d tests/browser/node_modules/oidc-provider ] || npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
	@for tool in $(PIP_TOOLS); do python3 -m pip show --quiet $$tool >/dev/null 2>&1 || python3 -m pip install --quiet $$tool \
		|| python3 -m pip install --quiet --break-system-packages $$tool || exit 1; done

CONFIG ?= gateway.yaml
demo: demo-deps
	cargo run --release -- demo -c $(CONFIG)

test: deps
	cargo test

# The book: mdBook warnings fail the build; the doc tests check links, examples, the
# generated reference and run the getting-started page and the how-tos.
docs:
	@mdbook --version 2>/dev/null | grep -q "v$(MDBOOK_VERSION)" || cargo install mdbook --locked --version $(MDBOOK_VERSION)
	@mkdir -p target; mdbook build docs/book 2>&1 | tee target/mdbook.log; ! grep -E "WARN|ERROR" target/mdbook.log
	cargo test --test docs

bench: deps
	bench/load.sh

# Fuzzing (nightly + cargo-fuzz; not part of CI): each target runs for FUZZ_SECONDS.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	for t in config routing jwt proxy; do \
		cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 || exit 1; \
	done

# schemathesis (PyPI) against the demo, driven by the demo's own /openapi.json: every
# generated request must get an answer the document allows. Skipped checks: a route without
# `methods` answers any method, also ones OpenAPI cannot name (unsupported_method), and the
# demo's sample services do not really delete (use_after_free).
API_EXAMPLES ?= 50
api-test: deps
	command -v schemathesis >/dev/null || python3 -m pip install --quiet schemathesis
	cargo build --release
	target/release/portico demo -c gateway.yaml & pid=$$!; trap "kill $$pid" EXIT; \
	for i in $$(seq 100); do curl -sf localhost:9901/ready >/dev/null && break; sleep 0.2; done; \
	schemathesis run http://localhost:9901/openapi.json --url http://localhost:8080 \
		--max-examples $(API_EXAMPLES) --checks all --exclude-checks unsupported_method,use_after_free
