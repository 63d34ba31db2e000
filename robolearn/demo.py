"""`robolearn demo`: record a small sample store in real time and show what it holds.

Until the simulator and the trainer land, the demo records camera-like synthetic episodes
(robolearn.data.synthetic) at a real control rate, so the store carries measured timestamps,
and prints `robolearn dataset info` on it.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from robolearn.data.store import EpisodeStore
from robolearn.data.synthetic import SyntheticArm, record_realtime, sample_spec
from robolearn.data.tools import store_info

console = Console()


def run_demo(out: Path, episodes: int = 3, seconds: float = 4.0, fps: float = 30.0) -> int:
    from robolearn.cli import print_info

    spec = sample_spec({"top": (96, 96), "wrist": (96, 96)})
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not (out / "zarr.json").exists():
        raise FileExistsError(f"{out} exists and is not a store; pass --out to choose another path")
    console.print(
        f"[bold]robolearn demo[/]: recording {episodes} episodes of {seconds:g} s at {fps:g} Hz "
        f"(14-dim state and action, two 96×96 cameras) into {out}"
    )
    store = EpisodeStore.create(out, spec, fps, codecs={"wrist": "jpeg:90"}, overwrite=True)
    arm = SyntheticArm(spec, seed=0)
    with store, store.writer() as writer, console.status("recording") as status:
        for e in range(episodes):
            status.update(f"recording episode {e + 1}/{episodes}")
            record_realtime(writer, arm, seconds, fps, task="sample: move the arm")
            info = writer.save(success=True)
            console.print(f"  saved episode {info.index}: {info.length} frames")
    with EpisodeStore.open(out, "r") as store:
        print_info(store_info(store))
    console.print(
        f"\nnext: [bold]robolearn dataset verify[/] {out} · [bold]robolearn dataset plot[/] {out} "
        f"· [bold]robolearn dataset export-video[/] {out}"
    )
    return 0
