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

# Every lab prefix the tests boot: the integration labs (lab, fx; lt, lf in test_lab.py),
# the benchmark's (bn), and the molecule scenarios' shared hosts, mol<worker><slot>
# (tests/molecule/labs.py: worker "" or a, b under pytest-xdist; slot "", p, d, pd, s).
MOL_PREFIXES := $(foreach w,mol mola molb,$(w) $(w)p $(w)d $(w)pd $(w)s)
LAB_PREFIXES := lab labb fx fxb lt lf bn ca ux xn fu fub ft sf sfb $(MOL_PREFIXES)

# Lint first (cheap); then unit and molecule tests on two pytest-xdist workers (they mostly
# wait on ansible and ssh; each worker boots its own molecule hosts), then the integration
# tests on two workers, a test file at a time (--dist loadfile: a file's own lab stays in one
# worker; each worker boots its own session labs, lab/fx and labb/fxb). Lab hosts are
# removed whatever happens; either pytest failing (exit 5, no tests, included) fails.
test: setup
	@trap '$(MAKE) --no-print-directory lab-down' EXIT; \
	$(MAKE) --no-print-directory lint && \
	$(VENV)/python -m pytest tests/unit tests/molecule -p no:cacheprovider -n 2 && \
	$(VENV)/python -m pytest tests/integration -p no:cacheprovider -n 2 --dist loadfile

lint:
	$(VENV)/ruff check veris_remediate tests bench
	$(VENV)/ruff format --check veris_remediate
	$(VENV)/mypy
	PATH=$(CURDIR)/.venv/bin:$$PATH $(VENV)/ansible-lint -q roles playbooks

unit: setup
	$(VENV)/python -m pytest tests/unit

lab-down:
	@for p in $(LAB_PREFIXES); do $(VR) lab down --prefix $$p >/dev/null 2>&1 & done; wait

clean: lab-down
	rm -rf .state
