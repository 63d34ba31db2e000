"""Smoke test of benchmarks/sim.py: a tiny real run, the docs section, and merging partial runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "sim.py"
OTHER = "<!-- data_io:start -->\n## Data I/O\nuntouched\n<!-- data_io:end -->\n"


def load_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_sim", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_json_and_its_docs_section(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n" + OTHER)
    # Run as the docs say (a script in benchmarks/, whose name would shadow the sim package).
    cmd = [sys.executable, str(SCRIPT), "--quick", "--tasks", "reach", "--seeds", "1"]
    cmd += ["--out-dir", str(tmp_path), "--docs", str(docs)]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, timeout=240)

    results = json.loads((tmp_path / "sim.json").read_text())
    assert results["runs"][0]["quick"] is True
    control = results["control"]
    assert [r["observation"] for r in control] == ["state only", "1 × 96×96", "2 × 224×224"]
    assert all(r["available"] and r["ticks_per_s"] > 0 for r in control)
    assert control[0]["physics_steps_per_tick"] == 24
    assert control[0]["physics_steps_per_s_at_rest"] > 0  # measured without cameras only
    tiny = results["render"]["renderers"]["tiny"]
    assert [r["resolution"] for r in tiny["rows"]] == ["96x96", "224x224", "480x640"]
    assert "egl" in results["render"]["renderers"]  # measured, or why not
    full = results["render"]["renderers"]["tiny_full"]  # the URDF's detailed meshes
    assert tiny["visuals"] == "simple" and full["visuals"] == "full"
    assert [r["resolution"] for r in full["rows"]] == ["96x96", "224x224", "480x640"]
    experts = {(r["arm"], r["task"]): r for r in results["experts"]}
    assert set(experts) == {("panda", "reach"), ("so101", "reach")}
    assert experts["panda", "reach"]["episodes"] == 1
    reach = experts["panda", "reach"]  # reach scores 1 on success and 0 otherwise
    assert reach["mean_score"] == reach["success_rate"] == 1.0

    text = docs.read_text()
    assert OTHER in text
    section = text[text.index("<!-- sim:start -->") : text.index("<!-- sim:end -->")]
    assert "--quick --tasks reach --seeds 1" in section and "quick mode" in section
    assert "Tiny, full meshes" in section and "| final score |" in section

    # --render-only rebuilds the same section from the JSON.
    docs.write_text("# Benchmarks\n\n" + OTHER)
    assert (
        load_bench().main(["--render-only", "--out-dir", str(tmp_path), "--docs", str(docs)]) == 0
    )
    assert docs.read_text().count("<!-- sim:start -->") == 1
    assert OTHER in docs.read_text()


def test_a_partial_run_replaces_only_its_rows() -> None:
    bench = load_bench()

    def row(task: str, arm: str, success: int) -> dict:
        return {"task": task, "arm": arm, "seeds": 100, "available": True, "success": success}

    old = {
        "runs": [{"command": "full"}],
        "experts": [
            {**row("reach", "panda", 100), "run": 0},
            {**row("stack", "panda", 70), "run": 0},
        ],
        "render": {"renderers": {}, "run": 0},
    }
    new = {"runs": [{"command": "stack only"}], "experts": [row("stack", "panda", 95)]}
    merged = bench.merge(old, new, ["experts"])
    assert [r["command"] for r in merged["runs"]] == ["full", "stack only"]
    by_task = {r["task"]: r for r in merged["experts"]}
    assert (by_task["reach"]["success"], by_task["reach"]["run"]) == (100, 0)
    assert (by_task["stack"]["success"], by_task["stack"]["run"]) == (95, 1)
    assert merged["render"]["run"] == 0

    # A run whose rows were all replaced is dropped, and the rest renumbered.
    newer = {"runs": [{"command": "all experts"}], "experts": [row("reach", "panda", 99)]}
    merged = bench.merge({**merged, "render": {"renderers": {}, "run": 1}}, newer, ["experts"])
    assert [r["command"] for r in merged["runs"]] == ["stack only", "all experts"]
