# Two entry points: `make demo` runs the main job on embedded defaults, `make test` runs
# lint, types and the whole test suite. Both create .venv and install what they need.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# The locked versions (Python 3.11, Linux, with hashes): requirements.lock is what the image
# runs, requirements-dev.lock adds the dev tools at the same runtime versions. pyproject.toml keeps
# the >= ranges for people who install the package as a library.
LOCK_FLAGS := --python-version 3.11 --python-platform linux --generate-hashes \
	--custom-compile-command "make lock" --quiet

.PHONY: demo test lint install lock bench clean

# The dev lock first (pip checks its hashes), then the project itself, editable, adding nothing.
$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Rewrite both locks after a change to the dependencies in pyproject.toml; versions already
# locked are kept where they still fit. `make lock UPGRADE=--upgrade` moves all to the newest.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) $(UPGRADE) -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev --constraint requirements.lock \
		$(LOCK_FLAGS) $(UPGRADE) -o requirements-dev.lock

demo: $(STAMP)
	$(BIN)/newsletter demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/render.py
	$(BIN)/python benchmarks/send.py --n 100000

clean:
	rm -rf var test-artifacts .pytest_cache .mypy_cache .ruff_cache
