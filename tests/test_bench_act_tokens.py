"""Smoke test of benchmarks/act_tokens.py: a real quick run writes its JSON and docs section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "act_tokens.py"


def test_quick_run_measures_each_pooling(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- sim:start -->\nuntouched\n<!-- sim:end -->\n")
    out = tmp_path / "act_tokens.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--docs", str(docs)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
    rows = json.loads(out.read_text())["rows"]
    # 96×96 and 64×64 frames at stride 8: 12×12 + 8×8 tokens, then pooled by 2 and by 4
    assert [(r["image_pool"], r["image_tokens"]) for r in rows] == [(1, 208), (2, 52), (4, 13)]
    assert all(r["train_samples_per_s"] > 0 and r["infer_ms_p50"] > 0 for r in rows)
    text = docs.read_text()
    assert "untouched" in text and "<!-- act_tokens:start -->" in text and "| 4 | 13 |" in text
