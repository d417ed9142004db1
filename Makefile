# Set-up is idempotent: each stamp is remade only when what it depends on changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DDB_DIR := .dynamodb-local

.PHONY: setup test reliability soak up lint lock clean sam sam-build sam-validate lambda-ric

setup: $(BIN)/.installed dynamodb-local bubblewrap webhook-examples

# Every run executes in a bubblewrap sandbox (Debian's bubblewrap, installed with apt-get).
.PHONY: bubblewrap
bubblewrap:
	@command -v bwrap >/dev/null 2>&1 || { \
		echo "installing Debian's bubblewrap for the runs' sandbox (apt-get)" >&2; \
		SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			bubblewrap >/dev/null && command -v bwrap >/dev/null; \
	} || { echo "error: could not install bubblewrap with apt-get (try: sudo apt-get install bubblewrap)" >&2; exit 1; }

# Every package, transitive ones included, at the version and hashes of the lock; then the
# project itself without dependencies; `pip check` then catches a lock older than pyproject.toml.
LOCK := requirements.lock

$(BIN)/.installed: pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: '$(PYTHON)' not found: install Python 3.11+" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11+ is required (found $$($(PYTHON) --version))" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK) \
		|| { echo "error: could not install $(LOCK) (network or package index unreachable, or a hash differs?)" >&2; exit 1; }
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e . \
		|| { echo "error: could not install the project (network or package index unreachable?)" >&2; exit 1; }
	@$(BIN)/python -m pip check >/dev/null \
		|| { $(BIN)/python -m pip check >&2; echo "error: $(LOCK) does not satisfy pyproject.toml: run 'make lock'" >&2; exit 1; }
	@touch $@

# Remakes the lock from pyproject.toml (pip-tools in a venv of its own), keeping every pin the
# ranges still allow; `make lock UPGRADE=1` takes the newest releases instead.
LOCK_VENV := .venv-lock
lock: $(LOCK_VENV)/.installed
	$(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --extra dev --strip-extras \
		--no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade) \
		--output-file $(LOCK) pyproject.toml

$(LOCK_VENV)/.installed:
	@test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV)
	@$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check pip-tools==7.6.2 \
		|| { echo "error: could not install pip-tools" >&2; exit 1; }
	@touch $@

.PHONY: dynamodb-local
dynamodb-local:
	@infra/install-dynamodb-local.sh $(DDB_DIR)

# GitHub's webhook payload samples for the GitHub App tests: the npm package pinned by the lock
# in tests/github-webhook-examples, installed beside it (node_modules/ is git-ignored).
WEBHOOK_EXAMPLES := tests/github-webhook-examples
.PHONY: webhook-examples
webhook-examples: $(WEBHOOK_EXAMPLES)/node_modules/.installed

$(WEBHOOK_EXAMPLES)/node_modules/.installed: $(WEBHOOK_EXAMPLES)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "error: 'npm' not found: install Node.js and npm (e.g. apt-get install nodejs npm)" >&2; exit 1; }
	@cd $(WEBHOOK_EXAMPLES) && npm ci --no-audit --no-fund --loglevel=error >/dev/null \
		|| { echo "error: could not install @octokit/webhooks-examples from the npm registry (network?)" >&2; exit 1; }
	@touch $@

# The dashboard's browser tests drive Debian's chromium, headless (never `playwright install`).
.PHONY: chromium
chromium:
	@test -x /usr/bin/chromium || { \
		echo "installing Debian's chromium for the browser tests (apt-get)" >&2; \
		SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			chromium >/dev/null && test -x /usr/bin/chromium; \
	} || { echo "error: could not install chromium with apt-get (try: sudo apt-get install chromium)" >&2; exit 1; }

test: setup chromium
	@$(MAKE) --no-print-directory test-py312
	$(BIN)/python -m pytest

# The unit tier on Python 3.12 too (Lambda's runtime), in a venv of its own from the same lock.
# Its interpreter: a python3.12 on PATH or under pyenv, else one that uv installs into .python/
# (uv downloads it from GitHub, which some machines cannot reach); with none, the tier is
# skipped with a line saying why.
PY312_VENV := .venv-py312
# Sets $$py to a Python 3.12 on PATH, under pyenv or in .python/ ("" if none).
PY312_FIND = py=""; \
	for candidate in python3.12 $(HOME)/.pyenv/versions/3.12*/bin/python3.12 $(CURDIR)/.python/*/bin/python3.12; do \
		if "$$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; then \
			py=$$candidate; break; \
		fi; \
	done
.PHONY: test-py312
test-py312: $(BIN)/.installed
	@$(PY312_FIND); \
	if [ -z "$$py" ]; then \
		$(MAKE) --no-print-directory $(LOCK_VENV)/.installed && \
		$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv==0.13.8 >/dev/null 2>&1 && \
		UV_PYTHON_INSTALL_DIR=$(CURDIR)/.python $(LOCK_VENV)/bin/uv python install --quiet 3.12 >/dev/null 2>&1 && \
		py=$$(UV_PYTHON_INSTALL_DIR=$(CURDIR)/.python $(LOCK_VENV)/bin/uv python find --no-project 3.12); \
	fi; \
	if [ -z "$$py" ]; then \
		echo "test-py312: skipped: no Python 3.12 on this machine, and uv could not install one" >&2; \
		exit 0; \
	fi; \
	test -x $(PY312_VENV)/bin/python || "$$py" -m venv $(PY312_VENV) || exit 1; \
	if [ ! -f $(PY312_VENV)/.installed ] || [ $(LOCK) -nt $(PY312_VENV)/.installed ] \
			|| [ pyproject.toml -nt $(PY312_VENV)/.installed ]; then \
		$(PY312_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK) \
		&& $(PY312_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e . \
		&& touch $(PY312_VENV)/.installed \
		|| { echo "error: could not install $(LOCK) on Python 3.12" >&2; exit 1; }; \
	fi; \
	echo "the unit tier on $$($(PY312_VENV)/bin/python --version):" >&2; \
	$(PY312_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/unit

# The same suite while a CPU hog keeps every core busy (tests/cpu_hog.py, one busy loop per
# core): a verdict that depends on the machine's speed shows here. The hog is stopped however
# pytest ends, and pytest's exit status is the target's.
.PHONY: test-under-load
test-under-load: setup chromium
	@$(BIN)/python tests/cpu_hog.py & hog=$$!; \
	trap 'kill $$hog 2>/dev/null; wait $$hog 2>/dev/null' EXIT INT TERM; \
	status=0; $(BIN)/python -m pytest || status=$$?; \
	exit $$status

# The reliability suites at full size, on both runtimes: `scheduler up` (2,000-delivery chaos,
# 10,000+ hostile requests) and the AWS functions as AWS runs them (tests/aws_runtime: 400-job
# chaos with dropped records); prints their figures. `make test` runs the same scenarios CI-sized.
reliability: setup
	SCHEDULER_RELIABILITY=full $(BIN)/python -m pytest -s -p no:cacheprovider tests/reliability tests/aws_runtime

# 20,000 jobs through one long-running stack (about half an hour); prints figures per tenth.
soak: setup
	$(BIN)/python bench/soak.py --jobs 20000

# The local stack in the foreground (Ctrl-C stops it). Needs GITHUB_WEBHOOK_SECRET (at least 32
# characters, e.g. GITHUB_WEBHOOK_SECRET=change-me-to-a-random-secret-of-32-chars-or-more).
up: setup
	SCHEDULER_CONFIG="$${SCHEDULER_CONFIG:-scheduler.local.toml}" $(BIN)/scheduler up

lint: setup
	$(BIN)/ruff check scheduler state_machines tests bench
	$(BIN)/mypy

# --- AWS: SAM CLI in a venv of its own (its pins must not move the project's) ----------------
SAM_VENV := .venv-sam
SAM := SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam
LAMBDA_TARGET := --python-version 3.12 --implementation cp --only-binary=:all: \
	--platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
	--platform manylinux_2_28_aarch64 --platform manylinux_2_34_aarch64
LAMBDA_FUNCTIONS := StreamFunction WebhookFunction ApiFunction CompletionFunction ReaperFunction

sam: $(SAM_VENV)/.installed

$(SAM_VENV)/.installed:
	@test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	@$(SAM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check aws-sam-cli==1.170.0 \
		|| { echo "error: could not install the AWS SAM CLI" >&2; exit 1; }
	@touch $@

# Every function's artefact in .aws-sam/build/<LogicalId>/ (no Docker: pip fetches arm64 wheels).
sam-build: setup sam
	$(SAM) build --template infra/template.yaml --build-in-source --build-dir .aws-sam/build
	@$(MAKE) --no-print-directory lambda-bytecode

# Lambda's code folder is read-only, so an artefact without bytecode compiles every module it
# imports at each cold start (the reaper's imports: 0.65 s, 0.29 s with bytecode; Python 3.12).
# Compiled with Lambda's Python, hash-checked ("unchecked-hash": valid whatever the files'
# times after zipping); without a Python 3.12 here, left out with a line saying so.
.PHONY: lambda-bytecode
lambda-bytecode:
	@$(PY312_FIND); \
	if [ -z "$$py" ]; then \
		echo "lambda-bytecode: skipped: no Python 3.12 here (each cold start compiles instead)" >&2; \
		exit 0; \
	fi; \
	"$$py" -m compileall -q -j0 --invalidation-mode unchecked-hash \
		$(addprefix .aws-sam/build/,$(LAMBDA_FUNCTIONS)) >/dev/null \
		|| { echo "error: could not compile the Lambda artefacts" >&2; exit 1; }; \
	echo "lambda-bytecode: $(words $(LAMBDA_FUNCTIONS)) artefacts compiled with $$("$$py" --version)" >&2

# AWS's Lambda runtime interface client, for booting the built functions locally (a test does).
lambda-ric: .aws-sam/ric/.installed

.aws-sam/ric/.installed:
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --target .aws-sam/ric \
		awslambdaric==4.2.2 || { echo "error: could not install awslambdaric" >&2; exit 1; }
	@touch $@

sam-validate: sam
	$(SAM) validate --lint --template infra/template.yaml --region us-east-1

# Called by `sam build` (BuildMethod: makefile) with ARTIFACTS_DIR set, once per function.
$(addprefix build-,$(LAMBDA_FUNCTIONS)):
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile \
		--target "$(ARTIFACTS_DIR)" $(LAMBDA_TARGET) -r infra/lambda-requirements.txt
	cp -RL scheduler state_machines scheduler.local.toml "$(ARTIFACTS_DIR)/"
	find "$(ARTIFACTS_DIR)" -name __pycache__ -type d -prune -exec rm -rf {} +

clean:
	rm -rf $(VENV) $(SAM_VENV) $(LOCK_VENV) $(PY312_VENV) .python .aws-sam $(DDB_DIR) .pytest_cache .mypy_cache .ruff_cache .hypothesis
