"""benchmarks/failures.py: how a push_cube rollout that failed is classed, and a real rollout of a
briefly trained policy through the script's own worker function."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import failures  # noqa: E402

from robolearn.cli import main  # noqa: E402

HALF = 0.025


def row(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "success": False,
        "cube_z": HALF,
        "moved_at": 12,
        "inside_at": None,
        "start_m": 0.20,
        "final_m": 0.10,
    }
    return {**base, **kw}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"success": True, "inside_at": 40, "final_m": 0.01}, "success"),
        ({"cube_z": 2.5 * HALF}, "tipped or lifted"),  # held up, or lying on an edge
        ({"cube_z": 0.7 * HALF}, "tipped or lifted"),
        ({"moved_at": None, "final_m": 0.20}, "never moved"),
        ({"inside_at": 90, "final_m": 0.07}, "passed through"),
        ({}, "short of the target"),
        ({"final_m": 0.21}, "pushed away"),
        ({"final_m": 0.20}, "pushed away"),
    ],
)
def test_push_cube_failures_are_classed_by_where_the_cube_went(
    fields: dict[str, object], expected: str
) -> None:
    assert failures.classify_push(row(**fields), HALF) == expected


def test_a_push_cube_rollout_is_measured_and_classed(tmp_path: Path) -> None:
    store, run = tmp_path / "push.zarr", tmp_path / "run"
    record = ["record", "robot=sim_panda", "task=push_cube", "teleop=expert", "num_episodes=2"]
    assert main([*record, f"dataset={store}", "robot.cameras=[]", "keys=off", "status=off"]) == 0
    train = [
        "train",
        f"dataset={store}",
        f"run_dir={run}",
        "policy=mlp",
        "policy.hidden_dims=[32,32]",
        "policy.horizon=8",
        "policy.n_action_steps=4",
        "policy.action_keys=[action.joint]",
        "train.steps=5",
        "train.batch_size=8",
        "train.threads=1",
        "train.device=cpu",
    ]
    assert main(train) == 0
    rows = failures.rollouts((str(run / "checkpoints" / "last"), str(run), [7, 8], "sync", None))
    assert [r["seed"] for r in rows] == [7, 8]
    for r in rows:
        assert r["class"] == failures.classify_push(r, r["half"])
        assert r["class"] in {
            "success",
            "tipped or lifted",
            "never moved",
            "passed through",
            "short of the target",
            "pushed away",
        }
        # the task starts the cube three target radii or more from the target
        assert r["start_m"] >= 3 * r["radius"] - 1e-6
        assert r["closest_m"] <= min(r["start_m"], r["final_m"]) + 1e-6
        assert 1 <= r["steps"] <= 200 and 0 <= r["idle_ticks"] <= r["steps"]
        if r["class"] == "never moved":
            assert r["moved_at"] is None and r["inside_at"] is None
