# Two commands on a fresh machine: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-stamp
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# The suite runs on this many pytest-xdist workers, each module's tests in one of them (loadfile:
# a module's own head or fixtures start once); each worker has its own local Ray and moto server.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile

.PHONY: install install-runtime browser demo test test-fast bench clean

# The runtime dependencies only (what `make demo` needs).
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME)

# Everything the suite uses: the runtime, every extra and the test tools.
$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install-runtime: $(RUNTIME)
install: $(STAMP)

## Run the main job (jobs/quickstart.yaml): digits PNGs, a resnet18 trained here, Parquet under
## out/quickstart/; in this process (run.executor: auto with no Ray cluster named or running: the
## local executor; its summary's first line says so). Installs the runtime dependencies only.
demo: install-runtime
	$(BIN)/imgclf run jobs/quickstart.yaml

## Headless Chromium for the report test (Debian's package; needs root, as in CI).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "warning: chromium could not be installed; the browser test skips outside CI"

## The whole suite (real local Ray, moto S3 server on 127.0.0.1, headless Chromium).
test: install browser
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

## Everything but the tests marked slow.
test-fast: install browser
	$(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

## Side-by-side throughput (README "Performance"): N = 2000 by default, BENCH_ARGS="--n 500" for less.
bench: install
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf out data .pytest_cache benchmarks/work
