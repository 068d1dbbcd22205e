PY ?= python3

.PHONY: install serve test bench paris-mini eval

install:
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'

serve: install
	paris serve

# pytest-xdist workers. The suite mostly waits on the real processes it starts (APIs, workers,
# Valkey, S3, a browser), so more workers than the CI machine's 2 cores shorten it.
TEST_WORKERS ?= 4

test: install
	@start=$$(date +%s); $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests; rc=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s wall time ($(TEST_WORKERS) workers)"; exit $$rc

bench: install
	$(PY) -m tests.benchmarks.run_all

paris-mini: install
	$(PY) -m weights.recipe.build --out weights/paris-mini

eval: install
	paris eval --model weights/paris-mini
