"""`robolearn record`: compose the config, build robot, task and teleoperator, run the recorder.

robolearn record robot=sim_panda task=pick_place teleop=expert num_episodes=50
robolearn record robot=sim_panda task=push_t teleop=keyboard dataset=datasets/my_push_t.zarr
robolearn record --cfg          # print the composed config and exit
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.live import Live
from rich.text import Text

from robolearn.config import ConfigError, build, choices, command_flags, compose, print_config
from robolearn.hal import EpisodeEvent
from robolearn.preview import PreviewConfig, WebPreview, make_preview
from robolearn.record import RecordConfig, Recorder

console = Console(stderr=True)

HELP = """usage: robolearn record [key=value ...] [group=option ...] [--cfg]

Records demonstrations into a Zarr episode store (hydra overrides; defaults in
configs/record.yaml).

groups:
  robot=   {robots}
  task=    {tasks}
  teleop=  {teleops}

common keys:
  dataset=datasets/NAME.zarr  num_episodes=N  fps=HZ  episode_time_s=S  reset_time_s=S
  keep=all|success|auto  seed=N  overrun=skip|catch_up  on_interrupt=discard|save  writer=process|thread
  codecs.top=jpeg:90  robot.clock=realtime  robot.cameras=[]  keys=on|off  status=on|off
  preview=none|web|rerun  preview_port=8765  preview_fps=10  preview_rerun=spawn|serve|FILE.rrd

episode keys (in the terminal): {keys}
"""


def usage() -> str:
    try:
        from robolearn.terminal import EpisodeKeys

        keys = EpisodeKeys().help
    except ImportError:
        keys = "(terminal keys unavailable)"
    return HELP.format(
        robots=", ".join(choices("robot")),
        tasks=", ".join(choices("task")),
        teleops=", ".join(choices("teleop")),
        keys=keys,
    )


def main(argv: Sequence[str]) -> int:
    args, wants_help, show = command_flags(argv)
    if wants_help:
        print(usage())
        return 0
    cfg = compose("record", args)
    return print_config(cfg) if show else record(cfg)


def make_robot(cfg: DictConfig) -> Any:
    """The robot of `cfg.robot` (a simulated one loads the scene of `cfg.task` by interpolation)."""
    return build(cfg.robot, "robot")


def record_config(cfg: DictConfig, keep: str) -> RecordConfig:
    """The recorder's settings from the composed config, with the key named on a bad value."""

    def number(key: str, kind: type = float) -> Any:
        value = cfg[key]
        if value is None and key == "max_attempts":
            return None
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} is not a number") from None

    config = RecordConfig(
        dataset=str(cfg.dataset),
        num_episodes=number("num_episodes", int),
        fps=number("fps"),
        episode_time_s=number("episode_time_s"),
        reset_time_s=number("reset_time_s"),
        task=str(cfg.task.instruction or cfg.task.name),
        keep=keep,
        seed=number("seed", int),
        overrun=str(cfg.overrun),
        on_interrupt=str(cfg.on_interrupt),
        writer=str(cfg.get("writer", "process")),
        codecs=dict(cfg.codecs),
        max_attempts=number("max_attempts", int),
        attrs={"recording": recording_attrs(cfg)},
    )
    config.check()
    return config


def recording_attrs(cfg: DictConfig) -> dict[str, Any]:
    """The resolved robot and task configs, kept in the store so that `robolearn train` and
    `robolearn eval` can rebuild the same simulated scene (the robot without its scene)."""
    robot = OmegaConf.to_container(cfg.robot, resolve=True)
    task = OmegaConf.to_container(cfg.task, resolve=True)
    assert isinstance(robot, dict) and isinstance(task, dict)
    robot.pop("task", None)
    return {"robot": robot, "task": task}


def preview_config(cfg: DictConfig) -> PreviewConfig:
    """The live camera preview's settings (`preview=none|web|rerun` and its `preview_*` keys)."""
    try:
        return PreviewConfig(
            kind=str(cfg.get("preview", "none")),
            fps=float(cfg.get("preview_fps", 10)),
            port=int(cfg.get("preview_port", 8765)),
            host=str(cfg.get("preview_host", "127.0.0.1")),
            rerun=str(cfg.get("preview_rerun", "spawn")),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"a preview_* setting is not a number: {e}") from None


@contextlib.contextmanager
def _preview(cfg: DictConfig, spec: Any) -> Iterator[Any]:
    preview = make_preview(preview_config(cfg), spec)
    if isinstance(preview, WebPreview):
        console.print(
            f"live cameras: [bold]{preview.url}[/] (over SSH: ssh -L "
            f"{preview.server.server_address[1]}:localhost:{preview.server.server_address[1]} HOST)"
        )
    try:
        yield preview
    finally:
        if preview is not None:
            preview.close()


def record(cfg: DictConfig) -> int:
    if cfg.keep not in ("auto", "all", "success"):
        raise ConfigError(f"keep={cfg.keep!r}: choose all, success or auto")
    record_config(cfg, "all")  # refuse bad values before any device is opened
    preview_config(cfg).check()
    _switch(cfg, "keys"), _switch(cfg, "status")
    robot = make_robot(cfg)
    with robot, _keys(cfg) as (reader, keys, key_help):
        limits = robot.spec.features.get("action.ee")
        teleop = build(
            cfg.teleop, "teleop", robot=robot, reader=reader, spec=robot.spec, limits=limits
        )
        scripted = type(teleop).__name__ == "ExpertTeleop"
        keep = cfg.keep if cfg.keep != "auto" else ("success" if scripted else "all")
        config = record_config(cfg, keep)
        clock = getattr(robot, "clock_mode", "realtime")
        console.print(
            f"[bold]recording[/] {config.num_episodes} episode(s) of [bold]{cfg.task.name}[/] "
            f"with {type(robot).__name__} ({clock} clock) and {type(teleop).__name__} "
            f"at {config.fps:g} Hz into {config.dataset} (keep={keep})"
        )
        if reader is not None and not reader.active:
            console.print(f"episode keys are off ({reader.reason}); Ctrl-C stops")
        elif keys is not None:
            console.print(f"keys: {key_help}")
        with _status(cfg) as status, _preview(cfg, robot.spec) as preview:
            recorder = Recorder(
                robot,
                teleop,
                config,
                keys=keys,
                status=status,
                log=lambda m: console.print(m, highlight=False),
                preview=preview,
            )
            recorder.run()
    console.print(f"next: [bold]robolearn dataset info {config.dataset}[/]")
    return 0


def _switch(cfg: DictConfig, key: str) -> str:
    """on | off | auto (YAML reads a bare on/off as a boolean)."""
    value = cfg[key]
    mode = {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) else value
    if mode not in ("on", "off", "auto"):
        raise ConfigError(f"{key}={value!r}: choose on, off or auto")
    return str(mode)


@contextlib.contextmanager
def _keys(cfg: DictConfig) -> Iterator[tuple[Any, Any, str]]:
    """A terminal key reader (shared with a keyboard teleop) and the episode-event source."""
    mode = _switch(cfg, "keys")
    if mode == "off":
        yield None, None, ""
        return
    from robolearn.terminal import EpisodeKeys, KeyReader

    mapping = EpisodeKeys()
    # without a terminal (CI, a pipe) the reader stays inactive and says why
    with KeyReader() as reader:
        if mode == "on" and not reader.active:
            raise ConfigError(f"keys=on but {reader.reason}; use keys=auto or keys=off")

        def events() -> list[EpisodeEvent]:
            return mapping.events(reader.keys())

        yield reader, events, mapping.help


@contextlib.contextmanager
def _status(cfg: DictConfig) -> Iterator[Any]:
    mode = _switch(cfg, "status")
    if mode == "off" or (mode == "auto" and not console.is_terminal):
        yield None
        return
    text = Text("starting…")
    with Live(text, console=console, refresh_per_second=4, transient=True) as live:

        def update(s: dict[str, Any]) -> None:
            live.update(
                Text(
                    f"episode {s['episode']} ({s['attempt'] + 1} tries, "
                    f"{s['num_episodes']} wanted) · {s['elapsed_s']:5.1f}/"
                    f"{s['episode_time_s']:g} s · {s['rate_hz']:5.1f}/{s['target_hz']:g} Hz · "
                    f"overruns {s['overruns']} · stale frames {s['stale_frames']} · "
                    f"disk {s['disk_bytes'] / 2**20:.1f} MiB"
                )
            )

        yield update
