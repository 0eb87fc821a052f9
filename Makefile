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

# The tests' files (weights, checkpoints, ONNX models: about 10 GB written per run, under 1 GB at a time) go to
# RAM where /dev/shm has 4 GiB free, so that the disk's write-back does not hold the I/O-heavy tests up
# (benchmarks/RESULTS.md); elsewhere to pytest's usual temporary folder. A failed run keeps its folder.
test: $(STAMP)
	$(VPY) -m ruff check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache --no-logo
	@free=$$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $$4}'); tmp=; \
	if [ "$${free:-0}" -ge 4194304 ]; then tmp=$$(mktemp -d /dev/shm/splitattn-tests.XXXXXX 2>/dev/null); fi; \
	echo "$(VPY) -m pytest -q -n 2 --dist worksteal --durations=15 $${tmp:+--basetemp=$$tmp}"; \
	$(VPY) -m pytest -q -n 2 --dist worksteal --durations=15 $${tmp:+--basetemp=$$tmp}; status=$$?; \
	if [ -n "$$tmp" ]; then \
		if [ $$status -eq 0 ]; then rm -rf "$$tmp"; else echo "the failed tests' files: $$tmp"; fi; \
	fi; \
	exit $$status

lint: $(STAMP)
	$(VPY) -m ruff check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache --no-logo

bench: $(STAMP)
	$(VPY) benchmarks/bench.py --device cpu

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
