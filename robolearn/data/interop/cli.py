"""`robolearn dataset import` / `robolearn dataset export`: LeRobot and HDF5 datasets in and out."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from robolearn.errors import RobolearnError
from robolearn.spec import ACTION_REPRESENTATIONS

FORMATS = ("lerobot", "aloha-hdf5", "robomimic-hdf5")
err_console = Console(stderr=True, soft_wrap=True)  # error messages hold long paths


@contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A frames-done / frames-total progress bar on stderr, as a callback."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _episodes(text: str | None) -> list[int] | None:
    from robolearn.data.tools import parse_episode_list

    return None if text is None else parse_episode_list(text)


def _codecs(items: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for item in items or ():
        key, sep, codec = item.partition("=")
        if not sep or not key or not codec:
            raise RobolearnError(f"--codec {item!r}: write KEY=CODEC, e.g. top=jpeg:90")
        out[key] = codec
    return out


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def cmd_import(args: argparse.Namespace) -> int:
    src, dest = Path(args.src), Path(args.dest)
    episodes = _episodes(args.episodes)
    codecs = _codecs(args.codec)
    with _progress(f"importing {src.name}") as progress:
        if args.format == "lerobot":
            from robolearn.data.interop.lerobot import LeRobotImportConfig, import_lerobot

            hdf5_only = {
                "--fps": args.fps is not None,
                "--task": args.task is not None,
                "--joint-names": args.joint_names is not None,
                "--action-representation": args.action_representation != "default",
                "--filter-key": args.filter_key is not None,
                "--swap-rb": args.swap_rb,
            }
            given = [flag for flag, used in hdf5_only.items() if used]
            if given:
                raise RobolearnError(
                    f"{', '.join(given)}: HDF5 options; a LeRobot dataset says its own rate, "
                    "tasks, names and action representation"
                )
            import_lerobot(
                src,
                dest,
                LeRobotImportConfig(
                    episodes=episodes, drop=args.drop, repo_id=args.repo_id, codecs=codecs
                ),
                progress=progress,
            )
        else:
            from robolearn.data.interop.hdf5 import HDF5ImportConfig, import_aloha, import_robomimic

            aloha = args.format == "aloha-hdf5"
            config = HDF5ImportConfig(
                fps=args.fps,
                episodes=episodes,
                task=args.task,
                drop=args.drop,
                joint_names=_names(args.joint_names),
                action_representation=args.action_representation,
                filter_key=args.filter_key,
                swap_rb=args.swap_rb,
                codecs=codecs,
            )
            (import_aloha if aloha else import_robomimic)(src, dest, config, progress=progress)
    _report(dest)
    return 0


def _report(dest: Path) -> None:
    from robolearn.data.store import EpisodeStore

    with EpisodeStore.open(dest, "r") as store:
        keys = ", ".join(
            f"{k} ({f.kind} {'×'.join(map(str, f.shape))})" for k, f in store.spec.items()
        )
        print(
            f"imported {store.num_episodes} episodes ({store.num_frames} frames, {store.fps:g} fps) "
            f"into {dest}: {keys}"
        )


def cmd_export(args: argparse.Namespace) -> int:
    from robolearn.data.interop.lerobot import LeRobotExportConfig, export_lerobot

    store, dest = Path(args.store), Path(args.dest)
    config = LeRobotExportConfig(
        video=args.video,
        episodes=_episodes(args.episodes),
        repo_id=args.repo_id,
        fps=args.fps,
        action_key=args.action_key,
        keep_times=args.keep_times,
        vcodec=args.vcodec,
        robot_type=args.robot_type,
    )
    with _progress(f"exporting {store.name}") as progress:
        export_lerobot(store, dest, config, progress=progress)
    mode = "mp4 videos" if args.video else "PNG images"
    print(f"exported {store} to the LeRobot dataset {dest} (cameras as {mode})")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `import` and `export` to a subparsers object (robolearn's `dataset` actions)."""
    p = sub.add_parser(
        "import",
        help="make an episode store from a LeRobot v3 folder or HDF5 demonstrations",
        description="Import a dataset into a new episode store. The store appears at DEST only "
        "when the import has finished; timestamps are the source's, not measured ones.",
    )
    p.add_argument("src", help="LeRobot dataset folder, ACT episode folder/file or robomimic file")
    p.add_argument("dest", help="the new store (e.g. datasets/name.zarr); must not exist")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--episodes", help="indices and ranges, e.g. 0,3,5-9 (default: all)")
    p.add_argument(
        "--drop", action="append", default=[], metavar="KEY", help="a source key to leave out"
    )
    p.add_argument("--codec", action="append", metavar="KEY=CODEC", help="e.g. top=jpeg:90")
    p.add_argument("--repo-id", help="LeRobot: the dataset id (a label; nothing is downloaded)")
    p.add_argument("--fps", type=float, help="HDF5: frame rate, when the file does not say")
    p.add_argument("--task", help="HDF5: task string of every episode")
    p.add_argument("--joint-names", help="HDF5: comma-separated names of the qpos/action columns")
    p.add_argument(
        "--action-representation",
        choices=("default", "none", *ACTION_REPRESENTATIONS),
        default="default",
        help="HDF5: what the actions are (default joint_position for ACT, none for robomimic)",
    )
    p.add_argument("--filter-key", help="robomimic: import the demos of mask/<KEY> only")
    p.add_argument(
        "--swap-rb", action="store_true", help="ACT: swap red and blue (files stored as BGR)"
    )
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "export",
        help="write a store as a LeRobot v3 dataset folder",
        description="Export a store through lerobot's dataset API. --no-video stores cameras "
        "as lossless PNG; video (the default) is smaller but lossy.",
    )
    p.add_argument("store")
    p.add_argument("dest", help="the new LeRobot dataset folder; must not exist")
    p.add_argument("--format", default="lerobot", choices=("lerobot",))
    p.add_argument("--repo-id", help="the dataset id written to its metadata")
    p.add_argument("--video", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--episodes", help="indices and ranges, e.g. 0,3,5-9 (default: all)")
    p.add_argument("--fps", type=int, help="nominal whole-number rate, if the store's is not")
    p.add_argument("--action-key", help="the store key that becomes LeRobot's 'action'")
    p.add_argument(
        "--keep-times",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write measured times (robolearn.time) and meta/robolearn.json",
    )
    p.add_argument("--vcodec", help="video codec (default lerobot's: libsvtav1)")
    p.add_argument("--robot-type", help="written to meta/info.json")
    p.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robolearn dataset", description="import and export episode stores"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`robolearn dataset import|export …`; argv starts with the action. Returns the exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (RobolearnError, ValueError, OSError) as e:
        err_console.print(f"[red]error[/]: {e}")
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted; nothing was left at the destination")
        return 130


if __name__ == "__main__":
    sys.exit(main())
