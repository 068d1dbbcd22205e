PY ?= python3

.PHONY: install serve test bench paris-mini eval

install:
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'

serve: install
	paris serve

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) -m tests.benchmarks.run_all

paris-mini: install
	$(PY) -m weights.recipe.build --out weights/paris-mini

eval: install
	paris eval --model weights/paris-mini
