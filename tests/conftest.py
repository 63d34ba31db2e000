"""Shared fixtures: small real episode stores on disk, written through the real writer.

Also how `make test` spreads the suite over the machine's cores. Tests whose figures depend on
wall-clock time (real-time loops, emulated servo buses with millisecond packet timeouts,
processes killed at random moments, recorder stalls) are marked `alone`: `make test` first runs
every other test on pytest-xdist workers, each pinned to its own cores (its subprocesses and
torch's threads too, so that two tests never fight over one core), then the `alone` tests one
at a time on the whole machine. Run with `pytest -n N` in one go, the `alone` tests still run
alone: they take a lock exclusively that every other test holds shared while it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from robolearn.data.store import EpisodeStore
from robolearn.data.synthetic import SyntheticArm, sample_spec

TESTS = Path(__file__).resolve().parent
# paths under tests/ whose tests run alone (a directory ends in "/")
ALONE = (
    "hardware/",
    "deploy/",
    "data/test_crash.py",
    "data/test_procwriter.py",
    "data/test_writer.py",
    "sim/test_pybullet_robot.py",
    "sim/test_robot_conformance.py",
    "sim/test_sim_process.py",
    "test_bench_deploy.py",
    "test_loop.py",
    "test_preview.py",
    "test_record.py",
    "test_synthetic_robot.py",
)
# files whose module- or session-scoped fixtures are costly (a recording, a trained policy):
# their tests go to one worker, which builds the fixture once (`--dist loadgroup`)
ONE_WORKER = (
    "deploy/test_deploy.py",
    "data/test_interop.py",
    "train/test_eval.py",
    "train/test_train.py",
)
# the longest tests (a minute or more on 2 cores) start first, so that no worker is left with
# one of them at the end while the others have nothing to do
LONG_FIRST = (
    "integration/test_demo.py",
    "policies/test_multimodal.py",
    "policies/test_policy_api.py",
    "test_bench_policies.py",
)


def _rel(path: Path) -> str:
    return Path(path).resolve().relative_to(TESTS).as_posix()


def runs_alone(path: Path) -> bool:
    rel = _rel(path)
    return any(rel.startswith(p) if p.endswith("/") else rel == p for p in ALONE)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the marks added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        rel = _rel(item.path)
        if runs_alone(item.path):
            item.add_marker(pytest.mark.alone)
        if rel in ONE_WORKER:
            item.add_marker(pytest.mark.xdist_group(rel))
    items.sort(key=lambda item: _rel(item.path) not in LONG_FIRST)  # stable


# ---------------------------------------------------------------------- xdist workers
ALL_CPUS = sorted(os.sched_getaffinity(0))


def _worker_cpus() -> list[int]:
    """This xdist worker's share of the cores the run started with."""
    index = int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw"))
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return ALL_CPUS[index % count :: count] if count <= len(ALL_CPUS) else ALL_CPUS


def _use_cpus(cpus: list[int]) -> None:
    os.sched_setaffinity(0, cpus)  # subprocesses started by the test inherit it
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(len(cpus))


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # releases the lock


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # outside pytest-timeout's timer
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: nothing runs beside the test
        yield
        return
    alone = runs_alone(item.path)
    _use_cpus(ALL_CPUS if alone else _worker_cpus())
    # xdist gives each worker the basetemp <this run's basetemp>/<worker>: the parent is shared
    base = Path(item.config.option.basetemp).parent / "robolearn-alone"
    # The turnstile keeps a test that waits to run alone from being overtaken forever: while it
    # waits for the lock, it holds the turnstile, and no other test can take the lock shared.
    lock = _flock(base.with_suffix(".lock"), fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
    with _flock(base.with_suffix(".turnstile"), fcntl.LOCK_EX):
        lock.__enter__()
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def write_sample_store(
    path: Path,
    *,
    episodes: int = 4,
    frames: int | list[int] = 40,
    fps: float = 20.0,
    cameras: dict[str, tuple[int, int]] | None = None,
    codecs: dict[str, str] | None = None,
    drop_every: int = 0,
    seed: int = 0,
) -> EpisodeStore:
    """A store of camera-like synthetic episodes (closed; reopen it to read)."""
    spec = sample_spec({"top": (24, 32), "wrist": (24, 32)} if cameras is None else cameras)
    store = EpisodeStore.create(path, spec, fps, codecs=codecs)
    arm = SyntheticArm(spec, seed=seed)
    lengths = frames if isinstance(frames, list) else [frames] * episodes
    with store, store.writer() as writer:
        for e, n in enumerate(lengths):
            writer.start_episode(task=f"task{e % 2}", tags=["sample"])
            for t, frame in arm.episode(n, fps, drop_every=drop_every):
                writer.add_frame(frame, timestamp=t)
            writer.save(success=e % 3 != 2, extra={"operator": "test"})
    return store


@pytest.fixture
def sample_store(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a sample store under tmp_path and return its path."""
    counter = iter(range(1000))

    def make(**kwargs: object) -> Path:
        path = tmp_path / f"store{next(counter)}.zarr"
        write_sample_store(path, **kwargs)  # type: ignore[arg-type]
        return path

    return make


def frames_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
