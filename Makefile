# The two set-up commands of the README: `make quickstart` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup quickstart test info plugins

setup:
	bash scripts/setup.sh

info: setup
	$(VENV)/bin/dsr-deploy info

# The main job: export the shipped trained network, verify every artifact bit-exact, score and benchmark them.
quickstart: setup
	$(VENV)/bin/dsr-deploy quickstart --out quickstart-out

# The native CPU torch op (plugins/) with what this machine has; the tests then check it against the reference.
plugins: setup
	$(VENV)/bin/dsr-deploy plugins build

test: setup plugins
	$(PY) -m pytest -q
