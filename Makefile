# The two commands the README leads with:
#   make run   - set up a virtualenv, build the C++ engine, start the server on embedded defaults
#   make test  - set up everything the tests need (Python packages, engine, services) and run them all
#
# Everything lands in .venv/ and build/; `make clean` removes both.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install (and so rebuild the engine) whenever the package definition or the C++ sources change.
ENGINE_INPUTS := pyproject.toml CMakeLists.txt $(wildcard csrc/*.hpp csrc/*.cpp)

# The editable install serves Python files from the source tree, so mypy reads the package there: put
# the engine's generated stub (and py.typed) beside them. Both are git-ignored build products.
STUBS = cp build/*/_engine.pyi build/*/py.typed marketfeed/
# 512-bit vectors where the CPU has AVX-512, as CMakeLists.txt builds the engine (an x86 option only).
WIDE = $(if $(filter x86_64,$(shell uname -m)),-mprefer-vector-width=512)

.PHONY: run test setup setup-dev vendor services lint typecheck pytest bench clean

run: setup vendor
	$(BIN)/marketfeed serve

test: setup-dev services vendor lint typecheck pytest

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3

$(VENV)/.installed: $(BIN)/python $(ENGINE_INPUTS)
	$(BIN)/pip install --quiet -e .
	$(STUBS)
	touch $@

$(VENV)/.installed-dev: $(BIN)/python $(ENGINE_INPUTS)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(STUBS)
	touch $@ $(VENV)/.installed

# The page's JavaScript libraries: pinned in package-lock.json, copied into public/vendor/ by npm ci.
vendor: public/vendor/.installed

public/vendor/.installed: package.json package-lock.json
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "warning: npm not found: the page at / needs its chart libraries (install Node.js and npm)"; fi

# PostgreSQL, Redis, Chromium (apt) and Kafka's jars (Maven Central) for the integration tests.
services:
	bash .ci/install-services.sh

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup-dev
	$(BIN)/mypy

pytest: setup-dev
	$(BIN)/pytest

bench: setup-dev
	$(BIN)/python bench/engine.py
	$(CXX) -O3 -march=native $(WIDE) -fopenmp-simd -pthread bench/threads.cpp -o build/threads && build/threads
	$(CXX) -std=c++20 -O3 -march=native $(WIDE) -fopenmp-simd -fno-math-errno -fno-trapping-math bench/divider.cpp -o build/divider && build/divider

clean:
	rm -rf $(VENV) build node_modules public/vendor
