# Patronus: the two commands are `make demo` and `make test`; each installs what it needs first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
SETUP  := bash .ci/bootstrap.sh

.PHONY: setup test lint typecheck unit demo bench clean

setup:
	@$(SETUP)

## test: lint, type-check and run the whole suite (unit, property, sim, emulation)
test: setup lint typecheck
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check patronus emulation tests benchmarks
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_code_size.py tests/unit/test_import_cycles.py

typecheck: setup
	$(PY) -m mypy

## unit: the fast part of the suite only
unit: setup
	$(PY) -m pytest -m "unit or property"

## demo: the main job, end to end: failover-basic on real agents in namespaces (needs root), with its report
demo: setup
	@if [ "$$(id -u)" != 0 ]; then echo "make demo runs real agents in network namespaces: run it as root (sudo make demo)," \
	  "or try the virtual-time demo: $(VENV)/bin/patronus demo" >&2; exit 2; fi
	$(VENV)/bin/patronus-lab run scenarios/failover-basic.yaml --out reports/demo/failover-basic
	@echo "report: reports/demo/failover-basic/report.html (also report.md, summary.json, junit.xml, plots/)"

## bench: benchmarks, one JSON per benchmark under reports/bench/
bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis reports/bench/*.json
