"""The `robolearn` command: one entry point, one subcommand per workflow."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from robolearn import __version__
from robolearn.errors import RobolearnError

# Piped output (CI logs, `| tee`) gets a width that fits the tables instead of rich's 80.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


# ---------------------------------------------------------------------- dataset info
def print_info(info, *, episodes: bool = True) -> None:  # type: ignore[no-untyped-def]
    from robolearn.data.tools import human_bytes

    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_row("store", info.path)
    summary.add_row("episodes", str(info.episodes))
    summary.add_row("frames", str(info.frames))
    summary.add_row("duration", f"{info.duration_s:.1f} s")
    summary.add_row("rate", f"{info.real_fps:.2f} fps measured (nominal {info.nominal_fps:g} fps)")
    summary.add_row("dropped frames", f"{info.dropped_frames} in {info.gaps} gaps")
    ratio = info.bytes_raw / info.bytes_on_disk if info.bytes_on_disk else float("nan")
    summary.add_row(
        "size on disk",
        f"{human_bytes(info.bytes_on_disk)} ({human_bytes(info.bytes_raw)} raw, ×{ratio:.2f})",
    )
    if info.uncommitted_frames:
        summary.add_row(
            "unfinished", f"{info.uncommitted_frames} frames of an unsaved episode (ignored)"
        )
    console.print(summary)

    keys = Table(title="keys", title_justify="left")
    for col in ("key", "kind", "shape", "dtype", "codec", "on disk", "ratio", "range", "mean"):
        keys.add_column(col, no_wrap=True)
    for key, k in info.per_key.items():
        lo, hi, mean = k.get("min"), k.get("max"), k.get("mean")
        keys.add_row(
            key,
            k["kind"],
            "×".join(map(str, k["shape"])),
            k["dtype"],
            k["codec"],
            human_bytes(k["bytes_on_disk"]),
            f"×{k['ratio']:.2f}" if k["ratio"] else "-",
            f"{min(lo):.3g} … {max(hi):.3g}" if lo else "-",
            " ".join(f"{v:.3g}" for v in mean[:3]) + (" …" if len(mean) > 3 else "")
            if mean
            else "-",
        )
    console.print(keys)

    if episodes and info.per_episode:
        table = Table(title="episodes", title_justify="left")
        for col in (
            "#",
            "task",
            "frames",
            "seconds",
            "real fps",
            "dropped",
            "max period ms",
            "stale cam",
            "success",
        ):
            table.add_column(col, no_wrap=col != "task", max_width=40 if col == "task" else None)
        for row in info.per_episode:
            success = {True: "yes", False: "no", None: "?"}[row["success"]]
            table.add_row(
                str(row["episode"]),
                row["task"] or "-",
                str(row["frames"]),
                f"{row['duration_s']:.2f}",
                f"{row['real_fps']:.2f}",
                str(row["dropped"]),
                f"{row['period_max_ms']:.1f}",
                str(row["stale_camera_frames"]),
                success,
            )
        console.print(table)


def cmd_info(args: argparse.Namespace) -> int:
    from robolearn.data.store import EpisodeStore
    from robolearn.data.tools import store_info

    with EpisodeStore.open(args.path, "r") as store:
        info = store_info(store, with_stats=not args.no_stats)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(info), indent=2, default=str))
    print_info(info, episodes=not args.brief)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from robolearn.data.store import EpisodeStore
    from robolearn.data.tools import copy_episodes

    sources = [EpisodeStore.open(p, "r") for p in args.sources]
    with _progress() as progress:
        task = progress.add_task("merging", total=sum(s.num_episodes for s in sources))
        out = copy_episodes(
            [(s, range(s.num_episodes)) for s in sources],
            args.out,
            overwrite=args.overwrite,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    console.print(f"wrote {out.num_episodes} episodes ({out.num_frames} frames) to {out.path}")
    out.close()
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from robolearn.data.store import EpisodeStore
    from robolearn.data.tools import copy_episodes, parse_episode_list, select_episodes

    store = EpisodeStore.open(args.src, "r")
    chosen = select_episodes(
        store,
        episodes=parse_episode_list(args.episodes) if args.episodes else None,
        success=args.success,
        task=args.task,
    )
    if not chosen:
        err_console.print("no episode matches the filter; nothing written")
        return 1
    with _progress() as progress:
        task = progress.add_task("filtering", total=len(chosen))
        out = copy_episodes(
            [(store, chosen)],
            args.out,
            overwrite=args.overwrite,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    console.print(f"kept episodes {chosen} of {store.num_episodes}: wrote {out.path}")
    out.close()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from robolearn.data.tools import verify_store

    with _progress() as progress:
        task = progress.add_task("verifying", total=None)
        report = verify_store(
            args.path, progress=lambda d, t: progress.update(task, completed=d, total=t)
        )
    for note in report.notes:
        console.print(f"[yellow]note[/]: {escape(str(note))}")
    if report.ok:
        console.print(
            f"[green]OK[/]: {report.path}: {report.episodes} episodes, {report.frames} frames, every chunk readable"
        )
        return 0
    for problem in report.problems:
        console.print(f"[red]damage[/]: {escape(str(problem))}")
    console.print(f"{len(report.problems)} problem(s) found in {report.path}")
    return 1


def cmd_stats(args: argparse.Namespace) -> int:
    from robolearn.data.stats import get_stats
    from robolearn.data.store import EpisodeStore

    with EpisodeStore.open(args.path, "r") as store:
        stats = get_stats(store)
    console.print_json(json.dumps({k: s.to_dict() for k, s in stats.items()}))
    return 0


def cmd_export_video(args: argparse.Namespace) -> int:
    from robolearn.data.store import EpisodeStore
    from robolearn.data.video import export_video

    with EpisodeStore.open(args.path, "r") as store:
        out = args.out or f"{Path(args.path).stem}_episode{args.episode}.mp4"
        path = export_video(store, args.episode, out, keys=args.keys)
    console.print(f"wrote {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from robolearn.data.plot import plot_episode, plot_timing
    from robolearn.data.store import EpisodeStore

    with EpisodeStore.open(args.path, "r") as store:
        out = args.out or f"{Path(args.path).stem}_episode{args.episode}.png"
        path = plot_episode(store, args.episode, out, keys=args.keys)
        console.print(f"wrote {path}")
        if args.timing:
            tpath = plot_timing(
                store, args.episode, Path(out).with_name(Path(out).stem + "_timing.png")
            )
            console.print(f"wrote {tpath}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from robolearn.demo import DemoPlan, run_demo

    plan = DemoPlan(
        out=Path(args.out),
        episodes=args.episodes,
        policy=args.policy,
        steps=args.steps,
        eval_episodes=args.eval_episodes,
        workers=args.workers,
    )
    return run_demo(plan)


# ---------------------------------------------------------------------- parser
def _bool_filter(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "success"):
        return True
    if text.lower() in ("0", "false", "no", "failure", "failed"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: use true or false")


def cmd_record(args: argparse.Namespace) -> int:
    from robolearn.record_app import main as record_main

    return record_main(args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from robolearn.train_app import train_main

    return train_main(args.overrides)


def cmd_eval(args: argparse.Namespace) -> int:
    from robolearn.train_app import eval_main

    return eval_main(args.overrides)


def cmd_deploy(args: argparse.Namespace) -> int:
    from robolearn.deploy_app import main as deploy_main

    return deploy_main(args.overrides)


# Commands whose own parser takes every argument after the name: "module:function(argv)".
# They live with their devices in hardware/ and are imported only when run.
PASSTHROUGH = {
    "find-cameras": "hardware.cameras.find:main",
    "calibrate": "hardware.calibrate:main",
    "emulate": "hardware.emulator.__main__:main",
}


def cmd_passthrough(args: argparse.Namespace) -> int:
    import importlib

    module, _, func = PASSTHROUGH[args.command].partition(":")
    return int(getattr(importlib.import_module(module), func)(args.overrides) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robolearn",
        description="Robot imitation learning: record demonstrations, train policies, deploy them.",
    )
    parser.add_argument("--version", action="version", version=f"robolearn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="the main job: scripted demonstrations → Zarr → train → eval → report, in simulation",
    )
    demo.add_argument("--out", default="runs/demo", help="where the store, run and report go")
    demo.add_argument("--episodes", type=int, default=200, help="demonstrations to record")
    demo.add_argument("--policy", default="mlp", help="a policy of configs/policy/")
    demo.add_argument("--steps", type=int, help="training steps (default: configs/train/demo.yaml)")
    demo.add_argument("--eval-episodes", type=int, default=50, help="evaluation rollouts")
    demo.add_argument("--workers", type=int, help="evaluation processes (default: one per core)")
    demo.set_defaults(func=cmd_demo)

    # Commands that take every argument after their name (hydra overrides, or their own flags).
    forwarded = [
        (
            "record",
            "record demonstrations (hydra overrides: robot=… task=… teleop=… num_episodes=N)",
            cmd_record,
        ),
        (
            "train",
            "train a policy on a store (hydra overrides: dataset=… policy=… train.steps=N)",
            cmd_train,
        ),
        (
            "eval",
            "simulated rollouts of a trained policy (checkpoint=RUN_DIR episodes=N)",
            cmd_eval,
        ),
        (
            "deploy",
            "run a trained policy on a robot at control rate (checkpoint=RUN_DIR robot=… task=…)",
            cmd_deploy,
        ),
        (
            "find-cameras",
            "list the cameras OpenCV can open (size, fps, format); --save DIR keeps a frame each",
            cmd_passthrough,
        ),
        (
            "calibrate",
            "calibrate a real arm or leader arm with lerobot's flow (robot=so101 port=/dev/ttyACM0)",
            cmd_passthrough,
        ),
        (
            "emulate",
            "emulated servo buses (so101 | koch) on pseudo-terminals, to try robolearn with no arm",
            cmd_passthrough,
        ),
    ]
    for name, text, func in forwarded:
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("overrides", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)

    ds = sub.add_parser("dataset", help="inspect, check and edit episode stores")
    dsub = ds.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    from robolearn.data.interop.cli import add_parsers as add_interop_parsers

    add_interop_parsers(dsub)  # dataset import / export (lerobot and h5py load when one runs)

    p = dsub.add_parser(
        "info", help="episodes, frames, measured rate, dropped frames, sizes, statistics"
    )
    p.add_argument("path", help="store path or fsspec URL (e.g. s3://bucket/name.zarr)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--brief", action="store_true", help="leave out the per-episode table")
    p.add_argument("--no-stats", action="store_true", help="skip per-key statistics")
    p.set_defaults(func=cmd_info)

    p = dsub.add_parser("merge", help="concatenate stores with the same spec into a new store")
    p.add_argument("out", help="the new store")
    p.add_argument("sources", nargs="+", help="stores to merge, in order")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_merge)

    p = dsub.add_parser("filter", help="copy the episodes that match into a new store")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--episodes", help="indices and ranges, e.g. 0,3,5-9")
    p.add_argument(
        "--success", type=_bool_filter, help="keep successful (true) or failed (false) episodes"
    )
    p.add_argument("--task", help="keep episodes of this task")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_filter)

    p = dsub.add_parser("verify", help="read every chunk and report any damage (exit 1 if damaged)")
    p.add_argument("path")
    p.set_defaults(func=cmd_verify)

    p = dsub.add_parser("stats", help="print (and keep) the normalisation statistics")
    p.add_argument("path")
    p.set_defaults(func=cmd_stats)

    p = dsub.add_parser("export-video", help="mp4 of an episode's cameras, side by side")
    p.add_argument("path")
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--keys", nargs="+", help="image keys (default: all)")
    p.add_argument("--out", help="output .mp4 (default: <store>_episode<N>.mp4)")
    p.set_defaults(func=cmd_export_video)

    p = dsub.add_parser("plot", help="state and action curves of an episode as PNG")
    p.add_argument("path")
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--keys", nargs="+", help="state/action keys (default: all)")
    p.add_argument("--out", help="output .png (default: <store>_episode<N>.png)")
    p.add_argument("--timing", action="store_true", help="also plot frame periods and gaps")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    hydra_commands = {
        "record": cmd_record,
        "train": cmd_train,
        "eval": cmd_eval,
        "deploy": cmd_deploy,
    }
    if argv[:1] and argv[0] in hydra_commands:  # overrides (and --help/--cfg) go to the command
        args = argparse.Namespace(func=hydra_commands[argv[0]], overrides=argv[1:], verbose=False)
    elif argv[:1] and argv[0] in PASSTHROUGH:
        args = argparse.Namespace(
            func=cmd_passthrough, command=argv[0], overrides=argv[1:], verbose=False
        )
    else:
        args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (RobolearnError, IndexError, KeyError, ValueError, OSError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        err_console.print(f"[red]error[/]: {escape(str(message))}")
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
