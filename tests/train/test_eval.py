"""`robolearn eval`: lock-step rollouts in worker processes, the success interval, videos and
the JSON report; the receding-horizon executor; push_t's coverage score."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from robolearn.cli import main
from robolearn.config import ConfigError, compose
from robolearn.data.stats import get_stats
from robolearn.data.store import EpisodeStore
from robolearn.evaluate import (
    ChunkExecutor,
    EvalError,
    evaluate,
    mean_interval,
    wilson_interval,
)
from robolearn.policies import make_policy
from robolearn.policies.mlp import MLPConfig
from robolearn.train_app import run_eval


def test_the_wilson_interval_matches_known_values() -> None:
    lo, hi = wilson_interval(40, 50)  # 80 %
    assert lo == pytest.approx(0.6696, abs=1e-3) and hi == pytest.approx(0.8876, abs=1e-3)
    assert wilson_interval(50, 50)[1] == pytest.approx(1.0) and wilson_interval(50, 50)[0] > 0.92
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] < 0.31


def test_the_mean_score_interval_is_the_normal_one_clipped_to_the_range() -> None:
    lo, hi = mean_interval([0.0, 1.0] * 50)  # mean 0.5, sample sd 0.5025, n 100
    assert lo == pytest.approx(0.5 - 1.96 * 0.05025, abs=1e-4)
    assert hi == pytest.approx(0.5 + 1.96 * 0.05025, abs=1e-4)
    assert mean_interval([0.8] * 30) == pytest.approx((0.8, 0.8))
    assert mean_interval([1.0, 0.99, 1.0])[1] == 1.0  # clipped
    assert mean_interval([0.7]) == (0.0, 1.0) and mean_interval([]) == (0.0, 1.0)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reach store from the scripted expert and a short training run on it."""
    root = tmp_path_factory.mktemp("eval")
    store = root / "reach.zarr"
    assert (
        main(
            [
                "record",
                "robot=sim_panda",
                "task=reach",
                "teleop=expert",
                "num_episodes=6",
                f"dataset={store}",
                "robot.cameras=[]",
                "keys=off",
                "status=off",
            ]
        )
        == 0
    )
    run = root / "run"
    assert (
        main(
            [
                "train",
                f"dataset={store}",
                f"run_dir={run}",
                "policy=mlp",
                "policy.hidden_dims=[64,64]",
                "policy.horizon=8",
                "policy.n_action_steps=4",
                "policy.action_keys=[action.joint]",
                "train.steps=20",
                "train.batch_size=16",
                "train.threads=1",
                "train.device=cpu",
            ]
        )
        == 0
    )
    return run


def test_eval_reports_success_with_an_interval_videos_and_json(trained_run: Path) -> None:
    out = trained_run / "my_eval"
    args = [f"checkpoint={trained_run}", "episodes=4", "workers=2", "videos=1", f"out={out}"]
    cfg = compose("eval", [*args, "video_size=[240,180]"])
    assert run_eval(cfg) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["episodes"] == 4 and report["task"] == "reach" and report["workers"] == 2
    assert report["mode"] == "blend"  # mode=auto: as deploy runs the MLP
    assert report["seeds"] == [100000, 100001, 100002, 100003]
    assert 0 <= report["successes"] <= 4
    lo, hi = report["ci95"]
    assert lo <= report["success_rate"] <= hi
    assert len(report["per_episode"]) == 4
    for ep in report["per_episode"]:
        assert 1 <= ep["steps"] <= 200 and ep["success"] == (ep["score"] >= 1.0)
    assert report["inference_ms_p50"] > 0
    (video,) = report["videos"]
    cap = cv2.VideoCapture(video)
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    seed0 = next(e for e in report["per_episode"] if e["seed"] == 100000)
    assert frames == seed0["steps"] + 1
    ok, frame = cap.read()
    assert ok and frame.shape == (180, 240, 3) and frame.std() > 10


def test_eval_of_the_same_seeds_is_reproducible_in_one_process(trained_run: Path) -> None:
    reports = []
    for name in ("a", "b"):
        out = trained_run / f"repro_{name}"
        cfg = compose(
            "eval",
            [f"checkpoint={trained_run}", "episodes=2", "workers=1", "videos=0", f"out={out}"],
        )
        assert run_eval(cfg) == 0
        reports.append(json.loads((out / "report.json").read_text())["per_episode"])
    strip = [[{k: e[k] for k in ("seed", "success", "steps", "score")} for e in r] for r in reports]
    assert strip[0] == strip[1]


def test_eval_compares_modes_on_the_same_seeds(trained_run: Path) -> None:
    """mode=[…] evaluates the same weights and seeds once per mode, each into its own folder,
    and writes the comparison; a mode it does not know is refused before any rollout."""
    out = trained_run / "modes"
    args = [f"checkpoint={trained_run}", "episodes=2", "workers=1", "videos=0", f"out={out}"]
    assert run_eval(compose("eval", [*args, "mode=[sync,ensemble,auto]"])) == 0
    rows = json.loads((out / "modes.json").read_text())
    assert [r["mode"] for r in rows] == ["sync", "ensemble", "auto"]
    assert [r["executed_as"] for r in rows] == ["sync", "ensemble", "blend"]
    for row in rows:
        report = json.loads(Path(row["report"]).read_text())
        assert Path(row["report"]).parent == out / row["mode"]
        assert report["mode"] == row["executed_as"] and report["seeds"] == [100000, 100001]
        assert report["successes"] == row["successes"] and row["episodes"] == 2
    with pytest.raises(ConfigError, match=r"mode='fast'.*mode=\[blend,ensemble\]"):
        run_eval(compose("eval", [*args, "mode=[blend,fast]"]))
    with pytest.raises(ConfigError, match="each mode once"):
        run_eval(compose("eval", [*args, "mode=[blend,blend]"]))


def test_an_episode_depends_on_its_seed_not_on_the_sampling_before_it(trained_run: Path) -> None:
    """A flow policy samples noise for every chunk. An episode's actions must be the same
    whichever worker runs it and whatever that process sampled before (eval splits seeds
    over a varying number of workers), so the seed sets the noise as well as the scene."""
    from omegaconf import OmegaConf

    from robolearn.evaluate import make_sim_robot, run_episode
    from robolearn.policies.denoisers import DenoiserConfig
    from robolearn.policies.flow import FlowConfig

    with EpisodeStore.open(trained_run.parent / "reach.zarr") as store:
        config = FlowConfig(
            denoiser=DenoiserConfig(down_dims=[16, 32], time_embed_dim=16),
            obs_keys=["state"],
            action_keys=["action.joint"],
            horizon=8,
            n_action_steps=4,
        )
        policy = make_policy(config, store.spec, get_stats(store))
    env = OmegaConf.to_container(OmegaConf.load(trained_run / "config.yaml").env)
    ends = []
    with make_sim_robot(env, policy.image_keys) as robot:  # type: ignore[arg-type]
        for earlier in (0, 3, 0):
            torch.randn(earlier)  # what this process sampled before the episode
            run_episode(robot, ChunkExecutor(policy, mode="sync"), 100000, max_steps=6)
            ends.append(np.asarray(robot.observe()["state"]))
        run_episode(robot, ChunkExecutor(policy, mode="sync"), 100001, max_steps=6)
        other_seed = np.asarray(robot.observe()["state"])
    np.testing.assert_array_equal(ends[0], ends[1])
    np.testing.assert_array_equal(ends[0], ends[2])
    assert not np.array_equal(ends[0], other_seed)


def test_eval_needs_a_simulated_scene_and_a_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"no checkpoint|does not exist"):
        run_eval(compose("eval", [f"checkpoint={tmp_path}"]))
    # a bare policy directory away from its run: the scene must be named
    import shutil

    bare = tmp_path / "policy"
    shutil.copytree((trained_run / "checkpoints" / "last").resolve(), bare)
    with pytest.raises(ConfigError, match="robot=sim_panda"):
        run_eval(compose("eval", [f"checkpoint={bare}", "episodes=1"]))
    out = tmp_path / "named"
    args = [f"checkpoint={bare}", "robot=sim_panda", "task=reach", "episodes=1", f"out={out}"]
    cfg = compose("eval", [*args, "videos=0"])
    assert run_eval(cfg) == 0 and (out / "report.json").exists()


def test_the_executor_runs_each_chunk_from_the_current_step(tmp_path: Path) -> None:
    from robolearn.testing.toy import write_obstacle_store

    path = tmp_path / "toy.zarr"
    write_obstacle_store(path, episodes=4, seed=0)
    with EpisodeStore.open(path) as store:
        config = MLPConfig(hidden_dims=[16], n_obs_steps=2, horizon=6, n_action_steps=3)
        policy = make_policy(config, store.spec, get_stats(store))
        obs0 = {k: store.read(k, 0, 1)[0] for k in policy.obs_keys}
    calls = []
    real = policy.predict_chunk

    def spy(window):  # type: ignore[no-untyped-def]
        calls.append({k: np.asarray(v).copy() for k, v in window.items()})
        return real(window)

    policy.predict_chunk = spy  # type: ignore[method-assign]
    ex = ChunkExecutor(policy)
    key = ex.action_key
    actions = [ex(obs0)[key] for _ in range(7)]
    assert len(calls) == 3  # a chunk every n_action_steps = 3 ticks
    k0 = policy.obs_keys[0]
    assert calls[0][k0].shape[:2] == (1, 2)
    np.testing.assert_array_equal(calls[0][k0][0, 0], calls[0][k0][0, 1])  # start padded
    chunk = real(calls[0])[0].numpy()
    np.testing.assert_allclose(actions[0], policy.split_actions(chunk[1])[key], rtol=1e-6)
    np.testing.assert_allclose(actions[2], policy.split_actions(chunk[3])[key], rtol=1e-6)
    with pytest.raises(EvalError, match="cannot send"):
        ChunkExecutor(policy, "action.nothing")


def test_push_t_coverage_is_the_covered_fraction_of_the_goal() -> None:
    from sim.robot import PyBulletRobot
    from sim.tasks import make_task
    from sim.tasks.objects import place

    robot = PyBulletRobot("panda", task=make_task("push_t"))
    with robot:
        robot.reset(0)
        t = robot.task
        c = t.world.client
        assert t.coverage() < 0.5 and not t.success()
        place(c, t.block, np.array([*t.goal, t.shape.height / 2]), yaw=t.goal_yaw)
        assert t.coverage() == pytest.approx(1.0) and t.score() == pytest.approx(1.0)
        # half a unit sideways: the bar (4×1) keeps 3.5 of 4, the stem (1×3) keeps half
        place(c, t.block, np.array([t.goal[0] + t.shape.unit / 2, t.goal[1], 0.0125]), yaw=0.0)
        assert t.coverage() == pytest.approx((3.5 + 1.5) / 7, abs=0.01)


def test_the_executor_runs_the_runtime_modes_in_lock_step(tmp_path: Path) -> None:
    from robolearn.testing.toy import write_obstacle_store

    path = tmp_path / "toy.zarr"
    write_obstacle_store(path, episodes=4, seed=0)
    with EpisodeStore.open(path) as store:
        config = MLPConfig(hidden_dims=[16], n_obs_steps=2, horizon=6, n_action_steps=3)
        policy = make_policy(config, store.spec, get_stats(store))
        obs0 = {k: store.read(k, 0, 1)[0] for k in policy.obs_keys}
    calls = {}
    for mode in ("sync", "receding", "ensemble"):
        ex = ChunkExecutor(policy, mode=mode)
        for _ in range(9):
            ex(obs0)
        calls[mode] = len(ex.inference_s)
    # sync and receding predict every n_action_steps ticks; ensembling predicts every tick
    assert calls == {"sync": 3, "receding": 3, "ensemble": 9}
    # n_action_steps= overrides the policy's own (as deploy's runner.n_action_steps)
    ex = ChunkExecutor(policy, mode="sync", n_action_steps=1)
    for _ in range(9):
        ex(obs0)
    assert len(ex.inference_s) == 9
    with pytest.raises(EvalError, match=r"^n_action_steps=7 does not fit"):
        ChunkExecutor(policy, mode="sync", n_action_steps=7)
    with pytest.raises(EvalError, match="mode='fast'"):
        evaluate(tmp_path, {}, episodes=1, out_dir=tmp_path / "x", mode="fast")
    for size in ([480], [480, 0], [480.5, 360]):
        with pytest.raises(EvalError, match=r"video_size=.*\[width, height\] in pixels"):
            evaluate(tmp_path, {}, episodes=1, out_dir=tmp_path / "x", video_size=size)


def test_auto_mode_is_the_policys_own_and_ensembles_relative_actions(tmp_path: Path) -> None:
    from robolearn.evaluate import auto_mode
    from robolearn.policies.act import ACTConfig
    from robolearn.policies.base import relative_action_stats
    from robolearn.runner import PolicyRunner, RunnerConfig
    from robolearn.testing.toy import write_obstacle_store

    path = tmp_path / "toy.zarr"
    write_obstacle_store(path, episodes=4, seed=0)
    configs = {
        "mlp": MLPConfig(hidden_dims=[16]),
        "mlp_rel": MLPConfig(hidden_dims=[16], relative_actions=True),
        "act": ACTConfig(dim_model=32, n_heads=2, dim_feedforward=64, horizon=8, n_action_steps=4),
    }
    with EpisodeStore.open(path) as store:
        stats = {**get_stats(store), **relative_action_stats(store, configs["mlp_rel"])}
        policies = {k: make_policy(c, store.spec, stats) for k, c in configs.items()}
    modes = {}
    for name, policy in policies.items():
        policy.save(tmp_path / name)
        modes[name] = auto_mode(tmp_path / name)
        assert PolicyRunner(policy, 10.0, RunnerConfig(mode="auto")).mode == modes[name]
    assert modes == {"mlp": "blend", "mlp_rel": "ensemble", "act": "ensemble"}
    with pytest.raises(EvalError, match="cannot evaluate"):
        auto_mode(tmp_path / "nothing")
