"""The `robolearn` command line, run as users run it (a real process, real stores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from robolearn.data.store import EpisodeStore

EXE = str(Path(sys.executable).with_name("robolearn"))


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_help_lists_the_subcommands() -> None:
    out = run("--help").stdout
    assert "demo" in out and "dataset" in out
    sub = run("dataset", "--help").stdout
    for action in ("info", "merge", "filter", "verify", "export-video", "plot", "stats", "import"):
        assert action in sub


def test_info_prints_real_figures_and_writes_json(sample_store, tmp_path: Path) -> None:
    path = sample_store(episodes=2, frames=40, fps=20.0, drop_every=10)
    out = run("dataset", "info", str(path), "--json", str(tmp_path / "info.json")).stdout
    assert "episodes" in out and "dropped frames" in out
    assert "6 in 6 gaps" in out  # 3 gaps per 40-frame episode
    data = json.loads((tmp_path / "info.json").read_text())
    assert data["frames"] == 80 and data["dropped_frames"] == 6
    assert 15 < data["real_fps"] < 20


def test_bad_paths_give_a_clear_error_and_exit_2(tmp_path: Path) -> None:
    out = run("dataset", "info", str(tmp_path / "nope.zarr"), ok=False)
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def test_errors_print_their_brackets(tmp_path: Path) -> None:
    """Error messages name overrides like mode=[blend,ensemble]; the terminal's markup must
    not eat the brackets (it took `[value1,value2]` out of hydra's hint once)."""
    out = run("eval", f"checkpoint={tmp_path}", "mode=blend,ensemble", ok=False)
    assert out.returncode == 2 and "key=[value1,value2]" in out.stderr, out.stderr
    out = run("eval", f"checkpoint={tmp_path}", "mode=[blend,fast]", ok=False)
    assert out.returncode == 2 and "mode=[blend,ensemble]" in out.stderr, out.stderr


def test_filter_merge_verify_plot_and_video_from_the_command_line(
    sample_store, tmp_path: Path
) -> None:
    src = sample_store(episodes=4, frames=12)
    run("dataset", "filter", str(src), str(tmp_path / "ok.zarr"), "--success", "true")
    assert EpisodeStore.open(tmp_path / "ok.zarr").num_episodes == 3
    run("dataset", "filter", str(src), str(tmp_path / "some.zarr"), "--episodes", "0,2-3")
    run(
        "dataset",
        "merge",
        str(tmp_path / "all.zarr"),
        str(tmp_path / "ok.zarr"),
        str(tmp_path / "some.zarr"),
    )
    merged = EpisodeStore.open(tmp_path / "all.zarr")
    assert merged.num_episodes == 6
    np.testing.assert_array_equal(
        merged.read_episode(3)["top"], EpisodeStore.open(src).read_episode(0)["top"]
    )
    assert "OK" in run("dataset", "verify", str(tmp_path / "all.zarr")).stdout
    run("dataset", "plot", str(src), "--episode", "1", "--out", str(tmp_path / "p.png"), "--timing")
    assert (tmp_path / "p.png").stat().st_size > 1000 and (tmp_path / "p_timing.png").exists()
    run("dataset", "export-video", str(src), "--episode", "2", "--out", str(tmp_path / "v.mp4"))
    assert (tmp_path / "v.mp4").stat().st_size > 1000
    none = run(
        "dataset", "filter", str(src), str(tmp_path / "none.zarr"), "--task", "fly", ok=False
    )
    assert none.returncode == 1 and "no episode matches" in none.stderr


def test_verify_exits_1_on_damage(sample_store) -> None:
    path = sample_store(episodes=1, frames=10)
    chunk = next(f for f in (path / "data" / "action" / "c").rglob("*") if f.is_file())
    chunk.write_bytes(b"garbage")
    out = run("dataset", "verify", str(path), ok=False)
    assert out.returncode == 1 and "action" in out.stdout and "cannot be read" in out.stdout


def test_device_commands_run_from_the_robolearn_command(tmp_path: Path) -> None:
    out = run("--help").stdout
    assert "find-cameras" in out and "calibrate" in out
    # no camera on a test machine: the command says so and how to check, and succeeds
    found = run("find-cameras", "--max-index", "2")
    assert "No cameras found" in found.stdout and "video" in found.stdout
    bad = run("find-cameras", "--source", str(tmp_path / "none.mp4"), ok=False)
    assert bad.returncode == 1 and "none.mp4" in bad.stdout + bad.stderr
