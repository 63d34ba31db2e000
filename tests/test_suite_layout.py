"""How `make test` splits the suite (tests/conftest.py) still fits the files on disk."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _root_conftest():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_suite_layout_conftest", TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_listed_path_exists() -> None:
    conftest = _root_conftest()
    for entry in (*conftest.ALONE, *conftest.ONE_WORKER, *conftest.LONG_FIRST):
        path = TESTS / entry
        assert path.is_dir() if entry.endswith("/") else path.is_file(), (
            f"tests/conftest.py names {entry!r}, which does not exist: update the list"
        )


def test_tests_timed_by_the_wall_clock_run_alone() -> None:
    """A test file that runs a real-time clock or an emulated servo bus must be in ALONE: on a
    shared core its timing figures would measure the other test, not the code."""
    conftest = _root_conftest()
    timed = re.compile(r"clock=\"realtime\"|BusEmulator\(|SimProcessRobot\(|process=True")
    for path in TESTS.rglob("test_*.py"):
        if path.name != Path(__file__).name and timed.search(path.read_text()):
            assert conftest.runs_alone(path), f"{path.relative_to(TESTS)} is timed: add it to ALONE"
    assert conftest.runs_alone(TESTS / "hardware" / "test_gamepad.py")  # a directory entry
    assert not conftest.runs_alone(TESTS / "policies" / "test_multimodal.py")
