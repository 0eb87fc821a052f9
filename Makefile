# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

$(STAMP): $(VPY) pyproject.toml
	$(VPY) -m pip install -q -e ".[test,demo,tasks,export]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/splitattn demo

test: $(STAMP)
	$(VPY) -m ruff check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache --no-logo
	$(VPY) -m pytest -q -n 2 --dist worksteal --durations=15

lint: $(STAMP)
	$(VPY) -m ruff check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache --no-logo

bench: $(STAMP)
	$(VPY) benchmarks/bench.py --device cpu

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
