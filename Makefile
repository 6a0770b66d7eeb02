# The README's two commands: `make demo` and `make test`. Both install what a fresh
# Debian machine lacks first: cmake (Pingora's zlib-ng build), redis-server and curl (tests),
# prometheus (its promtool checks the alerting rules) and, from PyPI, kubernetes-validate
# (checks the manifests).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := cmake redis-server curl prometheus

.PHONY: deps demo test bench fuzz

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@command -v kubernetes-validate >/dev/null || python3 -m pip install --quiet kubernetes-validate \
		|| python3 -m pip install --quiet --break-system-packages kubernetes-validate

demo: deps
	cargo run --release -- demo

test: deps
	cargo test

bench: deps
	bench/load.sh

# Fuzzing (nightly + cargo-fuzz; not part of CI): each target runs for FUZZ_SECONDS.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	for t in config routing jwt proxy; do \
		cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 || exit 1; \
	done
