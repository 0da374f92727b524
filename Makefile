# trainjobs: `make run` starts the service (API + one worker, SQLite); `make test` runs every check.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint migrate api worker bench bench-quick bench-gpu screenshots clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[worker,postgres,dev]'
	touch $(STAMP)

run: $(STAMP) ## API on TRAINJOBS_HOST:TRAINJOBS_PORT (127.0.0.1:8000) + one worker, SQLite in ./var
	$(BIN)/trainjobs-api migrate
	BIN=$(BIN) ./scripts/run-local.sh

migrate: $(STAMP)
	$(BIN)/trainjobs-api migrate

api: $(STAMP)
	$(BIN)/trainjobs-api --migrate

worker: $(STAMP)
	$(BIN)/trainjobs-worker

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint ## lint, types, then every test on SQLite and PostgreSQL
	$(BIN)/pytest -q

screenshots: $(STAMP) ## the dashboard's browser tests, writing the README's pictures to docs/images/
	TRAINJOBS_SCREENSHOTS=docs/images TRAINJOBS_TEST_BACKENDS=sqlite $(BIN)/pytest -q tests/ui/test_dashboard_browser.py

bench: $(STAMP) ## every benchmark, full size (about 30 min on 2 cores): table to stdout, bench/results/<date>-<host>.json
	$(BIN)/python -m bench

bench-quick: $(STAMP) ## every benchmark at tiny sizes (about a minute): a smoke run, as CI does
	$(BIN)/python -m bench --quick

bench-gpu: $(STAMP) ## the GPU run (about 8 min on one GPU): ResNet-18 vs the article's loop, the 720M autoencoder, a job through the service
	$(BIN)/python -m bench --gpu

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
