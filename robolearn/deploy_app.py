"""`robolearn deploy`: a trained policy on a robot at control rate (robolearn/deploy.py).

    robolearn deploy checkpoint=RUN_DIR                       # the run's sim robot and task, real time
    robolearn deploy checkpoint=RUN_DIR robot=sim_panda task=pick_place episodes=20
    robolearn deploy checkpoint=RUN_DIR runner.mode=ensemble record=datasets/deploy.zarr

Defaults: configs/deploy.yaml. Prints one line per episode, a summary (success with its 95%
interval, inference latency, action age, skipped actions, safety interventions, deadline
misses), one JSON line per episode to deploy_log.jsonl as it ends, and all of it to report.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.live import Live
from rich.text import Text

from robolearn.config import ConfigError, build, choices, command_flags, compose, print_config
from robolearn.runner import RunnerConfig
from robolearn.safety import SafetyConfig

console = Console(stderr=True)
out_console = Console(width=None if sys.stdout.isatty() else 120)

HELP = """usage: robolearn deploy checkpoint=RUN_DIR [robot=NAME] [task=NAME] [key=value ...] [--cfg]

Runs a trained policy on a robot at control rate: asynchronous inference, chunk scheduling
(runner.mode), latency compensation and the safety filter (on by default). Simulated robots
run in real time unless clock=lockstep. Defaults: configs/deploy.yaml.

groups:
  robot=   {robots}   (default: the robot the run trained with)
  task=    {tasks}   (default: the run's task)

keys:
  checkpoint=RUN_DIR|POLICY_DIR  episodes=10  seed=100000  rate_hz=HZ  clock=realtime|lockstep
  sim_process=true|false  (real-time sim in its own process, as a real arm)  camera_fps=30
  episode_time_s=S  record=STORE  out=DIR  device=cpu|cuda  threads=N  keys=auto|on|off
  inference_dtype=float32|float16  (CPU inference weights; null: the checkpoint's)
  runner.mode=auto|sync|receding|blend|ensemble  runner.n_action_steps=N  runner.blend_steps=N
  runner.robot_latency_s=S  runner.camera_latency_s=S
  safety.enabled=true|false  safety.max_speed_frac=F  safety.workspace=[[x,y,z],[x,y,z]]
  safety.watchdog_s=S

while it runs: space = emergency stop (hold, end the run), n = next episode, q = quit
"""


@dataclasses.dataclass
class DeploySettings:
    checkpoint: str = "???"
    episodes: int = 10
    seed: int = 100_000
    rate_hz: float | None = None
    clock: str = "realtime"
    sim_process: bool = True
    camera_fps: float = 30.0
    episode_time_s: float | None = None
    stop_on_success: bool = True
    record: str | None = None
    out: str | None = None
    device: str = "cpu"
    threads: int | None = None
    inference_dtype: str | None = None
    action_key: str | None = None
    overrun: str = "skip"
    keys: str = "auto"
    status: str = "auto"
    runner: RunnerConfig = dataclasses.field(default_factory=RunnerConfig)
    safety: SafetyConfig = dataclasses.field(default_factory=SafetyConfig)

    def check(self) -> None:
        if self.checkpoint in ("???", ""):
            raise ConfigError("name what to deploy: robolearn deploy checkpoint=RUN_DIR")
        if self.episodes < 1:
            raise ConfigError(f"episodes must be at least 1, got {self.episodes}")
        if self.clock not in ("realtime", "lockstep"):
            raise ConfigError(f"clock={self.clock!r}: choose realtime or lockstep")
        if not self.camera_fps > 0:
            raise ConfigError(f"camera_fps must be positive, got {self.camera_fps}")
        if self.rate_hz is not None and not self.rate_hz > 0:
            raise ConfigError(f"rate_hz must be positive, got {self.rate_hz}")
        if self.episode_time_s is not None and not self.episode_time_s > 0:
            raise ConfigError(f"episode_time_s must be positive, got {self.episode_time_s}")
        for key in ("keys", "status"):
            if getattr(self, key) not in ("auto", "on", "off"):
                raise ConfigError(f"{key}={getattr(self, key)!r}: choose auto, on or off")
        if self.inference_dtype not in (None, "float32", "float16", "bfloat16"):
            raise ConfigError(
                f"inference_dtype={self.inference_dtype!r}: choose float32, float16 or bfloat16 "
                "(or leave it null: the checkpoint's)"
            )
        self.runner.check()
        self.safety.check()


def main(argv: Sequence[str]) -> int:
    args, wants_help, show = command_flags(argv)
    if wants_help:
        print(HELP.format(robots=", ".join(choices("robot")), tasks=", ".join(choices("task"))))
        return 0
    cfg = compose("deploy", args)
    return print_config(cfg) if show else run_deploy(cfg)


def settings(cfg: DictConfig) -> DeploySettings:
    from omegaconf.errors import OmegaConfBaseException

    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("robot", None)
    plain.pop("task", None)
    for key in ("keys", "status"):  # YAML reads a bare on/off as a boolean
        if isinstance(plain.get(key), bool):
            plain[key] = "on" if plain[key] else "off"
    try:
        s: DeploySettings = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(DeploySettings), plain)
        )  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        where = f" ({key})" if key else ""
        raise ConfigError(f"deploy{where}: {str(exc).splitlines()[0]}") from None
    s.check()
    return s


def make_robot(cfg: DictConfig, s: DeploySettings, checkpoint: Path, image_keys: list[str]) -> Any:
    """The robot to drive: a real one from robot=… as configured, or the simulated robot and
    task of the overrides (else the run's), with the requested clock."""
    from robolearn.evaluate import make_sim_robot
    from robolearn.train_app import eval_env

    robot_node = cfg.get("robot")
    if robot_node is not None and not str(robot_node.get("_target_", "")).startswith("sim."):
        return build(robot_node, "robot"), None
    env, _ = eval_env(cfg, checkpoint)
    process = s.sim_process and s.clock == "realtime"
    robot = make_sim_robot(env, image_keys, clock=s.clock, process=process, camera_fps=s.camera_fps)
    return robot, env


def run_deploy(cfg: DictConfig) -> int:
    import torch

    from robolearn.deploy import (
        SafeSource,
        connected,
        policy_fits_robot,
        run_episode,
        summarize,
    )
    from robolearn.evaluate import EVAL_SEED
    from robolearn.policies import Policy
    from robolearn.record import make_writer, open_store
    from robolearn.runner import PolicyRunner
    from robolearn.safety import SafetyFilter
    from robolearn.train import find_checkpoint

    s = settings(cfg)
    checkpoint = find_checkpoint(s.checkpoint)
    torch.set_num_threads(s.threads or max(1, (os.cpu_count() or 2) - 1))
    policy = Policy.load(checkpoint, device=s.device)
    if s.inference_dtype is not None:  # CPU inference weights: the checkpoint's unless named
        policy.config.inference_dtype = s.inference_dtype
        policy.config.validate()
    robot, env = make_robot(cfg, s, checkpoint, list(policy.image_keys))
    task_cfg = (env or {}).get("task") or {}
    task_name = str(cfg.task.name) if cfg.get("task") else task_cfg.get("name", "")
    scene_cfg = (task_cfg.get("config") or {}) if isinstance(task_cfg, dict) else {}
    rate = s.rate_hz or scene_cfg.get("control_hz")
    if not rate:
        raise ConfigError("say how fast to run: rate_hz=HZ (the robot has no task rate)")
    rate = float(rate)
    max_s = s.episode_time_s or scene_cfg.get("max_seconds") or 60.0
    run_dir = next(
        (p for p in (checkpoint, *checkpoint.parents[:3]) if (p / "config.yaml").is_file()),
        checkpoint,
    )
    out = (
        Path(s.out)
        if s.out
        else run_dir / "deploy" / (f"{task_name or 'robot'}_{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    )
    out.mkdir(parents=True, exist_ok=True)
    outcomes = []
    with robot:
        runner = PolicyRunner(policy, rate, s.runner, clock=robot.clock, action_key=s.action_key)
        policy_fits_robot(policy, robot, runner.action_key)
        safety = SafetyFilter(robot.spec, runner.action_key, rate, s.safety, clock=robot.clock)
        source = SafeSource(runner, safety)
        clock = getattr(robot, "clock_mode", "realtime")
        console.print(
            f"[bold]deploying[/] {checkpoint} on {type(robot).__name__}"
            + (
                f" ({task_name}, {clock} clock"
                + (", own process" if type(robot).__name__ == "SimProcessRobot" else "")
                + ")"
                if task_name
                else ""
            )
            + f" at {rate:g} Hz · runner {runner.mode} ({s.runner.inference}, "
            f"{runner.n_exec} actions per chunk) · safety "
            + ("on" if s.safety.enabled else "[red]off[/] (NaN is still refused)")
        )
        store = writer = None
        with contextlib.ExitStack() as stack:
            if s.record:
                attrs = {"deploy": {"checkpoint": str(checkpoint), "runner": runner.mode}}
                if env is not None:
                    attrs["recording"] = {
                        "robot": {k: v for k, v in env.items() if k != "task"},
                        "task": env["task"],
                    }
                store = stack.enter_context(
                    open_store(s.record, robot.spec, rate, attrs=attrs, log=console.print)
                )
                writer = stack.enter_context(make_writer(store))
            _reader, stop_keys = stack.enter_context(_keys(s))
            status = stack.enter_context(_status(s))
            stack.enter_context(connected(source))
            quit_all = False
            for ep in range(s.episodes):
                seed = s.seed + ep if env is not None else None
                state = {"why": None}

                def stop(state: dict[str, Any] = state) -> str | None:
                    for key in stop_keys():
                        if key == "space":
                            state["why"] = "estop"
                        elif key == "n" and state["why"] is None:
                            state["why"] = "stopped"
                        elif key == "q" and state["why"] is None:
                            state["why"] = "quit"
                    return state["why"]

                on_tick = _status_tick(status, ep, s.episodes, runner, safety, max_s)
                outcome = run_episode(
                    robot,
                    source,
                    rate,
                    episode=ep,
                    seed=seed,
                    max_seconds=float(max_s),
                    writer=writer,
                    task=str(task_cfg.get("instruction", task_name)) if task_cfg else "",
                    stop=stop,
                    on_tick=on_tick,
                    overrun=s.overrun,
                    stop_on_success=s.stop_on_success and env is not None,
                )
                outcomes.append(outcome)
                _print_episode(outcome)
                # one line per episode as it ends: a crash later keeps the figures so far
                with (out / "deploy_log.jsonl").open("a") as log:
                    log.write(json.dumps(outcome.to_json()) + "\n")
                if outcome.ended in ("estop", "quit"):
                    quit_all = True
                if quit_all:
                    break
    summary = summarize(outcomes)
    report = {
        "checkpoint": str(checkpoint),
        "task": task_name,
        "robot": type(robot).__name__,
        "clock": getattr(robot, "clock_mode", "realtime"),
        "sim_process": type(robot).__name__ == "SimProcessRobot",
        "rate_hz": rate,
        "runner": dataclasses.asdict(s.runner) | {"mode": runner.mode},
        "safety": dataclasses.asdict(s.safety),
        "seed": s.seed if env is not None else None,
        "eval_seed_default": EVAL_SEED,
        "record": s.record,
        "summary": summary,
        "episodes": [o.to_json() for o in outcomes],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _print_summary(summary)
    out_console.print(f"  report: {out / 'report.json'}", highlight=False)
    if s.record:
        out_console.print(f"  episodes recorded in {s.record}", highlight=False)
    if any(o.ended == "estop" for o in outcomes):
        out_console.print(
            "[bold red]emergency stop[/]: the robot was left holding", highlight=False
        )
    return 0


def _ms(value: float | None) -> str:
    """Milliseconds for a person: about 3 significant digits (JSON keeps the full figure)."""
    if value is None:
        return "n/a"
    return f"{value:.{0 if value >= 100 else 1 if value >= 10 else 2}f} ms"


def _print_episode(o: Any) -> None:
    r, sf = o.runner, o.safety
    inter = ", ".join(f"{k} {v}" for k, v in sf["interventions"].items()) or "none"
    ok = {True: "[green]success[/]", False: "[red]failure[/]", None: "done"}[o.success]
    out_console.print(
        f"episode {o.episode}"
        + (f" (seed {o.seed})" if o.seed is not None else "")
        + f": {ok} · ended by {o.ended} after {o.ticks} ticks ({o.seconds:.1f} s) · "
        f"inference p50 {_ms(r['inference_ms']['p50'])} p99 {_ms(r['inference_ms']['p99'])} · "
        f"action age p50 {_ms(r['action_age_ms']['p50'])} · skipped {r['skipped_actions']} · "
        f"deadline misses {o.loop.get('overruns', 0)} · safety: {inter}",
        highlight=False,
    )


def _print_summary(sm: dict[str, Any]) -> None:
    lo, hi = sm["ci95"]
    rate = sm["success_rate"]
    head = (
        f"{sm['successes']}/{sm['episodes']} = {rate:.0%} success (95% CI {lo:.0%}–{hi:.0%})"
        if rate is not None
        else f"{sm['episodes']} episode(s)"
    )
    inter = ", ".join(f"{k} {v}" for k, v in sm["interventions"].items()) or "none"
    out_console.print(f"[bold]{head}[/]", highlight=False)
    out_console.print(
        f"  inference p50 {_ms(sm['inference_ms']['p50_median'])}, "
        f"p99 {_ms(sm['inference_ms']['p99_max'])} · "
        f"action age p50 {_ms(sm['action_age_ms']['p50_median'])} · skipped actions "
        f"{sm['skipped_actions']} · starved ticks {sm['starved_ticks']} · deadline misses "
        f"{sm['overruns']} of {sm['ticks']} ticks · safety interventions: {inter}",
        highlight=False,
    )


@contextlib.contextmanager
def _keys(s: DeploySettings) -> Iterator[tuple[Any, Any]]:
    if s.keys == "off":
        yield None, lambda: []
        return
    from robolearn.terminal import KeyReader

    with KeyReader() as reader:
        if s.keys == "on" and not reader.active:
            raise ConfigError(f"keys=on but {reader.reason}; use keys=auto or keys=off")
        if reader.active:
            console.print("keys: space = emergency stop · n = next episode · q = quit")
        yield reader, reader.keys


@contextlib.contextmanager
def _status(s: DeploySettings) -> Iterator[Any]:
    if s.status == "off" or (s.status == "auto" and not console.is_terminal):
        yield None
        return
    with Live(Text("starting…"), console=console, refresh_per_second=4, transient=True) as live:
        yield live


def _status_tick(live: Any, ep: int, total: int, runner: Any, safety: Any, max_s: float) -> Any:
    if live is None:
        return None
    last = [0.0]
    t0 = [None]

    def tick(t: Any) -> None:
        if t0[0] is None:
            t0[0] = t.start
        if t.start - last[0] < 0.25:
            return
        last[0] = t.start
        inf = runner.stats.inference_s[-20:]
        p50 = sorted(inf)[len(inf) // 2] * 1e3 if inf else float("nan")
        live.update(
            Text(
                f"episode {ep + 1}/{total} · {t.start - t0[0]:5.1f}/{max_s:g} s · inference "
                f"{p50:5.1f} ms · skipped {runner.stats.skipped} · starved "
                f"{runner.stats.starved} · safety {sum(safety.counts.values())}"
            )
        )

    return tick
