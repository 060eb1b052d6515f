# Two commands on a fresh machine: `make run` (install + main job) and `make test` (install + tests).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3.11
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_HOME ?= $(CURDIR)/.prefect
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK := True
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# a first start migrates a fresh Prefect database: slower than the default 20 s on 2 cores
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: install run test bench sweep serve review docs lock clean up down status backup

# Debian packages, each installed only when missing: headless Chromium for the HTML run report's browser
# test; PostgreSQL and nginx for the production profile (make up).
install: $(VENV)/.installed
	@missing="$$(command -v chromium >/dev/null || echo chromium) \
	  $$(ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || echo postgresql) \
	  $$(command -v nginx >/dev/null || test -x /usr/sbin/nginx || echo nginx)"; \
	if [ -n "$$(echo $$missing)" ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	  || echo "WARNING: could not install $$missing (needs root and apt): the browser and profile tests will fail"; fi

# torch goes first, from its own pin: the lock leaves torch, nvidia-* and triton out so pip
# keeps the CPU build instead of pulling ~2.7 GB of CUDA wheels (see STACK-NOTES).
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m pip install -q -r requirements.lock 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m pip install -q --no-deps -e . 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import torch, mlflow, bentoml, prefect, great_expectations, dvc, transformers, mmcore"
	touch $@

run: install
	$(PY) -m flows.retrain

test: install
	$(PY) -m pytest -q --durations=25

# Speed goals live here, as ratios against a limit measured in the same run (JSON in reports/bench/).
bench: install
	$(PY) -m mmcore.bench ingest --records 3000 --out reports/bench/ingest.json
	$(PY) -m mmcore.bench serve --seconds 20 --out reports/bench/serve.json
	$(PY) -m mmcore.bench abuse --out reports/bench/serve.json
	$(PY) -m mmcore.bench train --out reports/bench/train.json
	$(PY) -m mmcore.bench gate --out reports/bench/gate.json
	$(PY) -m mmcore.bench monitor --out reports/bench/monitor.json
	$(PY) -m mmcore.bench triggers --out reports/bench/triggers.json

# Model selection on the validation split (sweep.yaml, DVC experiments), the winner trained and scored once
# on the gate set (reports/quality.json: the docs' quality table is rendered from it). Needs a `make run`'s data.
sweep: install
	$(PY) -m mmcore.sweep run --apply
	$(PY) -m flows.retrain --force
	$(PY) -m mmcore.sweep quality

# Loopback only, and closed: PARCEL_API_KEY=<key> make serve (or PARCEL_ALLOW_OPEN=1 to run it open on purpose).
serve:
	bentoml serve parcel-condition:latest --host 127.0.0.1 --port 3000

# The documentation site (mkdocs.yml) on http://127.0.0.1:8000, rebuilt on every edit; `mkdocs build --strict` runs
# in the tests (tests/docs).
docs: install
	$(PY) -m mkdocs serve

# Label the answers the service routed to human review (docs/orchestration-and-loop.md: the review queue);
# reviewers' own keys in PARCEL_REVIEWER_KEYS (name:key,...) or the file PARCEL_REVIEWER_KEYS_FILE names.
review:
	$(PY) -m mmcore.selective.review

# The production profile (docs/orchestration-and-loop.md): PostgreSQL, S3 (moto's server locally), MLflow and
# Prefect on them, the worker and the champion's bento behind nginx; settings in .env (see .env.example).
up: install
	$(PY) -m mmcore.profile up

down:
	$(PY) -m mmcore.profile down

status:
	$(PY) -m mmcore.profile status

backup:
	$(PY) -m mmcore.profile backup

# Regenerate requirements.lock from requirements.in, then the bento's serving subset from the lock
# (needs uv: pip install uv).
lock:
	uv pip compile requirements.in -o requirements.lock.tmp --python-version 3.11 --no-header
	grep -vE '^(torch|triton|nvidia-(cu|nccl|nvjitlink|nvshmem|nvtx)|cuda-)' requirements.lock.tmp > requirements.lock
	rm requirements.lock.tmp
	uv pip compile requirements-serve.in -c requirements.lock -o requirements-serve.txt --python-version 3.11

clean:
	rm -rf data/raw data/quarantine data/split data/cache artifacts reports/*.json reports/runs mlflow.db mlartifacts .bentoml gx/uncommitted
