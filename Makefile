# The two set-up commands of the README. scripts/uv installs uv from the package registry when
# it is missing; `uv run` then creates .venv from uv.lock on first use.
UV := ./scripts/uv

.PHONY: demo test lint format bench

demo:
	$(UV) run --locked robolearn demo

# The suite in two runs (tests/conftest.py): the tests that do not depend on wall-clock time on
# one pytest-xdist worker per core, then the `alone` ones, one at a time. Both always run.
test:
	$(UV) run --locked pytest -m "not alone" --numprocesses=auto --maxprocesses=4 --dist=loadgroup; \
	a=$$?; $(UV) run --locked pytest -m alone; b=$$?; test $$a -eq 0 && test $$b -eq 0

lint:
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .

format:
	$(UV) run --locked ruff format .
	$(UV) run --locked ruff check --fix .

bench:
	$(UV) run --locked python benchmarks/data_io.py
	$(UV) run --locked python benchmarks/sim.py
	$(UV) run --locked python benchmarks/control_loop.py
	$(UV) run --locked python benchmarks/policies.py
