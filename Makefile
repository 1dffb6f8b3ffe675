# The README's two set-up commands are `make demo` and `make test`; both install what they need first.
PY ?= python3
PIP = $(PY) -m pip
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps demo test test-all bench lint

# Debian packages for the speech pipeline (espeak-ng voices, sox); skipped when already present.
system-deps:
	@if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v sox >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq espeak-ng sox >/dev/null; \
	  else echo "warning: install espeak-ng and sox for the speech experiments"; fi; \
	fi

# torch is pinned to the CPU build first, so no dependency can pull a multi-GB CUDA build.
install: system-deps
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"

demo: install
	sherman reproduce --budget quick

test: install
	$(PY) -m pytest

test-all: install
	$(PY) -m pytest -m "not gpu"

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint:
	ruff check sherman tests benchmarks
