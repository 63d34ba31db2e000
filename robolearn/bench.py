"""Helpers shared by the scripts in benchmarks/: each owns one marked section of a markdown file."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HEADER = "# Benchmarks\n\nFigures measured by the scripts in `benchmarks/`, newest run of each.\n"


def update_docs_section(path: Path, name: str, section: str) -> None:
    """Replace (or append) the block between `<!-- name:start -->` and `<!-- name:end -->`,
    leaving every other section of the file as it is; written atomically."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{section}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def seconds_per_train_step(loss: Callable[[], Any], params: Iterable[Any], steps: int) -> float:
    """Mean wall time of `steps` training steps (loss().backward(), AdamW, zero_grad) after one
    warm-up step: the training figure of the benchmarks that time a network in isolation."""
    import torch

    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps
