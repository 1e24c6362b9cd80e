# The one way to set up, test, lint, run the demo and the benchmarks. CI calls these targets.
PY := .venv/bin/python

.PHONY: setup test lint typecheck check demo bench bench-deps faults clean contract sparkplug-proto

setup:
	@scripts/bootstrap

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports

typecheck: setup
	.venv/bin/mypy shared services edgefleet tests faults

check: lint typecheck test

demo: setup
	.venv/bin/edgefleet demo

bench: setup
	@for b in bench/*.py; do echo "== $$b"; PYTHONPATH=. $(PY) $$b || exit 1; done

# What the benchmarks compare against and pip does not bring: Node-RED (pinned, into var/) for
# bench/ingest_gateway.py. Needs node and npm (apt-get install -y nodejs npm).
bench-deps:
	sh bench/install_node_red.sh

# The fault suite: long scenarios with real processes; on demand, never in `make test`.
# FAULTS_SCALE=0.1 for a quick look; the table goes to var/faults/report.md (docs/reliability.md).
faults: setup
	$(PY) -m pytest faults -q -p no:cacheprovider $(PYTEST_ARGS)

contract: setup
	$(PY) -m edgefleet.contract > docs/wire-contract.md

# The Sparkplug B payload module, generated from the specification's schema (grpcio-tools'
# protoc); committed, so a build needs only `protobuf`. tests/sparkplug/test_proto.py checks it.
sparkplug-proto: setup
	cd shared/sparkplug && ../../$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. sparkplug_b.proto

clean:
	rm -rf .venv var .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
