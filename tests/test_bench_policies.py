"""Smoke test of benchmarks/policies.py: a real quick run of one policy writes JSON and its docs section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "policies.py"


def test_quick_run_of_one_policy(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- sim:start -->\nuntouched\n<!-- sim:end -->\n")
    cmd = [sys.executable, str(SCRIPT), "--quick", "--policies", "mlp"]
    cmd += ["--out-dir", str(tmp_path), "--docs", str(docs)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=240)
    res = json.loads((tmp_path / "policies.json").read_text())
    assert list(res["inference"]) == ["mlp"]
    row = res["inference"]["mlp"]
    assert row["fp32"]["calls"] == 5 and row["fp32"]["p50_ms"] > 0
    assert row["gflop"] > 0 and row["memory_bound_ms"] > 0
    assert set(res["training"]) == {"mlp|camera|8", "mlp|state|64", "mlp|state|256"}
    text = docs.read_text()
    assert "untouched" in text and "<!-- policies:start -->" in text
    assert "| mlp | 11.9 M |" in text


def test_unknown_policy_is_refused(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--policies", "dqn", "--no-docs", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "unknown policies ['dqn']" in out.stderr
