"""The README's main job, `robolearn demo`, end to end in a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from robolearn.data.store import EpisodeStore
from robolearn.data.tools import verify_store


@pytest.mark.integration
def test_demo_records_a_store_and_prints_its_info(tmp_path: Path) -> None:
    out_path = tmp_path / "demo.zarr"
    exe = str(Path(sys.executable).with_name("robolearn"))
    out = subprocess.run(
        [exe, "demo", "--out", str(out_path), "--episodes", "2", "--seconds", "1.5", "--fps", "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "fps measured" in out.stdout and "episodes" in out.stdout
    store = EpisodeStore.open(out_path)
    assert store.num_episodes == 2
    assert 25 <= store.episode(0).length <= 31  # 1.5 s at 20 Hz, measured in real time
    assert verify_store(out_path).ok
    # Running it again replaces the demo store instead of failing.
    again = subprocess.run(
        [exe, "demo", "--out", str(out_path), "--episodes", "1", "--seconds", "0.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert EpisodeStore.open(out_path).num_episodes == 1
