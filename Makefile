# The two set-up commands of the README. scripts/uv installs uv from the package registry when
# it is missing; `uv run` then creates .venv from uv.lock on first use.
UV := ./scripts/uv

.PHONY: demo test lint format bench

demo:
	$(UV) run --locked robolearn demo

test:
	$(UV) run --locked pytest

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
