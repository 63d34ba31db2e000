"""The deployment runtime on the real PyBullet robot: asynchronous inference that never makes
the loop wait, chunk scheduling by time, the safety filter, the watchdog, the emergency stop,
blending, real time against lock-step, inference in a worker process, and `robolearn deploy` end
to end."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from robolearn.cli import main
from robolearn.data.store import EpisodeStore
from robolearn.deploy import SafeSource, boundary_jumps, connected, run_episode
from robolearn.evaluate import EVAL_SEED, evaluate, make_sim_robot, wilson_interval
from robolearn.policies import Policy
from robolearn.runner import PolicyRunner, RunnerConfig, RunnerError
from robolearn.safety import SafetyConfig, SafetyError, SafetyFilter
from robolearn.train import find_checkpoint

KEY = "action.joint"


def load(run: Path) -> tuple[Policy, dict[str, Any]]:
    env = OmegaConf.to_container(OmegaConf.load(run / "config.yaml").env)
    return Policy.load(find_checkpoint(run, "last")), env  # type: ignore[return-value]


class Wrapped:
    """A trained policy whose predict_chunk is changed by `hook(chunk, call) -> chunk`, after
    an optional sleep: the slow, hanging and broken policies of these tests."""

    def __init__(self, policy: Policy, hook: Any = None, sleep: float = 0.0) -> None:
        self._policy, self._hook, self._sleep, self.calls = policy, hook, sleep, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def predict_chunk(self, obs: Any) -> Any:
        self.calls += 1
        sleep = self._sleep(self.calls) if callable(self._sleep) else self._sleep
        time.sleep(sleep)
        chunk = self._policy.predict_chunk(obs).numpy()
        return chunk if self._hook is None else self._hook(chunk, self.calls)


def probe(robot: Any) -> list[np.ndarray]:
    """Every command that reaches robot.act, as the robot received it."""
    sent: list[np.ndarray] = []
    act = robot.act

    def spy(action: Any) -> Any:
        sent.append(np.array(action[KEY], dtype=np.float64, copy=True))
        return act(action)

    robot.act = spy
    return sent


def deploy(
    robot: Any,
    policy: Any,
    rate: float,
    mode: str,
    *,
    inference: str = "thread",
    safety: SafetyConfig | None = None,
    seeds: range = range(EVAL_SEED, EVAL_SEED + 1),
    max_seconds: float = 20.0,
    **kw: Any,
) -> tuple[list[Any], PolicyRunner, SafetyFilter]:
    runner = PolicyRunner(
        policy, rate, RunnerConfig(mode=mode, inference=inference), clock=robot.clock
    )
    filt = SafetyFilter(robot.spec, KEY, rate, safety, clock=robot.clock)
    source = SafeSource(runner, filt)
    outcomes = []
    with connected(source):
        for i, seed in enumerate(seeds):
            outcomes.append(
                run_episode(
                    robot, source, rate, episode=i, seed=seed, max_seconds=max_seconds, **kw
                )
            )
    return outcomes, runner, filt


def test_a_slow_policy_never_makes_the_loop_wait(reach_run: Path) -> None:
    """predict_chunk sleeps 3 control periods: the async runner keeps 20 Hz, executes actions
    in time order at their due time and skips those whose time passed; sync mode overruns."""
    policy, env = load(reach_run)
    slow = Wrapped(policy, sleep=0.15)  # the control period is 0.05 s
    rate = 20.0
    with make_sim_robot(env, [], clock="realtime") as robot:
        (out,), runner, _ = deploy(
            robot, slow, rate, "receding", max_seconds=3.0, stop_on_success=False
        )
        assert out.ticks >= 55 and out.loop["overruns"] == 0, out.loop
        assert abs(out.loop["real_rate_hz"] - rate) < 0.5
        sent = [e for e in runner.trace if e.due is not None]
        due = np.array([e.due for e in sent])
        assert (np.diff(due) > 0).all(), "actions went out of time order"
        # every action is the one due when it takes effect (within half a period)
        assert np.abs(due - np.array([e.target for e in sent])).max() < 0.5 / rate + 1e-6
        # each chunk arrives ~3 periods after its observation: those actions are skipped
        assert runner.stats.skipped >= 2 * (runner.stats.chunks - 1)
        assert out.runner["inference_ms"]["p50"] >= 150
        # the inference thread runs at a lower priority than the loop (its own niceness)
        base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert runner.worker_nice == min(19, base + RunnerConfig().inference_nice)
        # the same policy run synchronously blocks the loop at every chunk
        (sync,), _, _ = deploy(robot, slow, rate, "sync", max_seconds=2.5, stop_on_success=False)
        assert sync.loop["overruns"] >= 2


def test_nan_and_out_of_limit_actions_never_reach_the_robot(reach_run: Path) -> None:
    policy, env = load(reach_run)

    def broken(chunk: np.ndarray, call: int) -> np.ndarray:
        chunk = chunk.copy()
        if call % 3 == 0:
            chunk[:, :, 2] = np.nan  # a whole chunk with NaN in one joint
        elif call % 3 == 1 and call > 1:
            chunk[:, 3:, 0] += 10.0  # far outside joint 1's limits, and a jump
        else:
            chunk[:, 5, 4] = np.inf  # one bad action in an otherwise good chunk
        return chunk

    rate = 10.0
    cfg = SafetyConfig()
    with make_sim_robot(env, [], clock="lockstep") as robot:
        sent = probe(robot)
        (out,), _, filt = deploy(
            robot,
            Wrapped(policy, broken),
            rate,
            "receding",
            inference="inline",
            safety=cfg,
            max_seconds=6.0,
            stop_on_success=False,
        )
        feature = robot.spec[KEY]
    cmds = np.stack(sent)
    assert len(cmds) == out.ticks
    assert np.isfinite(cmds).all()
    low, high = np.array(feature.low), np.array(feature.high)
    assert (cmds >= low - 1e-6).all() and (cmds <= high + 1e-6).all()
    step = cfg.max_speed_frac * (high - low) / rate
    assert (np.abs(np.diff(cmds[:, :7], axis=0)) <= step[:7] + 1e-6).all()
    counts = out.safety["interventions"]
    # the runner drops chunks with NaN/inf; the filter clipped the rest
    assert counts["limit"] > 0 and counts["rate"] > 0 and out.runner["bad_chunks"] > 0
    assert filt.counts["limit"] == counts["limit"]


def test_the_filter_never_passes_nan_and_holds_the_last_safe_command(reach_run: Path) -> None:
    _, env = load(reach_run)
    with make_sim_robot(env, [], clock="lockstep") as robot:
        filt = SafetyFilter(robot.spec, KEY, 10.0, clock=robot.clock)
        obs = robot.observe()
        filt.start(obs)
        good = np.asarray(obs["state"], dtype=np.float64)
        good[:7] += 0.01  # the joints move a little; the gripper stays open
        assert np.allclose(filt({KEY: good}, obs)[KEY], good, atol=1e-6)
        bad = good.copy()
        bad[2] = np.nan
        held = filt({KEY: bad}, obs)[KEY]
        assert np.isfinite(held).all() and np.allclose(held, good, atol=1e-6)
        assert filt.counts["nonfinite"] == 1
        assert "panda_joint3" in filt.events[-1]["detail"]
        with pytest.raises(SafetyError, match="shape"):
            filt({KEY: good[:3]}, obs)


def test_the_watchdog_holds_position_when_inference_hangs(reach_run: Path) -> None:
    policy, env = load(reach_run)
    # the first calls are quick, then inference hangs for 1.5 s
    hang = Wrapped(policy, sleep=lambda call: 1.5 if call == 4 else 0.0)
    with make_sim_robot(env, [], clock="realtime") as robot:
        sent = probe(robot)
        (out,), runner, filt = deploy(
            robot,
            hang,
            20.0,
            "receding",
            safety=SafetyConfig(watchdog_s=0.3),
            max_seconds=2.5,
            stop_on_success=False,
        )
    assert out.loop["overruns"] == 0
    assert out.safety["interventions"]["watchdog"] == 1
    assert out.runner["starved_ticks"] >= 10
    # while starved, the robot got the last safe command again and again
    starved = [i for i, e in enumerate(runner.trace) if e.chunk is None]
    held = np.stack([sent[i] for i in starved])
    assert np.allclose(held, held[0])
    assert any(e["kind"] == "watchdog" for e in filt.events)


def test_the_emergency_stop_latches_and_holds(reach_run: Path) -> None:
    policy, env = load(reach_run)
    with make_sim_robot(env, [], clock="lockstep") as robot:
        holds = []
        hold = robot.hold
        robot.hold = lambda: (holds.append(1), hold())[1]
        ticks = iter(range(10_000))
        (out,), _, filt = deploy(
            robot,
            policy,
            10.0,
            "blend",
            inference="inline",
            stop=lambda: "estop" if next(ticks) == 8 else None,
            stop_on_success=False,
        )
    assert out.ended == "estop" and filt.estopped and holds
    assert out.ticks == 8 and out.safety["interventions"]["estop"] == 1


def test_blending_makes_chunk_boundaries_smoother(reach_run: Path) -> None:
    policy, env = load(reach_run)
    seeds = range(EVAL_SEED, EVAL_SEED + 8)
    jumps: dict[str, list[float]] = {"receding": [], "blend": []}
    with make_sim_robot(env, [], clock="lockstep") as robot:
        for mode in jumps:
            for seed in seeds:
                (out,), runner, _ = deploy(
                    robot,
                    policy,
                    10.0,
                    mode,
                    inference="inline",
                    seeds=range(seed, seed + 1),
                    max_seconds=4.0,
                    stop_on_success=False,
                )
                jumps[mode] += boundary_jumps(out, runner.trace).tolist()
    assert len(jumps["receding"]) >= 4 and len(jumps["blend"]) >= 4
    # the jump between consecutive commands at the ticks where a new chunk takes over; the
    # commands also move between ticks by themselves, which blending leaves alone
    assert np.mean(jumps["blend"]) < 0.9 * np.mean(jumps["receding"]), jumps
    assert np.max(jumps["blend"]) < 0.9 * np.max(jumps["receding"]), jumps


@pytest.mark.parametrize("process", [True, False], ids=["own-process", "in-loop"])
def test_real_time_success_is_within_the_lock_step_interval(
    reach_run: Path, tmp_path, process: bool
) -> None:
    """In real time, with the simulated arm in its own process (deploy's default) or stepped
    inside the loop's observe()."""
    checkpoint = find_checkpoint(reach_run, "last")
    policy, env = load(reach_run)
    lock = evaluate(checkpoint, env, episodes=20, videos=0, out_dir=tmp_path / "eval", mode="blend")
    assert lock.mode == "blend"
    lo, hi = lock.ci95
    with make_sim_robot(env, [], clock="realtime", process=process) as robot:
        assert (type(robot).__name__ == "SimProcessRobot") == process
        outcomes, _, _ = deploy(
            robot, policy, 10.0, "blend", seeds=range(EVAL_SEED, EVAL_SEED + 10)
        )
    wins = sum(bool(o.success) for o in outcomes)
    assert lo <= wins / 10 <= hi, (wins, lock.successes, lock.ci95)
    assert sum(o.loop["overruns"] for o in outcomes) == 0
    # and the other way round: the lock-step rate is inside the real-time run's own interval
    rlo, rhi = wilson_interval(wins, 10)
    assert rlo <= lock.success_rate <= rhi


def test_robolearn_deploy_records_evaluation_episodes(reach_run: Path, tmp_path: Path) -> None:
    out, store = tmp_path / "deploy", tmp_path / "deployed.zarr"
    args = [
        "deploy",
        f"checkpoint={reach_run}",
        "episodes=2",
        "clock=lockstep",
        "runner.mode=ensemble",
        "runner.inference=inline",
        f"record={store}",
        f"out={out}",
        "keys=off",
    ]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    lines = [json.loads(x) for x in (out / "deploy_log.jsonl").read_text().splitlines()]
    assert [x["episode"] for x in lines] == [0, 1]
    assert report["summary"]["episodes"] == 2 and report["runner"]["mode"] == "ensemble"
    # figures are per episode, and the summary adds them up
    per_episode = [e["safety"]["interventions"] for e in report["episodes"]]
    for kind, total in report["summary"]["interventions"].items():
        assert total == sum(e.get(kind, 0) for e in per_episode)
    assert report["summary"]["ticks"] == sum(e["ticks"] for e in report["episodes"])
    with EpisodeStore.open(store, "r") as s:
        assert s.num_episodes == 2
        info = s.episode(1)
        assert info.extra["deploy"]["runner"]["mode"] == "ensemble"
        assert "inference_ms" in info.extra["deploy"]["runner"]
        assert s.user_attrs["recording"]["task"]["name"] == "reach"
        assert info.success == report["episodes"][1]["success"]
    # appending with the same command keeps what is there (this time on float16 weights)
    assert (
        main([*args[:-2], f"out={out}2", "keys=off", "episodes=1", "inference_dtype=float16"]) == 0
    )
    with EpisodeStore.open(store, "r") as s:
        assert s.num_episodes == 3


def test_robolearn_deploy_runs_the_simulated_arm_in_its_own_process(
    reach_run: Path, tmp_path: Path
) -> None:
    """The default real-time deployment: the arm in a process of its own, the loop on time."""
    out = tmp_path / "deploy"
    args = ["deploy", f"checkpoint={reach_run}", "episodes=2", f"out={out}", "keys=off"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["clock"] == "realtime" and report["sim_process"] is True
    assert report["summary"]["overruns"] == 0, report["summary"]
    assert report["summary"]["successes"] >= 1, report["episodes"]
    assert main([*args[:-2], f"out={out}2", "keys=off", "sim_process=false"]) == 0
    inline = json.loads((tmp_path / "deploy2" / "report.json").read_text())
    assert inline["sim_process"] is False


def test_deploy_refuses_bad_settings_with_a_clear_message(reach_run: Path, capsys) -> None:
    assert main(["deploy", f"checkpoint={reach_run}", "runner.mode=fast", "keys=off"]) == 2
    assert "runner.mode='fast'" in capsys.readouterr().err
    assert main(["deploy", f"checkpoint={reach_run}", "safety.max_sped=1"]) == 2
    assert "max_sped" in capsys.readouterr().err
    assert main(["deploy", f"checkpoint={reach_run}", "safety.workspace=[[0,0,0],[1,1]]"]) == 2
    assert "workspace" in capsys.readouterr().err
    assert main(["deploy", f"checkpoint={reach_run}", "inference_dtype=int8"]) == 2
    assert "inference_dtype='int8'" in capsys.readouterr().err
    assert main(["deploy", f"checkpoint={reach_run}", "camera_fps=0"]) == 2
    assert "camera_fps must be positive" in capsys.readouterr().err


def test_the_filter_rejects_configs_that_do_not_fit_the_robot(reach_run: Path) -> None:
    _, env = load(reach_run)
    with make_sim_robot(env, [], clock="lockstep") as robot:
        with pytest.raises(SafetyError, match="max_speed has 3 values"):
            SafetyFilter(robot.spec, KEY, 10, SafetyConfig(max_speed=[1, 1, 1]))
        with pytest.raises(SafetyError, match="workspace bounds end-effector"):
            SafetyFilter(robot.spec, KEY, 10, SafetyConfig(workspace=[[0, 0, 0], [1, 1, 1]]))
    policy, _ = load(reach_run)
    with pytest.raises(RunnerError, match="n_action_steps"):
        PolicyRunner(policy, 10, RunnerConfig(n_action_steps=999))


def test_end_effector_steps_and_the_workspace_box(reach_run: Path) -> None:
    _, env = load(reach_run)
    box = [[0.3, -0.2, 0.05], [0.6, 0.2, 0.4]]
    cfg = SafetyConfig(workspace=box, max_ee_speed=0.2, max_rot_speed=1.0)
    with make_sim_robot(env, [], clock="lockstep") as robot:
        filt = SafetyFilter(robot.spec, "action.ee", 10.0, cfg, clock=robot.clock)
        obs = robot.observe()
        filt.start(obs)
        assert filt(None, obs) is None  # nothing known to hold yet: nothing is sent
        for _ in range(40):  # push up and away, with a spin
            sent = filt({"action.ee": [0.05, 0.0, 0.05, 0.0, 0.0, 0.5, 1.0]}, obs)
            delta = sent["action.ee"]
            assert np.abs(delta[:3]).max() <= 0.02 + 1e-6  # 0.2 m/s at 10 Hz
            assert np.linalg.norm(delta[3:6]) <= 0.1 + 1e-6  # 1 rad/s
            robot.act(sent)
            robot.clock.sleep_until(robot.clock.now() + 0.1)
            obs = robot.observe()
        pos = np.asarray(obs["ee_pose"])[:3]
    assert (pos <= np.array(box[1]) + 0.02).all(), pos
    assert filt.counts["workspace"] > 0 and filt.counts["rate"] > 0


# ---------------------------------------------------------------- inference in a worker process
def test_the_worker_process_predicts_what_the_policy_predicts_and_the_loop_keeps_time(
    reach_run: Path,
) -> None:
    policy, env = load(reach_run)
    rate = 10.0
    with make_sim_robot(env, [], clock="realtime") as robot:
        runner = PolicyRunner(
            policy, rate, RunnerConfig(mode="blend", inference="process"), clock=robot.clock
        )
        source = SafeSource(runner, SafetyFilter(robot.spec, KEY, rate, clock=robot.clock))
        with connected(source):
            proc = runner._process
            assert proc is not None and proc.alive and proc.pid != os.getpid()
            assert proc._dir is None  # the saved copy is gone once the worker loaded it
            # the worker runs at a lower priority than this process
            assert runner.worker_nice == min(
                19, os.getpriority(os.PRIO_PROCESS, 0) + RunnerConfig().inference_nice
            )
            out = run_episode(
                robot,
                source,
                rate,
                episode=0,
                seed=EVAL_SEED,
                max_seconds=4.0,
                stop_on_success=False,
            )
            # the same window gives the same chunk in the worker as here, to the bit
            window = runner._window()
            np.testing.assert_array_equal(runner._predict_remote(window), runner._predict(window))
        assert not proc.alive  # disconnect stopped it
    assert out.ticks >= 38 and out.loop["overruns"] == 0, out.loop
    assert out.runner["inference"] == "process"
    assert runner.stats.chunks >= 4 and out.runner["starved_ticks"] == 0
    sent = [e for e in runner.trace if e.due is not None]
    assert (np.diff([e.due for e in sent]) > 0).all(), "actions went out of time order"


def test_a_dead_worker_stops_the_episode_with_its_exit_code(reach_run: Path) -> None:
    policy, env = load(reach_run)
    with make_sim_robot(env, [], clock="lockstep") as robot:
        runner = PolicyRunner(
            policy, 10.0, RunnerConfig(mode="receding", inference="process"), clock=robot.clock
        )
        runner.connect()
        try:
            obs = robot.observe()
            runner.prime(obs)
            assert runner.read(obs) is not None
            assert runner._process is not None and runner._process.pid is not None
            os.kill(runner._process.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            error = None
            while error is None and time.monotonic() < deadline:
                robot.clock.sleep_until(robot.clock.now() + 0.1)
                try:
                    runner.read(robot.observe())
                except RunnerError as e:
                    error = e
                time.sleep(0.05)
            assert error is not None, "the runner went on without its worker"
            assert "inference process died (exit code -9)" in str(error)
        finally:
            runner.disconnect()


def test_only_a_saved_policy_can_run_in_a_worker_process(reach_run: Path) -> None:
    policy, _ = load(reach_run)
    runner = PolicyRunner(Wrapped(policy), 10.0, RunnerConfig(inference="process"))
    with pytest.raises(RunnerError, match=r"needs a robolearn Policy.*inference=thread"):
        runner.connect()
    with pytest.raises(RunnerError, match="choose thread, process or inline"):
        PolicyRunner(policy, 10.0, RunnerConfig(inference="fork"))
