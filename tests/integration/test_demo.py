"""The README's main job, `robolearn demo`, end to end in a real process (at a tiny budget: the
full budget's success rate is measured by benchmarks/success.py, not here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robolearn.data.store import EpisodeStore


@pytest.mark.integration
def test_demo_records_trains_evaluates_and_reports(tmp_path: Path) -> None:
    out_dir = tmp_path / "demo"
    exe = str(Path(sys.executable).with_name("robolearn"))
    args = [exe, "demo", "--out", str(out_dir), "--episodes", "4", "--steps", "20"]
    args += ["--eval-episodes", "2", "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=280, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    store = EpisodeStore.open(out_dir / "pick_place.zarr")
    assert store.num_episodes == 4 and store.user_attrs["recording"]["task"]["name"] == "pick_place"
    report = (out_dir / "report.md").read_text()
    assert "success** on `pick_place`" in report and "95% CI" in report
    for line in ("robolearn record", "robolearn train", "robolearn eval", "loss curve"):
        assert line in report
    (run,) = out_dir.glob("run_*")
    assert (run / "loss.png").exists() and (run / "checkpoints" / "last").exists()
    ev = json.loads((run / "eval" / "report.json").read_text())
    assert ev["episodes"] == 2 and len(ev["videos"]) == 1 and Path(ev["videos"][0]).exists()
    # the commands in the report work by hand: the eval line runs as printed
    eval_line = next(x for x in report.splitlines() if x.startswith("robolearn eval"))
    by_hand = subprocess.run(
        [exe, *eval_line.replace("episodes=2", "episodes=1").split()[1:], "videos=0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert by_hand.returncode == 0, by_hand.stderr[-2000:]
    # a second demo reuses the stored demonstrations instead of recording them again
    quick = [*args[:-6], "--steps", "5", "--eval-episodes", "1", "--workers", "1"]
    again = subprocess.run(quick, capture_output=True, text=True, timeout=280, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing them" in again.stdout
    assert EpisodeStore.open(out_dir / "pick_place.zarr").num_episodes == 4
