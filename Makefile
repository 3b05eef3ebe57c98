# Two entry points for people (`make demo`, `make test`); `make setup` is what both call first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.reason-plugins-setup
DEMO_OUT ?= demo_out

.PHONY: setup demo test test-e2e test-fast bench clean

setup: $(STAMP)

# Re-run setup only when the pins or the package metadata change (idempotent either way).
$(STAMP): scripts/setup.sh pyproject.toml requirements/constraints.txt requirements/working-set.txt requirements/lock.txt requirements/lock-cuda.txt
	PYTHON=$(PYTHON) bash scripts/setup.sh
	touch $(STAMP)

demo: setup
	$(BIN)/reason-sae demo --out $(DEMO_OUT)

test: setup
	bash scripts/run_tests.sh

# The whole-workflow tests `make test` leaves out (Ray clusters, lm_eval CLI runs, the README's long sessions);
# CI runs `make test`, then this.
test-e2e: setup
	bash scripts/run_tests.sh --e2e

# Everything not marked slow (no engine, server or lm-eval run end to end): for edit loops.
test-fast: setup
	bash scripts/run_tests.sh --fast

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
