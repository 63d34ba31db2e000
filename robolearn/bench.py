"""Helpers shared by the scripts in benchmarks/: each owns one marked section of a markdown file."""

from __future__ import annotations

import re
from pathlib import Path

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
