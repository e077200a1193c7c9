# The two commands: `make demo` and `make test`. Both do all set-up on a fresh
# Debian bookworm / Raspberry Pi OS machine: system packages (when run as root),
# the virtualenv in .venv, and the project installed into it.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the tests and the demo need. Installed only when missing, only as root.
# One concern a line, so that features add their own packages without touching others'.
SYSTEM_PACKAGES := python3-venv python3-dev python3-wheel-whl gcc
SYSTEM_PACKAGES += openssl ca-certificates
SYSTEM_PACKAGES += systemd
# make deb (dpkg-deb is in dpkg itself) and the system tests: a debootstrapped bookworm
# booted with systemd-nspawn, the package served from a local apt repository
# (dpkg-scanpackages), containers driven with nsenter (util-linux).
SYSTEM_PACKAGES += dpkg-dev debootstrap systemd-container python3.11
# A software TPM 2.0 for the TPM keystore tests (swtpm_ioctl is in swtpm-tools,
# tpm2_flushcontext in tpm2-tools). The OpenSSL tpm2 provider is not listed: bookworm's
# 1.1.1 fails every TLS handshake, so the tests fetch trixie's (tests/support/tpm.py).
SYSTEM_PACKAGES += swtpm swtpm-tools tpm2-tools
# tests/faults: the agent process alone gets a 1970 clock (LD_PRELOAD, FAKETIME_TIMESTAMP_FILE).
SYSTEM_PACKAGES += libfaketime
# devcloud's web console is tested in a real headless browser (Debian's, never a download).
SYSTEM_PACKAGES += chromium
# The Plug and Play model is checked by Microsoft's DTDL parser, run by node, fetched by npm
# (a nodejs that ships its own npm conflicts with Debian's npm: then only nodejs is asked for).
SYSTEM_PACKAGES += nodejs
SYSTEM_PACKAGES += $(if $(shell command -v npm),,npm)
# The agent is tested through a real HTTP proxy (started by the tests on loopback; the
# program alone, not the tinyproxy package's system service).
SYSTEM_PACKAGES += tinyproxy-bin
APT := apt-get -o DPkg::Lock::Timeout=300 -y -q

.PHONY: all demo test lint typecheck pytest sysdeps venv clean deb mutation bench

all: test

sysdeps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        echo "installing system packages: $$missing"; \
	        $(APT) update && DEBIAN_FRONTEND=noninteractive $(APT) install --no-install-recommends $$missing; \
	    else \
	        echo "missing system packages (run as root to install them): $$missing" >&2; \
	    fi; \
	fi

$(VENV)/.installed: pyproject.toml | sysdeps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the project into $(VENV) (log: $(VENV)/install.log)"
	@{ $(PY) -m pip install --upgrade pip && $(PY) -m pip install -e '.[dev]'; } \
	    > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check agent hal devcloud tests bench deploy mutation
	$(VENV)/bin/ruff format --check agent hal devcloud tests bench deploy mutation
	$(VENV)/bin/lint-imports

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# Mutation testing (not part of `make test`): a fresh full run of mutmut over the modules
# configured in pyproject.toml ([tool.mutmut]), then mutation/REPORT.md (mutation/run.py).
# Exits non-zero when a module scores below 90 %. MUTANTS='hal.drivers.bosch*' runs only
# those again. mutmut's output goes to mutants/run.log.
MUTMUT_JOBS ?= 2
$(VENV)/.mutation-installed: $(VENV)/.installed
	$(PY) -m pip install -e '.[dev,mutation]' >> $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	touch $@

mutation: $(VENV)/.mutation-installed
	$(PY) -m mutation.run --jobs $(MUTMUT_JOBS) $(MUTANTS)

# KEEP=1 leaves devcloud and the agent running after the demo, for the web console.
demo: venv
	KEEP=$(KEEP) $(PY) deploy/demo.py

# The Debian package for this machine's architecture, in dist/ (deploy/deb/build_deb.py).
deb: venv
	$(PY) deploy/deb/build_deb.py --out dist $(DEB_ARGS)

# The full side-by-side benchmark (about 30 minutes on 2 cores; the idle window alone is
# 10 minutes): bench/results.json, bench/RESULTS.md, bench/latency.png; prints the table.
# BENCH_ARGS passes options to bench/run.py (e.g. BENCH_ARGS="--idle-s 120").
bench: venv
	$(PY) bench/run.py --out bench/results.json --report-dir bench --markdown $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache mutants
