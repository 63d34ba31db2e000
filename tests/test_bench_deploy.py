"""benchmarks/deploy.py's table: every column from a case's figures, older cases without the
tick-work figures marked as unmeasured (the 2-minute cases themselves run by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from robolearn.deploy import DeployOutcome, summarize
from robolearn.loop import LoopStats

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "deploy.py"


def load_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_deploy", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outcome(episode: int, observe_ms: list[float], decide_ms: float) -> DeployOutcome:
    """An episode whose loop took the given stage times (the runner figures as the runner
    reports them)."""
    stats = LoopStats(50.0)
    for k, obs in enumerate(observe_ms):
        stats.period_errors.append(0.0)
        times = (obs, decide_ms, 1.0, 0.0)
        for stage, ms in zip(("observe", "decide", "act", "record"), times, strict=True):
            stats.stage_times[stage].append(ms / 1e3)
        stats.started, stats.ended = 0.0, k / 50
    lat = {"p50": 10.0, "p99": 20.0, "max": 25.0}
    return DeployOutcome(
        episode=episode,
        seed=episode,
        ended="timeout",
        success=False,
        ticks=len(observe_ms),
        seconds=len(observe_ms) / 50,
        loop=stats.summary(),
        runner={"inference_ms": lat, "action_age_ms": lat, "skipped_actions": 3},
        safety={"interventions": {"rate": 2}},
    )


def test_tick_work_is_the_sum_of_the_stages_pooled_over_episodes() -> None:
    fast_observe = [2.0] * 98 + [30.0, 30.0]  # two slow renders
    fast = outcome(0, fast_observe, decide_ms=1.0)
    slow = outcome(1, [6.0] * 100, decide_ms=1.0)
    s = summarize([fast, slow])
    # per tick: observe + 1 ms decide + 1 ms act; median over episodes of the p50s (4 and 8 ms)
    assert s["work_ms"]["p50_median"] == 6.0
    assert s["work_ms"]["p99_max"] == s["work_ms"]["max"] == 32.0  # the slow renders
    assert s["stage_ms"]["observe"]["mean"] == np.mean([np.mean(fast_observe), 6.0])
    assert s["stage_ms"]["observe"]["p99_max"] == 30.0
    assert s["stage_ms"]["decide"] == {"mean": 1.0, "p99_max": 1.0}

    bench = load_bench()
    case = {**s, "case": "act@50Hz", "mode": "ensemble", "seconds": 4.0}
    old = {k: v for k, v in case.items() if k not in ("work_ms", "stage_ms")}
    old["case"] = "diffusion@10Hz"
    meta = {"command": "benchmarks/deploy.py", "date": "today", "torch": "x", "threads": 1}
    lines = bench.table({"meta": meta, "cases": [case, old]}).splitlines()
    header = next(line for line in lines if line.startswith("| case"))
    rows = [line for line in lines if line.startswith("| act") or line.startswith("| diffusion")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    names = [c.strip() for c in header.strip("|").split("|")]
    col = names.index("tick work p50 / p99")
    assert all(len(c) == len(names) for c in cells)
    assert cells[0][col] == f"6.0 / {s['work_ms']['p99_max']:.1f} ms"
    assert cells[1][col] == "—"


def test_deadline_misses_are_traced_with_their_episode_and_slowest_stage() -> None:
    late = outcome(3, [2.0] * 10, decide_ms=1.0)
    late.loop["late_ticks"] = [
        {
            "tick": 7,
            "late_ms": 4.5,
            "start_lag_ms": 0.2,
            "stage_ms": {"observe": 2.0, "decide": 21.0, "act": 1.0, "record": 0.0},
        }
    ]
    s = summarize([outcome(0, [2.0] * 10, decide_ms=1.0), late])
    assert s["late_ticks"] == [{"episode": 3, **late.loop["late_ticks"][0]}]
    meta = {"command": "benchmarks/deploy.py", "date": "today", "torch": "x", "threads": 1}
    text = load_bench().table(
        {"meta": meta, "cases": [{**s, "case": "act@50Hz", "mode": "x", "seconds": 1.0}]}
    )
    assert (
        "- act@50Hz: episode 3, tick 7: ended 4.5 ms late, started 0.2 ms late; slowest stage "
        "decide 21.0 ms" in text
    )
