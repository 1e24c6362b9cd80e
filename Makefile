# The one way to set up, test, lint, run the demo and the benchmarks. CI calls these targets.
PY := .venv/bin/python

.PHONY: setup test lint typecheck check demo bench clean contract

setup:
	@scripts/bootstrap

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports

typecheck: setup
	.venv/bin/mypy shared services edgefleet tests

check: lint typecheck test

demo: setup
	.venv/bin/edgefleet demo

bench: setup
	@for b in bench/*.py; do echo "== $$b"; PYTHONPATH=. $(PY) $$b || exit 1; done

contract: setup
	$(PY) -m shared.contract > docs/wire-contract.md

clean:
	rm -rf .venv var .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
