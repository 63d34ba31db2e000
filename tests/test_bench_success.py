"""benchmarks/success.py's camera choices compose into real robot configs, and its table names
what each image cell saw. (The cells themselves take minutes to hours: they are run by hand and
recorded in docs/benchmarks.md.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import success  # noqa: E402

from robolearn.config import compose  # noqa: E402


@pytest.mark.parametrize("camera", sorted(success.CAMERAS))
def test_every_camera_choice_composes_into_the_record_config(camera: str) -> None:
    override = f"robot.cameras=[{','.join(success.CAMERAS[camera])}]"
    cfg = compose("record", ["robot=sim_panda", "task=pick_place", "teleop=expert", override])
    cameras = [instantiate(c) for c in cfg.robot.cameras]
    assert [c.name for c in cameras] == success.camera_names(camera)
    assert all(c.width * c.height >= 64 * 64 for c in cameras)
    if camera == "wrist":
        assert [c.mount for c in cameras] == [None, "wrist"]
        assert (cameras[1].width, cameras[1].height) == (64, 64)


def _cell(**kw: object) -> dict[str, object]:
    cell = {
        "policy": "mlp",
        "task": "pick_place",
        "obs": "image",
        "vision": "cnn",
        "camera": "wide",
        "budget": "demo",
        "demos": 200,
        "steps": 6000,
        "batch_size": 256,
        "train_s": 3000.0,
        "samples_per_s": 500.0,
        "successes": 116,
        "episodes": 200,
        "success_rate": 0.58,
        "ci95": [0.51, 0.65],
        "mean_score": 0.58,
        "commit": "abc1234",
    }
    cell.update(kw)
    return cell


def test_the_table_keeps_one_row_per_view_and_names_it() -> None:
    cells = [_cell(), _cell(camera="framed", successes=95), _cell(camera="wrist", successes=180)]
    rows = [r for r in success.table({"cells": cells}).splitlines() if r.startswith("| pick")]
    assert len(rows) == 3
    assert sum("image (cnn, wide view)" in r for r in rows) == 1
    assert sum("image (cnn, framed view)" in r for r in rows) == 1
    assert sum("image (cnn, wide top + 64×64 wrist)" in r and "180/200" in r for r in rows) == 1
    assert len({success._key(c) for c in cells}) == 3


def test_cells_merge_into_the_file_as_it_is_now(tmp_path: Path) -> None:
    """Two sweeps run side by side each add their cell to what the file holds when the cell
    ends, not to what it held when the sweep started; a re-measured cell replaces its row."""
    path = tmp_path / "success.json"
    success.save({"cells": [_cell(camera="framed")]}, path)
    success.merge(_cell(camera="wide"), path)  # sweep 1's cell
    success.merge(_cell(camera="wrist", successes=170), path)  # sweep 2's, started earlier
    success.merge(_cell(camera="wrist", successes=180), path)  # re-measured
    cells = success.load(path)["cells"]
    assert sorted((c["camera"], c["successes"]) for c in cells) == [
        ("framed", 116),
        ("wide", 116),
        ("wrist", 180),
    ]


def test_policy_set_parses_yaml_values_and_keeps_its_own_row() -> None:
    assert success.policy_set(["n_obs_steps=1", "hidden_dims=[512, 512]", "vision.crop=0.8"]) == {
        "n_obs_steps": 1,
        "hidden_dims": [512, 512],
        "vision.crop": 0.8,
    }
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        success.policy_set(["n_obs_steps"])
    cells = [_cell(), _cell(policy_set={"n_obs_steps": 1}, successes=150)]
    rows = [r for r in success.table({"cells": cells}).splitlines() if r.startswith("| pick")]
    assert len(rows) == 2
    assert sum("n_obs_steps=1" in r for r in rows) == 1
    assert len({success._key(c) for c in cells}) == 2


def test_each_training_seed_keeps_its_own_row_and_names_it(tmp_path: Path) -> None:
    """A repeat with another seed adds a row (it measures the training run's spread) instead of
    replacing the seed-0 row; cells from before the seed was recorded count as seed 0."""
    path = tmp_path / "success.json"
    old = _cell()  # no "seed" field: measured before it was recorded
    success.save({"cells": [old]}, path)
    success.merge(_cell(seed=1, successes=150), path)
    success.merge(_cell(seed=0, successes=120), path)  # re-measures the old row
    cells = success.load(path)["cells"]
    assert sorted((c.get("seed", 0), c["successes"]) for c in cells) == [(0, 120), (1, 150)]
    rows = [r for r in success.table({"cells": cells}).splitlines() if r.startswith("| pick")]
    assert sum("seed 1" in r and "150/200" in r for r in rows) == 1
    assert sum("seed" in r for r in rows) == 1  # seed 0 is not named


def test_reuse_names_the_fix_for_a_run_no_cell_measured(tmp_path: Path) -> None:
    """--reuse only evaluates runs the table knows (it copies their training figures); any
    other directory is refused with the fix, before any rollout."""
    results = tmp_path / "success.json"
    success.save({"cells": [_cell(run_dir=str(tmp_path / "runs" / "measured"))]}, results)
    args = success.argparse.Namespace(results=results, mode="auto", episodes=1, n_action_steps=None)
    with pytest.raises(SystemExit, match=r"no cell in .* was trained in this run"):
        success.reeval(tmp_path / "runs" / "other", args)


def test_the_summary_holds_the_best_cell_of_each_policy_task_and_budget() -> None:
    """One row per policy and budget, one column per task and observation: the best cell
    (push_t by its mean coverage, not its success rate), and — where nothing was measured."""
    cells = [
        _cell(),
        _cell(obs="state", successes=40, episodes=50, success_rate=0.80, ci95=[0.67, 0.89]),
        _cell(
            obs="state",
            mode="ensemble",
            actions="relative",
            demos=500,
            success_rate=0.96,
            successes=48,
            episodes=50,
            ci95=[0.87, 0.99],
        ),
        _cell(
            task="push_t",
            obs="state",
            policy="flow",
            success_rate=0.45,
            mean_score=0.85,
            score_ci95=[0.83, 0.86],
            n_action_steps=4,
            mode="blend",
        ),
        _cell(
            task="push_t",
            obs="state",
            policy="flow",
            success_rate=0.50,
            mean_score=0.80,
            score_ci95=[0.77, 0.82],
            mode="sync",
        ),
    ]
    rows = {
        tuple(r.split(" | ")[:2]): r.split(" | ")
        for r in success.summary({"cells": cells}).splitlines()
        if r.startswith("| mlp") or r.startswith("| flow")
    }
    columns = ["policy", "budget"] + [f"{t} ({o})" for t, o in success.SUMMARY_COLUMNS]
    mlp = dict(zip(columns, rows[("| mlp", "demo")], strict=False))
    assert mlp["pick_place (state)"] == "**96%** (rel, ens, 500)"
    assert mlp["pick_place (image)"] == "**58%** (abs, sync, 200, wide)"
    assert mlp["push_t (state)"] == "—"
    flow = dict(zip(columns, rows[("| flow", "demo")], strict=False))
    assert flow["push_t (state)"] == "**0.85** (abs, blend 4, 200)"
    assert set(rows[("| flow", "long")][2:]) <= {"—", "— |"}
