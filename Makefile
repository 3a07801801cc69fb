# Two commands do all the set-up on a fresh machine:
#   make run    create/reuse .venv, install, start the service (SQLite, local Ray, host-cpu-torch)
#   make test   create/reuse .venv, install, run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Exactly this torch, installed before the project: pip takes the CPU build from this machine's disk
# (an unpinned torch would pull a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,onnx,coreml
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile 2>/dev/null | cksum | cut -d' ' -f1)
DEMO ?= examples/efficientformerv2_host_cpu.yaml

.PHONY: install browser-deps run test lint bench clean-db

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

run: install
	$(BIN)/nas serve --demo $(DEMO)

# Debian's Chromium for tests/browser (Playwright drives it; it never downloads a browser). Installed
# only when missing and when apt-get can run as root; otherwise the browser tests skip and say why.
CHROMIUM ?= /usr/bin/chromium
browser-deps:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser tests"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "note: could not install chromium: the browser tests will be skipped"; \
	else echo "note: no $(CHROMIUM) and no root apt-get: the browser tests will be skipped"; fi

test: install browser-deps
	$(BIN)/python -m pytest -q

# ruff, then the import contracts of pyproject.toml ([tool.importlinter]): the layering of the packages,
# the rules between the programs of services/ and what a router may import, no cycles, no private
# module used outside its package.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo --no-cache

bench: install
	@for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean-db:
	rm -f var/nas.db var/nas.db-wal var/nas.db-shm
