# The two commands a new machine needs: `make demo` and `make test` (both run `make setup`).
.PHONY: setup demo test lint bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/edgeres convert

test: setup
	.venv/bin/pytest -q

lint: setup
	.venv/bin/ruff check edgeres tests tools calibration
