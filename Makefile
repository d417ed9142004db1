# Set-up is idempotent: each stamp is remade only when what it depends on changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DDB_DIR := .dynamodb-local

.PHONY: setup test reliability soak up lint clean

setup: $(BIN)/.installed dynamodb-local

$(BIN)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: '$(PYTHON)' not found: install Python 3.11+" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11+ is required (found $$($(PYTHON) --version))" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' \
		|| { echo "error: could not install Python packages (network or package index unreachable?)" >&2; exit 1; }
	@touch $@

.PHONY: dynamodb-local
dynamodb-local:
	@infra/install-dynamodb-local.sh $(DDB_DIR)

test: setup
	$(BIN)/python -m pytest

# The reliability suite at full size (2,000-delivery chaos, 10,000+ hostile requests); prints
# its figures. `make test` runs the same scenarios CI-sized.
reliability: setup
	SCHEDULER_RELIABILITY=full $(BIN)/python -m pytest -s -p no:cacheprovider tests/reliability

# 20,000 jobs through one long-running stack (about half an hour); prints figures per tenth.
soak: setup
	$(BIN)/python bench/soak.py --jobs 20000

# The local stack in the foreground (Ctrl-C stops it). Needs GITHUB_WEBHOOK_SECRET.
up: setup
	SCHEDULER_CONFIG="$${SCHEDULER_CONFIG:-scheduler.local.toml}" $(BIN)/scheduler up

lint: setup
	$(BIN)/ruff check scheduler state_machines tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(DDB_DIR) .pytest_cache .mypy_cache .ruff_cache .hypothesis
