# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NAS := $(VENV)/bin/nas
# Without an NVIDIA GPU, pin the CPU build of torch (no multi-GB CUDA download).
# With one, install normally. Override with `make CONSTRAINTS= test`.
CONSTRAINTS ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints-cpu.txt)
DEMO_STUDY ?= demo
DEMO_DB ?= sqlite:///nas.db

.PHONY: install demo test test-fast lint bench bench-quick clean

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q $(CONSTRAINTS) -e ".[dev,export,bench,report]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(NAS) search --study $(DEMO_STUDY) --storage $(DEMO_DB) --space resnet --trials 12 --workers 2 --epochs 8 --seed 0
	$(NAS) export $(DEMO_STUDY) --storage $(DEMO_DB) --out exports/$(DEMO_STUDY)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Daily work: everything but the end-to-end runs marked `slow` (killed drivers, the pool,
# two nodes, the benchmark smoke runs). CI runs `make test`.
test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m bench.run

bench-quick: install
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) nas.db nas.db-* exports .pytest_cache
