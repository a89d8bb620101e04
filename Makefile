# The two commands of the README: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
VENV  := .venv/bin
VR    := $(VENV)/veris-remediate
export VERIS_STATE_DIR ?= $(CURDIR)/.state
export VERIS_LAB_CACHE ?= /var/cache/veris-remediate

.PHONY: setup demo test lint unit integration molecule clean lab-down

setup:
	@scripts/setup.sh

demo: setup
	@scripts/demo.sh

# Lint first (cheap), then every test; lab hosts are removed whatever happens.
test: setup
	@trap '$(MAKE) --no-print-directory lab-down' EXIT; \
	$(MAKE) --no-print-directory lint && \
	$(VENV)/python -m pytest tests -p no:cacheprovider

lint:
	$(VENV)/ruff check veris_remediate tests bench
	$(VENV)/ruff format --check veris_remediate
	$(VENV)/mypy
	PATH=$(CURDIR)/.venv/bin:$$PATH $(VENV)/ansible-lint -q roles playbooks

unit: setup
	$(VENV)/python -m pytest tests/unit

lab-down:
	@for p in lab mol lt bn; do $(VR) lab down --prefix $$p >/dev/null 2>&1 || true; done

clean: lab-down
	rm -rf .state
