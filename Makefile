# mogli-monitor: `make demo` and `make test` work on a fresh Debian 12 machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests, the demo and the benchmarks use as real peers.
APT_PACKAGES := python3-venv prometheus prometheus-alertmanager tshark ffmpeg nftables iproute2 fping openssl \
	python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly chromium
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench dashboards deps venv clean

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages:" $$missing; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
		else \
			echo "missing Debian packages; run as root:"; \
			echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends $$missing"; \
		fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The long outage scenarios (2 minutes of healthy traffic, of a collector away: what their issues ask for) mostly wait:
# they run in a second pytest beside the rest, so the suite takes ~10 minutes of wall time instead of ~17.
SIDE_TESTS := tests/test_alerts_e2e.py tests/test_backfill.py

test: deps venv
	@mkdir -p test-artifacts; \
	$(BIN)/pytest -q -ra -p no:cacheprovider $(SIDE_TESTS) > test-artifacts/side-tests.log 2>&1 & side=$$!; \
	$(BIN)/pytest -q -ra $(addprefix --ignore=,$(SIDE_TESTS)); main=$$?; \
	wait $$side; rc=$$?; \
	echo "=== beside them: $(SIDE_TESTS) (test-artifacts/side-tests.log)"; cat test-artifacts/side-tests.log; \
	if [ $$main -ne 0 ] || [ $$rc -ne 0 ]; then exit 1; fi

lint: venv
	$(BIN)/ruff check agent collector tests demo bench grafana
	$(BIN)/mypy

demo: deps venv
	$(BIN)/python -m demo

bench: deps venv
	$(BIN)/python -m bench

# Grafana dashboards: regenerate grafana/dashboards/*.json from grafana/build.py (standard library only).
dashboards:
	$(PYTHON) grafana/build.py

clean:
	rm -rf $(VENV) .demo .bench test-artifacts
