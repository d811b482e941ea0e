# Sluice: two commands do everything on a fresh machine.
#   make demo   local stack (nats-server, coordinator, worker) running the example workflow
#   make test   every test, against real nats-servers the tests start themselves

CARGO ?= cargo

.PHONY: demo test tools build bench python-test python-check screenshots

tools:
	bash scripts/install-tools.sh

build:
	$(CARGO) build --workspace

demo: tools
	@echo "Building sluice: the first build compiles every dependency and takes a few minutes; later ones take seconds."
	$(CARGO) build -p sluice
	./target/debug/sluice dev examples/workflows/etl-daily.yaml examples/workflows/sensors-fanout.yaml examples/python-jobs/etl.yaml \
		--worker-command 'PYTHONPATH=examples/python-jobs exec .tools/venv/bin/sluice-py worker --pool python etl_jobs'

# Every Rust test, then the Python SDK's unit tests, lint and types (its integration tests run
# inside cargo test: cli/tests/python_sdk.rs). Both halves run even if the first fails.
test: tools
	@status=0; $(CARGO) test --workspace --no-fail-fast || status=1; $(MAKE) --no-print-directory python-check || status=1; exit $$status

# The Python SDK (clients/python): pytest, ruff (lint and format) and mypy --strict.
PY_TOOLS = ../../.tools/venv/bin
python-test: tools python-check

python-check:
	cd clients/python && $(PY_TOOLS)/python -m pytest -p no:cacheprovider && $(PY_TOOLS)/ruff check . && $(PY_TOOLS)/ruff format --check . && $(PY_TOOLS)/mypy

# make bench   the standard loadtest suite (release build): bench/results.json + docs/performance.md,
#              then W1–W5 again with nats-server `sync_interval: always`: bench/results-sync-always.json
bench: tools
	$(CARGO) build --release -p sluice -p sluice-loadtest
	./target/release/sluice-loadtest --sluice ./target/release/sluice --out bench/results.json --doc docs/performance.md
	./target/release/sluice-loadtest --sluice ./target/release/sluice --sync-interval always --only W1,W2,W3,W4,W5 --out bench/results-sync-always.json

# make screenshots   the UI's browser test (headless Chromium), then its screenshots into docs/ui/
screenshots: tools
	$(CARGO) test -p sluice --test ui
	cp target/ui-screenshots/*.png docs/ui/
