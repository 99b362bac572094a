# The two set-up commands of the README: `make quickstart` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup quickstart test info plugins lint docs-numbers

setup:
	bash scripts/setup.sh

info: setup
	$(VENV)/bin/dsr-deploy info

# The main job: export the shipped trained network, verify every backend's neurons bit-exact and every artifact's
# agreement, score and benchmark them.
# The native kernels first (the torch op and the ONNX Runtime custom-op library, no SDK needed; seconds), so the
# quickstart runs the fast path; if they cannot be built (no compiler) it still runs and lists what it skipped and why.
quickstart: setup
	@$(VENV)/bin/dsr-deploy plugins build || echo "make quickstart: native kernels not built (above); the quickstart runs without them" >&2
	$(VENV)/bin/dsr-deploy quickstart --out quickstart-out

# The native kernels (plugins/) with what this machine has: the torch op, the ONNX Runtime custom-op library (no SDK
# needed) and, with nvcc, their CUDA kernels; the tests then check them against the reference.
plugins: setup
	$(VENV)/bin/dsr-deploy plugins build

# Two pytest workers (pytest-xdist), whole files per worker so each file's module-level caches (exports, servers) are
# built once: much of the suite waits on subprocesses, compilers and servers, so two workers on two cores finish in
# well under the serial time. TEST_WORKERS=0 runs it in one process. The 30 slowest tests are listed at the end.
TEST_WORKERS ?= 2
test: setup plugins
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30

# Lint (ruff; the rules are in pyproject.toml: E, F, W, B, I, UP at 120 columns).
lint: setup
	$(VENV)/bin/ruff check .

# The measured tables of README.md, docs/runtime.md and plugins/README.md, from benchmarks/results/*.json (the tests
# check they match: tests/test_docs_numbers.py).
docs-numbers: setup
	$(PY) scripts/docs_numbers.py
