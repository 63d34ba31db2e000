"""Smoke test of benchmarks/vision.py: a real quick run writes its JSON and its docs section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "vision.py"


def test_quick_run_measures_every_backbone(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- sim:start -->\nuntouched\n<!-- sim:end -->\n")
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out-dir", str(tmp_path), "--docs", str(docs)]
    # one thread: a smoke run measures nothing, and under xdist an OpenMP pool in the child has
    # been seen to starve its own main thread for half an hour (2026-12-07)
    cmd += ["--threads", "1"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=240)
    rows = json.loads((tmp_path / "vision.json").read_text())["rows"]
    assert [(r["backbone"], r["norm"]) for r in rows] == [
        ("resnet18", "group"),
        ("resnet18", "batch"),
        ("cnn", "group"),
        ("cnn", "batch"),
    ]
    resnet, cnn = rows[0], rows[2]
    assert resnet["params_m"] > 10 > cnn["params_m"]  # ResNet-18's 11 M against the small net's
    assert resnet["gmac_per_frame"] > 3 * cnn["gmac_per_frame"] > 0
    assert all(r["train_frames_per_s"] > 0 and r["infer_p50_ms"] > 0 for r in rows)
    text = docs.read_text()
    assert "untouched" in text and "<!-- vision:start -->" in text and "| cnn | group |" in text
