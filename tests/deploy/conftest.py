"""A policy trained on scripted reach demonstrations, shared by the deployment tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from robolearn.cli import main


@pytest.fixture(scope="session")
def reach_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 scripted reach episodes and an MLP trained on them (lock-step: about 90 % success)."""
    root = tmp_path_factory.mktemp("deploy")
    store = root / "reach.zarr"
    record = [
        "record",
        "robot=sim_panda",
        "task=reach",
        "teleop=expert",
        "num_episodes=30",
        f"dataset={store}",
        "robot.cameras=[]",
        "keys=off",
        "status=off",
    ]
    assert main(record) == 0
    run = root / "run"
    train = [
        "train",
        f"dataset={store}",
        f"run_dir={run}",
        "policy=mlp",
        "policy.hidden_dims=[256,256]",
        "policy.obs_keys=[state,task_state]",
        "policy.action_keys=[action.joint]",
        "train=demo",
        "train.steps=1500",
        "train.batch_size=128",
        "train.device=cpu",
        "train.val_every=1500",
    ]
    assert main(train) == 0
    return run
