"""Evaluate a policy in simulation: lock-step rollouts, success rate with a 95% confidence
interval, episode lengths, videos and a JSON report (`robolearn eval`, and the rollouts that
`robolearn train` runs at its checkpoints).

Episodes run in lock-step (the physics advances only when the loop sleeps), so the policy's
inference time does not count against the robot: these figures measure what the policy does,
not how fast the machine is. The deployment runtime (real time, asynchronous inference) is
measured separately.

Worker processes each load the policy from its saved directory and build their own simulated
robot from the resolved robot config, so evaluation uses every core without sharing PyBullet
or torch state across processes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.errors import RobolearnError, SpecError

# Where evaluation seeds start: far from the seeds demonstrations are recorded with (0, 1, …),
# so that a policy is never scored on the exact scenes it was trained on.
EVAL_SEED = 100_000
VIDEO_CAMERA = {  # rendered for the videos only; the policy never sees it
    "name": "video",
    "width": 480,
    "height": 360,
    "fov": 50.0,
    "eye": [1.15, 0.55, 0.85],
    "target": [0.35, 0.0, 0.15],
}


class EvalError(RobolearnError):
    """An evaluation that cannot run as configured."""


# ---------------------------------------------------------------------- statistics
def mean_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """A 95 % interval of the mean of scores in [0, 1] (normal approximation, clipped to the
    range): push_t's mean coverage varies from run to run as a success rate does."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (0.0, 1.0)
    half = z * float(x.std(ddof=1)) / np.sqrt(x.size) if x.size > 1 else 1.0
    m = float(x.mean())
    return (max(0.0, float(m - half)), min(1.0, float(m + half)))


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95% by default); (0, 1) for n = 0.

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0 or n successes.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------- the executor
class ChunkExecutor:
    """Runs a policy in lock-step: by default synchronously with a receding horizon (predict a
    chunk, execute its `n_action_steps` actions from the current step, then predict again).

    This is the deployment runtime (`robolearn.runner.PolicyRunner`) with inline inference and
    time counted in ticks, so lock-step evaluation and `robolearn deploy` share one
    implementation; `mode` is any of the runner's (sync, receding, blend, ensemble, auto). The
    observation history repeats the first frame of an episode until `n_obs_steps` frames
    exist, as the training windows pad episode starts. A policy that predicts several action
    representations sends only `action_key` to the robot.
    """

    def __init__(
        self,
        policy: Any,
        action_key: str | None = None,
        mode: str = "sync",
        n_action_steps: int | None = None,
    ) -> None:
        from robolearn.runner import PolicyRunner, RunnerConfig, RunnerError

        try:
            config = RunnerConfig(mode=mode, inference="inline", n_action_steps=n_action_steps)
            self.runner = PolicyRunner(
                policy,
                1.0,  # time is counted in ticks
                config,
                clock=_TickClock(),
                action_key=action_key,
            )
        except RunnerError as exc:  # eval's key is n_action_steps=, deploy's runner.…
            raise EvalError(str(exc).replace("runner.n_action_steps", "n_action_steps")) from None
        self.policy = policy
        self.action_key = self.runner.action_key
        self._tick = 0

    @property
    def inference_s(self) -> list[float]:
        return self.runner.stats.inference_s

    @inference_s.setter
    def inference_s(self, value: list[float]) -> None:
        self.runner.stats.inference_s = value

    def reset(self) -> None:
        self.runner.reset()
        self._tick = 0

    def __call__(self, obs: Any) -> dict[str, np.ndarray]:
        from robolearn.hal import Observation

        values = {k: np.asarray(obs[k]) for k in self.policy.obs_keys}
        t = float(self._tick)
        self._tick += 1
        self.runner.begin_tick(t)
        action = self.runner.read(Observation(values, dict.fromkeys(values, t)))
        if action is None:
            raise EvalError(
                "the policy produced NaN or infinite actions; its weights or inputs are broken"
            )
        return action


def auto_mode(checkpoint: str | os.PathLike[str]) -> str:
    """The mode `auto` stands for with the policy saved in `checkpoint`."""
    from robolearn.policies import Policy
    from robolearn.policies.base import preferred_mode

    try:
        config = Policy.load(checkpoint).config
    except (FileNotFoundError, SpecError) as exc:
        raise EvalError(f"cannot evaluate {checkpoint}: {exc}") from None
    return preferred_mode(config)


class _TickClock:
    """A clock that never moves: ChunkExecutor gives the runner each tick's time itself."""

    def now(self) -> float:
        return 0.0

    def sleep_until(self, t: float) -> None:
        return None


# ---------------------------------------------------------------------- one episode
@dataclasses.dataclass
class EpisodeOutcome:
    seed: int
    success: bool
    score: float  # the best score during the episode (push_t: area coverage)
    steps: int
    seconds: float
    inference_ms: list[float]
    video: str | None = None
    error: str | None = None


def run_episode(
    robot: Any,
    executor: ChunkExecutor,
    seed: int,
    *,
    max_steps: int | None = None,
    video: Any | None = None,
    video_path: Path | None = None,
) -> EpisodeOutcome:
    """One lock-step rollout from `seed`: stops at the first success or after `max_steps`.

    `seed` sets the scene and the policy's sampling noise (diffusion's and flow's initial
    noise, ACT's latent when sampled): an episode's outcome depends on the checkpoint, the seed
    and the mode only, not on which worker ran it or what ran in that process before."""
    import torch

    task = robot.task
    t0 = time.perf_counter()
    obs = robot.reset(seed)
    executor.reset()
    torch.manual_seed(seed)
    executor.inference_s = []
    limit = int(max_steps or task.max_steps)
    period = 1.0 / task.config.control_hz
    clock = robot.clock
    frames: list[np.ndarray] = []
    score, success, steps = float(task.score()), bool(task.success()), 0
    while not success and steps < limit:
        if video is not None:
            frames.append(robot.render(video))
        robot.act(executor(obs))
        clock.sleep_until(clock.now() + period)
        obs = robot.observe()
        steps += 1
        success = bool(task.success())
        score = max(score, float(task.score()))
    written = None
    if video is not None and video_path is not None:
        frames.append(robot.render(video))
        from robolearn.data.video import write_mp4

        label = f"seed {seed} {'success' if success else 'failure'}"
        written = str(write_mp4(frames, video_path, fps=task.config.control_hz, title=label))
    return EpisodeOutcome(
        seed=seed,
        success=success,
        score=score,
        steps=steps,
        seconds=time.perf_counter() - t0,
        inference_ms=[s * 1e3 for s in executor.inference_s],
        video=written,
    )


# ---------------------------------------------------------------------- the environment
def make_sim_robot(
    robot_cfg: Mapping[str, Any],
    image_keys: Sequence[str],
    clock: str = "lockstep",
    *,
    process: bool = False,
    camera_fps: float = 30.0,
) -> Any:
    """The simulated robot of a resolved robot config (with its `task` scene), in lock-step
    (or `clock="realtime"`), with only the cameras the policy reads (rendering is most of a
    tick's cost). `process=True` (real time only) runs it in a process of its own that keeps
    its own time, as a real arm does (`sim.process.SimProcessRobot`; cameras without a frame
    rate run at `camera_fps`)."""
    if process and clock != "realtime":
        raise EvalError(
            "a simulated robot runs in a process of its own only in real time "
            "(clock=realtime); in lock-step it has to wait for the loop"
        )
    from omegaconf import OmegaConf

    from robolearn.config import build

    node = OmegaConf.create(dict(robot_cfg))
    if "_target_" not in node:
        raise EvalError("the robot config has no _target_; name one with robot=sim_panda")
    if not str(node["_target_"]).startswith("sim."):
        raise EvalError(
            f"evaluation runs in simulation, but the robot is {node['_target_']}; "
            "choose a simulated robot (robot=sim_panda or robot=sim_so101)"
        )
    node["clock"] = clock
    cams = list(node.get("cameras") or [])
    node["cameras"] = [c for c in cams if c.get("name") in set(image_keys)]
    missing = set(image_keys) - {c.get("name") for c in node["cameras"]}
    if missing:
        raise EvalError(
            f"the policy reads cameras {sorted(missing)} that this robot config does not have; "
            "evaluate with the robot config the data was recorded with"
        )
    robot = build(node, "robot")
    if getattr(robot, "task", None) is None:
        raise EvalError("the robot config has no task scene; name one with task=pick_place")
    if process:
        from sim.process import SimProcessRobot

        return SimProcessRobot(robot, camera_fps=camera_fps)
    return robot


@dataclasses.dataclass
class EvalJob:
    checkpoint: str  # a saved policy directory
    robot: dict[str, Any]  # resolved robot config, with its task scene
    seeds: list[int]
    video_seeds: list[int]
    out_dir: str
    device: str = "cpu"
    action_key: str | None = None
    max_steps: int | None = None
    threads: int = 1
    mode: str = "sync"
    n_action_steps: int | None = None
    video_size: tuple[int, int] = (VIDEO_CAMERA["width"], VIDEO_CAMERA["height"])


def _worker(job: EvalJob, results: Any) -> None:
    """Run `job` in this process, putting each EpisodeOutcome (or an error) on `results`."""
    import torch

    torch.set_num_threads(job.threads)
    try:
        from robolearn.policies import Policy
        from sim.robot import CameraConfig

        policy = Policy.load(job.checkpoint, device=job.device)
        executor = ChunkExecutor(policy, job.action_key, job.mode, job.n_action_steps)
        width, height = job.video_size
        video = CameraConfig(**{**VIDEO_CAMERA, "width": width, "height": height})
        with make_sim_robot(job.robot, policy.image_keys) as robot:
            for seed in job.seeds:
                with_video = seed in job.video_seeds
                outcome = run_episode(
                    robot,
                    executor,
                    seed,
                    max_steps=job.max_steps,
                    video=video if with_video else None,
                    video_path=Path(job.out_dir) / f"seed{seed}.mp4" if with_video else None,
                )
                results.put(("episode", outcome))
    except BaseException as exc:  # reported to the parent, which raises
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        results.put(("done", None))


def run_jobs(
    jobs: Sequence[EvalJob],
    *,
    progress: Callable[[EpisodeOutcome], None] | None = None,
    in_process: bool = False,
) -> list[EpisodeOutcome]:
    """Run evaluation jobs, each in its own worker process (or here, with `in_process`)."""
    outcomes: list[EpisodeOutcome] = []
    errors: list[str] = []
    if in_process:
        q: Any = queue.Queue()
        for job in jobs:
            _worker(job, q)
            while not q.empty():
                _collect(q.get(), outcomes, errors, progress)
    else:
        ctx = mp.get_context("spawn")  # torch and PyBullet state is not fork-safe
        q = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(job, q), daemon=True) for job in jobs]
        for proc in procs:
            proc.start()
        done = 0
        try:
            while done < len(procs):
                try:
                    item = q.get(timeout=1.0)
                except queue.Empty:
                    dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                    if dead and q.empty():
                        raise EvalError(
                            f"an evaluation worker died (exit code {dead[0].exitcode})"
                        ) from None
                    continue
                if item[0] == "done":
                    done += 1
                else:
                    _collect(item, outcomes, errors, progress)
        finally:
            for proc in procs:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
    if errors:
        raise EvalError(f"evaluation failed in a worker: {errors[0]}")
    return sorted(outcomes, key=lambda o: o.seed)


def _collect(
    item: tuple[str, Any],
    outcomes: list[EpisodeOutcome],
    errors: list[str],
    progress: Callable[[EpisodeOutcome], None] | None,
) -> None:
    kind, value = item
    if kind == "episode":
        outcomes.append(value)
        if progress is not None:
            progress(value)
    elif kind == "error":
        errors.append(value)


def split_seeds(seeds: Sequence[int], workers: int) -> list[list[int]]:
    """Deal seeds to workers round-robin, so slow and fast episodes spread evenly."""
    workers = max(1, min(workers, len(seeds)))
    return [list(seeds[i::workers]) for i in range(workers)]


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


# ---------------------------------------------------------------------- evaluate
@dataclasses.dataclass
class EvalReport:
    checkpoint: str
    task: str
    robot: str
    episodes: int
    successes: int
    success_rate: float
    ci95: tuple[float, float]
    mean_score: float
    mean_steps: float
    mean_steps_success: float | None
    inference_ms_p50: float
    inference_ms_p99: float
    wall_s: float
    workers: int
    seeds: list[int]
    videos: list[str]
    per_episode: list[dict[str, Any]]
    mode: str = "sync"  # how chunks were executed (robolearn.runner)
    score_ci95: tuple[float, float] | None = None  # of the mean score (normal approximation)
    n_action_steps: int | None = None  # actions executed per chunk (None: the policy's own)

    def summary(self) -> str:
        lo, hi = self.ci95
        score = f"mean score {self.mean_score:.2f}"
        if self.score_ci95 is not None and self.score_ci95[0] != self.score_ci95[1]:
            score += f" ({self.score_ci95[0]:.2f}–{self.score_ci95[1]:.2f})"
        return (
            f"{self.task}: {self.successes}/{self.episodes} = {self.success_rate:.0%} success "
            f"(95% CI {lo:.0%}–{hi:.0%}), {score}, mean length {self.mean_steps:.0f} steps"
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        os.replace(tmp, path)
        return path


def evaluate(
    checkpoint: str | os.PathLike[str],
    robot_cfg: Mapping[str, Any],
    *,
    episodes: int = 50,
    seed: int = EVAL_SEED,
    workers: int | None = None,
    videos: int = 3,
    out_dir: str | os.PathLike[str],
    device: str = "cpu",
    action_key: str | None = None,
    max_steps: int | None = None,
    progress: Callable[[EpisodeOutcome], None] | None = None,
    mode: str = "auto",
    video_size: Sequence[int] = (VIDEO_CAMERA["width"], VIDEO_CAMERA["height"]),
    n_action_steps: int | None = None,
) -> EvalReport:
    """Roll out the policy saved in `checkpoint` for `episodes` seeds from `seed` on, executing
    its chunks in `mode` (the deployment runtime's modes, robolearn.runner; `auto`, the
    default, is the policy's own, as `robolearn deploy` runs it), `n_action_steps` actions of
    each (None: the policy's own); the videos are `video_size` = (width, height) pixels."""
    from robolearn.runner import MODES

    if mode not in MODES:
        raise EvalError(f"mode={mode!r}: choose one of {', '.join(MODES)}")
    size = tuple(video_size)
    if len(size) != 2 or not all(isinstance(v, int) and 16 <= v <= 4096 for v in size):
        raise EvalError(
            f"video_size={list(size)}: give [width, height] in pixels, each 16…4096 "
            "(e.g. video_size=[480,360])"
        )
    if episodes < 1:
        raise EvalError(f"episodes must be at least 1, got {episodes}")
    if mode == "auto":
        mode = auto_mode(checkpoint)
    seeds = list(range(seed, seed + episodes))
    workers = min(workers or default_workers(), episodes)
    if device != "cpu":
        workers = 1  # one process owns the accelerator
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        EvalJob(
            checkpoint=str(checkpoint),
            robot=dict(robot_cfg),
            seeds=part,
            video_seeds=seeds[:videos],
            out_dir=str(out / "videos"),
            device=device,
            action_key=action_key,
            max_steps=max_steps,
            threads=max(1, default_workers() // workers),
            mode=mode,
            n_action_steps=n_action_steps,
            video_size=(size[0], size[1]),
        )
        for part in split_seeds(seeds, workers)
    ]
    t0 = time.perf_counter()
    outcomes = run_jobs(jobs, progress=progress, in_process=workers == 1)
    wall = time.perf_counter() - t0
    n = len(outcomes)
    wins = sum(o.success for o in outcomes)
    times = [t for o in outcomes for t in o.inference_ms]
    steps_ok = [o.steps for o in outcomes if o.success]
    task = robot_cfg.get("task", {}) or {}
    report = EvalReport(
        checkpoint=str(checkpoint),
        task=str(task.get("name", "?")),
        robot=str(robot_cfg.get("arm", robot_cfg.get("_target_", "?"))),
        episodes=n,
        successes=wins,
        success_rate=wins / n,
        ci95=wilson_interval(wins, n),
        mean_score=float(np.mean([o.score for o in outcomes])),
        mean_steps=float(np.mean([o.steps for o in outcomes])),
        mean_steps_success=float(np.mean(steps_ok)) if steps_ok else None,
        inference_ms_p50=float(np.percentile(times, 50)) if times else float("nan"),
        inference_ms_p99=float(np.percentile(times, 99)) if times else float("nan"),
        wall_s=wall,
        workers=len(jobs),
        seeds=seeds,
        videos=[o.video for o in outcomes if o.video],
        per_episode=[
            {k: v for k, v in dataclasses.asdict(o).items() if k != "inference_ms"}
            for o in outcomes
        ],
        mode=mode,
        score_ci95=mean_interval([o.score for o in outcomes]),
        n_action_steps=n_action_steps,
    )
    report.write(out / "report.json")
    return report
