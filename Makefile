# The two set-up commands of the README: `make quickstart` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup quickstart test info

setup:
	bash scripts/setup.sh

info: setup
	$(VENV)/bin/dsr-deploy info

# The main job: export the shipped trained network, verify every artifact bit-exact, score and benchmark them.
quickstart: setup
	$(VENV)/bin/dsr-deploy quickstart --out quickstart-out

test: setup
	$(PY) -m pytest -q
