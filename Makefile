# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create .venv when it is missing and install the package into it.
VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTEST_ARGS ?= -n 2

.PHONY: install test demo lint bench clean test-vllm-stack

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(OFFLINE) $(PY) -m pytest $(PYTEST_ARGS) tests trl_perception

demo: install
	$(OFFLINE) $(VENV)/bin/trl-perception demo

# The whole suite on the stack `pip install ".[vllm]"` resolves to (README "vLLM versions"): vLLM 0.31 pins
# torch 2.13 and transformers<5.18, older than the default install. A separate venv; needs a Linux x86_64 host.
VLLM_VENV ?= .venv-vllm
test-vllm-stack:
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "trl==1.16.0" "vllm==0.31.0" "transformers==5.17.0" "torch==2.13.0" -e ".[dev,vllm]"
	$(OFFLINE) $(VLLM_VENV)/bin/python -m pytest $(PYTEST_ARGS) tests trl_perception

lint: install
	$(VENV)/bin/ruff check trl_perception tests benchmarks recipes

bench: install
	$(OFFLINE) $(PY) benchmarks/rewards.py

clean:
	rm -rf $(VENV) build dist *.egg-info demo-output
