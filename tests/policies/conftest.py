"""Toy stores for the policy tests: real Zarr stores written through the writer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from policy_helpers import CAMERA

from robolearn.testing.toy import write_obstacle_store


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    # one thread: the figures do not depend on how busy the machine's other core is
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def obstacle_store(tmp_path_factory) -> Path:
    """100 demonstrations, half left and half right of the obstacle (state only)."""
    path = tmp_path_factory.mktemp("toy") / "obstacle.zarr"
    write_obstacle_store(path, 100)
    return path


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """Six demonstrations going left, state only: a policy should fit them almost exactly."""
    path = tmp_path_factory.mktemp("toy") / "tiny.zarr"
    write_obstacle_store(path, 6, seed=2, sides="left")
    return path


@pytest.fixture(scope="session")
def camera_store(tmp_path_factory) -> Path:
    """A handful of demonstrations with a 32×32 camera."""
    path = tmp_path_factory.mktemp("toy") / "obstacle_cam.zarr"
    write_obstacle_store(path, 6, camera=CAMERA, seed=1, sides="left")
    return path
