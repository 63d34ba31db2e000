"""`robolearn train`: configuration checks, the run directory, checkpoints, exact resume after a
kill, Ctrl-C, and data-parallel replicas (2 CPU processes, gloo) — through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robolearn.cli import main
from robolearn.config import ConfigError, compose
from robolearn.data.store import EpisodeStore
from robolearn.policies import Policy
from robolearn.train import StepBatches, find_checkpoint, load_state
from robolearn.train_app import run_train, train_settings

BIN = Path(sys.executable).parent
SMALL = [
    "policy=mlp",
    "policy.hidden_dims=[64,64]",
    "policy.horizon=8",
    "policy.n_action_steps=4",
    "policy.action_keys=[action.joint]",
    "train.batch_size=16",
    "train.threads=1",
    "train.device=cpu",
    "train.log_every=5",
    "train.optim.warmup_steps=5",
]


@pytest.fixture(scope="module")
def reach_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight scripted reach episodes on the simulated Panda, recorded by `robolearn record`."""
    path = tmp_path_factory.mktemp("data") / "reach.zarr"
    code = main(
        [
            "record",
            "robot=sim_panda",
            "task=reach",
            "teleop=expert",
            "num_episodes=8",
            f"dataset={path}",
            "robot.cameras=[]",
            "keys=off",
            "status=off",
        ]
    )
    assert code == 0
    return path


def train_args(store: Path, run: Path, *extra: str) -> list[str]:
    return [f"dataset={store}", f"run_dir={run}", *SMALL, *extra]


def cli(*args: str, timeout: float = 240, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [str(BIN / "robolearn"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def raw_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    state = load_state(run / "checkpoints" / f"step_{step:06d}" / "trainer")
    return state["model"]


# ---------------------------------------------------------------------- configuration
def test_a_typo_or_a_bad_value_in_the_training_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match="stepz"):
        compose("train", ["dataset=x.zarr", "train.stepz=10"])
    cfg = compose("train", ["dataset=x.zarr", "train.steps=ten"])
    with pytest.raises(ConfigError, match="steps"):
        train_settings(cfg.train)
    cfg = compose("train", ["dataset=x.zarr", "train.amp=fp8"])
    with pytest.raises(Exception, match="amp"):
        train_settings(cfg.train)
    cfg = compose("train", ["dataset=x.zarr", "policy=mlp", "+policy.hiden_dims=[4]"])
    with pytest.raises(Exception, match="hiden_dims"):
        run_train(cfg)
    with pytest.raises(ConfigError, match="dataset"):
        run_train(compose("train", []))


def test_the_step_batches_do_not_depend_on_where_a_run_starts() -> None:
    whole = list(StepBatches(100, 8, seed=3, start=0, stop=10))
    resumed = list(StepBatches(100, 8, seed=3, start=6, stop=10))
    assert resumed == whole[6:]
    other_rank = list(StepBatches(100, 8, seed=3, start=0, stop=10, rank=1))
    assert other_rank != whole  # each data-parallel process reads its own batches


# ---------------------------------------------------------------------- a run
def test_a_run_writes_checkpoints_logs_and_links(reach_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = main(
        [
            "train",
            *train_args(
                reach_store,
                run,
                "train.steps=30",
                "train.checkpoint_every=10",
                "train.val_every=10",
                "train.keep_last=2",
            ),
        ]
    )
    assert code == 0
    config = (run / "config.yaml").read_text()
    assert "reach" in config and "MLPConfig" in config and "env:" in config
    ckpts = run / "checkpoints"
    # keep_last=2: step 10 was pruned unless it is the best
    steps = sorted(p.name for p in ckpts.glob("step_*"))
    assert "step_000030" in steps and len(steps) <= 3
    assert (ckpts / "last").resolve().name == "step_000030"
    assert (ckpts / "best").resolve().name in steps
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [5, 10, 15, 20, 25, 30]
    vals = [r for r in log if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [10, 20, 30] and all(np.isfinite(r["loss"]) for r in vals)
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "loss.png").stat().st_size > 10_000
    # the checkpoint is a policy that loads and predicts
    policy = Policy.load(find_checkpoint(run))
    with EpisodeStore.open(reach_store) as store:
        window = {k: store.read(k, 0, 2)[None] for k in policy.obs_keys}
    assert policy.predict_chunk(window).shape == (1, 8, policy.action_dim)
    # a second run into the same directory is refused instead of mixing two runs
    assert main(["train", *train_args(reach_store, run, "train.steps=5")]) == 2


def test_a_killed_run_resumes_to_exactly_the_uninterrupted_weights(
    reach_store: Path, tmp_path: Path
) -> None:
    settings = ["train.steps=40", "train.checkpoint_every=10", "train.val_every=20"]
    whole = tmp_path / "whole"
    done = cli("train", *train_args(reach_store, whole, *settings))
    assert done.returncode == 0, done.stderr[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [str(BIN / "robolearn"), "train", *train_args(reach_store, run, *settings)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 180
        while not (run / "checkpoints" / "step_000020").exists():
            assert proc.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: no chance to write anything more
        proc.wait()
    last = (run / "checkpoints" / "last").resolve().name
    assert last in ("step_000020", "step_000030")  # it may have written one more
    resumed = cli("train", f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr

    a, b = raw_weights(whole, 40), raw_weights(run, 40)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the saved (EMA) policies match too, and the log has each step once
    pa = load_file(str(whole / "checkpoints" / "step_000040" / "model.safetensors"))
    pb = load_file(str(run / "checkpoints" / "step_000040" / "model.safetensors"))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    steps = [
        json.loads(x)["step"]
        for x in (run / "train_log.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 40


def test_ctrl_c_writes_a_checkpoint_and_the_run_continues(
    reach_store: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            str(BIN / "robolearn"),
            "train",
            *train_args(reach_store, run, "train.steps=100000", "train.checkpoint_every=50000"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    log = run / "train_log.jsonl"
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "resume=" in err
    last = (run / "checkpoints" / "last").resolve()
    stopped_at = int(last.name.split("_")[1])
    assert 10 <= stopped_at < 100000
    more = cli("train", f"resume={run}", f"train.steps={stopped_at + 5}")
    assert more.returncode == 0, more.stderr[-2000:]
    assert (run / "checkpoints" / f"step_{stopped_at + 5:06d}").is_dir()
    # a resumed run cannot switch datasets or policies
    bad = cli("train", f"resume={run}", "policy=flow")
    assert bad.returncode == 2 and "only train.*" in bad.stderr


@pytest.mark.integration
def test_two_data_parallel_processes_keep_identical_replicas(
    reach_store: Path, tmp_path: Path
) -> None:
    run = tmp_path / "ddp"
    out = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(29500 + os.getpid() % 1000),
            "-m",
            "robolearn.train",
            *train_args(reach_store, run, "train.steps=20", "train.checkpoint_every=10"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "× 2 processes" in out.stderr
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    replicas = [r for r in log if r["kind"] == "replicas"]
    assert [r["step"] for r in replicas] == [10, 20]
    for r in replicas:  # each process read different batches, yet the weights agree exactly
        assert len(r["checksums"]) == 2 and r["checksums"][0] == r["checksums"][1]
    # they moved: the weights at step 20 differ from those at step 10
    assert replicas[0]["checksums"][0] != replicas[1]["checksums"][0]
