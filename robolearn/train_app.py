"""`robolearn train` and `robolearn eval`: compose the config, check it against the structured
schemas, and run the trainer or the evaluation.

robolearn train dataset=datasets/pick_place.zarr policy=diffusion
robolearn train resume=runs/2026-11-25_10-00-00_diffusion_pick_place
robolearn eval checkpoint=runs/2026-11-25_10-00-00_diffusion_pick_place episodes=50
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from robolearn.config import ConfigError, choices, command_flags, compose, print_config

console = Console(stderr=True)
out_console = Console(width=None if sys.stdout.isatty() else 120)

TRAIN_HELP = """usage: robolearn train dataset=PATH [policy=NAME] [train=NAME] [key=value ...] [--cfg]
       robolearn train resume=RUN_DIR [train.steps=N ...]

Trains a policy on an episode store into a run directory (checkpoints, logs, TensorBoard).
Defaults: configs/train.yaml; every setting: robolearn/train.py (TrainSettings).

groups:
  policy=  {policies}
  train=   {trains}
  robot=   {robots}   (rollouts; default: the robot the dataset was recorded with)
  task=    {tasks}   (rollouts; default: the dataset's task)

common keys:
  train.steps=N  train.batch_size=N  train.optim.lr=X  train.checkpoint_every=N
  train.val_every=N  train.rollout.episodes=N  train.device=cpu|cuda  train.amp=bf16|off
  train.num_workers=N  train.cache=all|lowdim  train.compile=true  run_dir=runs/NAME
  policy.horizon=N  policy.n_action_steps=N  'policy.action_keys=[action.joint]'

data parallel (DDP; train.batch_size is per process):
  accelerate launch --multi_gpu --num_processes 4 -m robolearn.train dataset=... policy=...
  torchrun --nproc_per_node 2 -m robolearn.train dataset=... train.device=cpu   (CPU, gloo)
"""

EVAL_HELP = """usage: robolearn eval checkpoint=RUN_DIR [task=NAME] [robot=NAME] [episodes=N] [key=value ...]

Rolls a trained policy out in lock-step simulation: success rate with a 95% confidence
interval, episode lengths, mp4 videos of the first episodes and a JSON report.
Defaults: configs/eval.yaml.

groups:
  robot=   {robots}   (default: the robot the run trained with)
  task=    {tasks}   (default: the run's task)

keys:
  checkpoint=RUN_DIR|POLICY_DIR  episodes=50  seed=100000  workers=N  videos=3  out=DIR
  video_size=[480,360]   (width, height of the videos)
  device=cpu|cuda  action_key=action.joint  max_steps=N
  mode=auto|sync|receding|blend|ensemble   (how chunks are executed, as robolearn deploy does; auto: the policy's own)
  mode=[blend,ensemble]   (the same checkpoint and seeds in each mode, one report each, and a comparison)
  n_action_steps=N   (actions executed per chunk; default: the policy's, as deploy's runner.n_action_steps)
"""


def _usage(text: str) -> str:
    return text.format(
        policies=", ".join(choices("policy")),
        trains=", ".join(choices("train")),
        robots=", ".join(choices("robot")),
        tasks=", ".join(choices("task")),
    )


# ---------------------------------------------------------------------- config checks
def train_settings(node: Any) -> Any:
    """configs/train/*.yaml checked against TrainSettings: a typo or a bad value is an error
    that names the key."""
    from omegaconf.errors import OmegaConfBaseException

    from robolearn.train import TrainSettings

    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainSettings), node)
        settings = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"train: {_first_line(exc)} (every key: robolearn/train.py)") from None
    settings.check()
    return settings


def _first_line(exc: Exception) -> str:
    lines = str(exc).splitlines()
    key = next((x.strip() for x in lines if x.strip().startswith("full_key:")), "")
    return f"{lines[0]} ({key})" if key else lines[0]


def check_policy_config(node: Any) -> dict[str, Any]:
    from robolearn.policies import make_config

    values = OmegaConf.to_container(node, resolve=True)
    if not isinstance(values, dict):
        raise ConfigError("policy: expected a mapping with _target_ (configs/policy/*.yaml)")
    make_config(values)  # unknown keys and bad values are errors naming them
    return values


def recorded_env(dataset: str) -> dict[str, Any]:
    """The robot and task configs `robolearn record` kept in the store (empty when absent)."""
    from robolearn.data.store import EpisodeStore

    try:
        with EpisodeStore.open(dataset) as store:
            return dict(store.user_attrs.get("recording") or {})
    except Exception:  # the trainer reports a bad dataset itself, with the details
        return {}


def resolve_env(
    robot: Mapping[str, Any] | None, task: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The simulated robot config with its task scene, or None when there is no simulated
    robot or no task to roll out in."""
    if not robot or not task:
        return None
    if not str(robot.get("_target_", "")).startswith("sim.") or "scene" not in task:
        return None
    env = {k: v for k, v in robot.items() if k != "task"}
    env["task"] = dict(task["scene"])
    return env


def _container(node: Any) -> dict[str, Any] | None:
    if node is None:
        return None
    value = OmegaConf.to_container(node, resolve=True)
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------------- train
def train_main(argv: Sequence[str]) -> int:
    args, wants_help, show = command_flags(argv)
    if wants_help:
        print(_usage(TRAIN_HELP))
        return 0
    resume = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if resume:
        cfg = _resume_config(resume, [a for a in args if not a.startswith("resume=")])
    else:
        cfg = compose("train", args)
    return print_config(cfg) if show else run_train(cfg, resume=resume)


def _resume_config(run_dir: str, overrides: list[str]) -> DictConfig:
    from robolearn.train import CONFIG_FILE

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"{run_dir} is not a run directory of robolearn train ({path} is missing)"
        )
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    OmegaConf.set_struct(cfg, True)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "/" in key or key.split(".")[0] not in ("train", "run_dir"):
            raise ConfigError(
                f"{item!r}: a resumed run keeps its dataset, policy and environment; only "
                "train.* settings can change (e.g. train.steps=200000)"
            )
        import yaml

        try:
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None)
        except Exception as exc:
            raise ConfigError(f"{item!r}: {_first_line(exc)}") from None
    cfg.resume = run_dir
    return cfg


def argv_overrides(cfg: DictConfig) -> list[str]:
    """The command line, for the record in config.yaml."""
    args = sys.argv[1:]
    return args[args.index("train") + 1 :] if "train" in args else args


def run_train(cfg: DictConfig, resume: str | None = None) -> int:
    from robolearn.train import CONFIG_FILE, Trainer, default_run_dir

    if cfg.get("dataset") in (None, "???") or OmegaConf.is_missing(cfg, "dataset"):
        raise ConfigError("name the episode store to train on: robolearn train dataset=PATH")
    dataset = str(cfg.dataset)
    settings = train_settings(cfg.train)
    policy_cfg = check_policy_config(cfg.policy)
    if resume:
        env = _container(cfg.get("env"))
        run_dir = Path(resume)
    else:
        recorded = recorded_env(dataset)
        robot = _container(cfg.get("robot")) or recorded.get("robot")
        task = _container(cfg.get("task")) or recorded.get("task")
        env = resolve_env(robot, task)
        run_dir = Path(cfg.run_dir) if cfg.get("run_dir") else default_run_dir(policy_cfg, dataset)
        # (data-parallel processes other than the first find the config the first one wrote)
        if (run_dir / CONFIG_FILE).exists() and _is_main_process():
            raise ConfigError(
                f"{run_dir} already holds a run; continue it with resume={run_dir} or choose "
                "another run_dir"
            )
        composed = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(composed, dict)
        composed["env"] = env
        composed["resume"] = None
        composed["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        composed["command"] = " ".join(["robolearn", "train", *argv_overrides(cfg)])
    trainer = Trainer(
        run_dir=run_dir,
        dataset=dataset,
        policy_cfg=policy_cfg,
        settings=settings,
        env=env,
        resume=bool(resume),
        console=console,
    )
    if not resume and _is_main_process():
        _write_config(run_dir, composed)
    result = trainer.run()
    if not trainer.is_main:
        return 0
    if resume:  # the settings it continued with
        final = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(final, dict)
        final["train"] = dataclasses.asdict(settings)
        _write_config(run_dir, final)
    lines = [
        f"[bold]{'stopped' if result.interrupted else 'done'}[/]: step {result.step} in "
        f"{result.seconds / 60:.1f} min ({result.samples_per_s:,.0f} samples/s)",
    ]
    if result.final_loss is not None:
        lines.append(f"  train loss {result.final_loss:.4f}")
    if result.val_loss is not None:
        lines.append(f"  validation loss {result.val_loss:.4f}")
    if result.success_rate is not None:
        lines.append(f"  rollout success {result.success_rate:.0%}")
    lines += [
        f"  run: {run_dir}  (checkpoints/last, checkpoints/best, loss.png, tb/)",
        f"next: [bold]robolearn eval checkpoint={run_dir}[/]"
        + ("" if env else " robot=sim_panda task=pick_place")
        + f" · tensorboard --logdir {run_dir / 'tb'}",
    ]
    for line in lines:
        out_console.print(line, highlight=False)
    return 130 if result.interrupted else 0


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _write_config(run_dir: Path, composed: Mapping[str, Any]) -> None:
    from robolearn.train import CONFIG_FILE

    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(dict(composed))))
    tmp.replace(run_dir / CONFIG_FILE)


# ---------------------------------------------------------------------- eval
@dataclasses.dataclass
class EvalSettings:
    checkpoint: str = "???"
    episodes: int = 50
    seed: int = 100_000
    workers: int | None = None
    videos: int = 3
    out: str | None = None
    device: str = "cpu"
    action_key: str | None = None
    max_steps: int | None = None
    mode: Any = "auto"  # a mode, or a list of them: mode=[blend,ensemble] compares them
    n_action_steps: int | None = None
    video_size: list[int] = dataclasses.field(default_factory=lambda: [480, 360])


def eval_main(argv: Sequence[str]) -> int:
    args, wants_help, show = command_flags(argv)
    if wants_help:
        print(_usage(EVAL_HELP))
        return 0
    cfg = compose("eval", args)
    return print_config(cfg) if show else run_eval(cfg)


def eval_env(cfg: DictConfig, checkpoint: Path) -> tuple[dict[str, Any], Path | None]:
    """The robot + task to evaluate in: the overrides, else the run's (or its dataset's)."""
    from robolearn.train import CONFIG_FILE

    run_dir = next(
        (p for p in (checkpoint, *checkpoint.parents[:3]) if (p / CONFIG_FILE).is_file()), None
    )
    run_env: dict[str, Any] = {}
    if run_dir is not None:
        saved = OmegaConf.load(run_dir / CONFIG_FILE)
        run_env = _container(saved.get("env")) or {}
    robot = _container(cfg.get("robot"))
    task = _container(cfg.get("task"))
    base_robot = {k: v for k, v in run_env.items() if k != "task"} or None
    env = resolve_env(robot or base_robot, task) if task else None
    if env is None and task is None and run_env:
        env = dict(run_env)
        if robot:
            env = {**{k: v for k, v in robot.items() if k != "task"}, "task": run_env["task"]}
    if env is None:
        raise ConfigError(
            "say which simulated robot and task to evaluate in, e.g. robot=sim_panda "
            "task=pick_place (the checkpoint's run does not record one)"
        )
    return env, run_dir


def run_eval(cfg: DictConfig) -> int:
    from omegaconf.errors import OmegaConfBaseException

    from robolearn.train import find_checkpoint

    plain = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items()}  # type: ignore[union-attr]
    plain.pop("robot", None)
    plain.pop("task", None)
    try:
        s: EvalSettings = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(EvalSettings), plain)
        )  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"eval: {_first_line(exc)}") from None
    if s.checkpoint == "???":
        raise ConfigError("name what to evaluate: robolearn eval checkpoint=RUN_DIR")
    modes = eval_modes(s.mode)
    checkpoint = find_checkpoint(s.checkpoint)
    env, run_dir = eval_env(cfg, checkpoint)
    task_name = env["task"].get("name", "task")
    out = (
        Path(s.out)
        if s.out
        else (run_dir or checkpoint)
        / "eval"
        / (f"{task_name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    )
    console.print(
        f"[bold]evaluating[/] {checkpoint} on [bold]{task_name}[/] ({env.get('arm', '?')}): "
        f"{s.episodes} episodes from seed {s.seed}, lock-step"
        + (f", in each of {len(modes)} modes" if len(modes) > 1 else "")
    )
    reports = []
    for mode in modes:
        where = out / mode if len(modes) > 1 else out
        reports.append(_eval_one(checkpoint, env, s, mode, where))
    if len(modes) > 1:
        _compare_modes(modes, reports, out)
    return 0


def eval_modes(mode: Any) -> list[str]:
    """`eval`'s mode setting as a list: one mode, or several (`mode=[blend,ensemble]`)."""
    from robolearn.runner import MODES

    modes = [mode] if isinstance(mode, str) else [str(m) for m in (mode or [])]
    if not modes:
        raise ConfigError("mode=[]: name a mode, or several: mode=[blend,ensemble]")
    for m in modes:
        if m not in MODES:
            raise ConfigError(
                f"mode={m!r}: choose from {', '.join(MODES)}, or a list of them "
                "(mode=[blend,ensemble])"
            )
    if len(set(modes)) < len(modes):
        raise ConfigError(f"mode={modes}: each mode once")
    return modes


def _eval_one(checkpoint: Path, env: dict[str, Any], s: EvalSettings, mode: str, out: Path) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from robolearn.evaluate import evaluate

    wins = [0, 0]
    with Progress(
        TextColumn(f"[bold]eval {mode}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[wins]}"),
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        bar = progress.add_task("eval", total=s.episodes, wins="")

        def step(o: Any) -> None:
            wins[0] += int(o.success)
            wins[1] += 1
            progress.update(bar, advance=1, wins=f"{wins[0]}/{wins[1]} succeeded")

        report = evaluate(
            checkpoint,
            env,
            episodes=s.episodes,
            seed=s.seed,
            workers=s.workers,
            videos=s.videos,
            out_dir=out,
            device=s.device,
            action_key=s.action_key,
            max_steps=s.max_steps,
            progress=step,
            mode=mode,
            n_action_steps=s.n_action_steps,
            video_size=s.video_size,
        )
    label = f"mode={mode}" + (f" ({report.mode})" if report.mode != mode else "")
    out_console.print(f"[bold]{report.summary()}[/] · {label}", highlight=False)
    out_console.print(
        f"  inference p50 {report.inference_ms_p50:.1f} ms, p99 {report.inference_ms_p99:.1f} ms "
        f"per chunk · {report.wall_s:.0f} s on {report.workers} worker(s)",
        highlight=False,
    )
    out_console.print(f"  report: {out / 'report.json'}", highlight=False)
    for video in report.videos:
        out_console.print(f"  video: {video}", highlight=False)
    return report


def _compare_modes(modes: list[str], reports: list[Any], out: Path) -> None:
    """The modes side by side (the same weights and seeds): a table, and out/modes.json."""
    from rich.table import Table

    table = Table(title="the same checkpoint and seeds in each mode")
    for col in ("mode", "success", "95% CI", "mean score (95%)", "mean length"):
        table.add_column(col)
    rows = []
    for mode, r in zip(modes, reports, strict=True):
        lo, hi = r.ci95
        score = f"{r.mean_score:.2f}" + (
            f" ({r.score_ci95[0]:.2f}–{r.score_ci95[1]:.2f})" if r.score_ci95 else ""
        )
        name = mode if r.mode == mode else f"{mode} ({r.mode})"
        table.add_row(
            name,
            f"{r.successes}/{r.episodes} = {r.success_rate:.0%}",
            f"{lo:.0%}–{hi:.0%}",
            score,
            f"{r.mean_steps:.0f}",
        )
        rows.append(
            {
                "mode": mode,
                "executed_as": r.mode,
                "successes": r.successes,
                "episodes": r.episodes,
                "success_rate": r.success_rate,
                "ci95": list(r.ci95),
                "mean_score": r.mean_score,
                "score_ci95": list(r.score_ci95) if r.score_ci95 else None,
                "mean_steps": r.mean_steps,
                "report": str(out / mode / "report.json"),
            }
        )
    out_console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "modes.json").write_text(json.dumps(rows, indent=2) + "\n")
    out_console.print(f"  comparison: {out / 'modes.json'}", highlight=False)
