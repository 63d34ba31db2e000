"""Lighter copies of an arm's URDF for drawing and for kinematics.

The Panda's URDF in pybullet_data draws each link with a detailed visual mesh (1–2 MB of OBJ
per link, about 10 MB in all) beside a much coarser collision mesh. Loading the visual meshes
costs 150–300 ms per `loadURDF`, and PyBullet's TinyRenderer spends most of a small frame on
their triangles: a 96×96 frame took 30–40 ms with them and 5–8 ms with the collision meshes on
the same 2-core machine (docs/benchmarks.md, "Simulation"). At 96×96 the two look the same.

`variant(urdf, "simple")` draws every link whose collision is one mesh with that mesh (links
built from primitives keep their own visuals and colours); `"full"` returns the URDF as it is.
Physics is untouched: PyBullet builds contacts and inertia from the collision shapes either
way. The variants are written once per process user into the temporary directory, named by a
hash of the source, with mesh paths made absolute so they resolve from anywhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import pybullet_data

VISUALS = ("simple", "full")

_LINK = re.compile(r"<link\b[^>]*?(?:/>|[^/]>.*?</link>)", re.S)
_VISUAL = re.compile(r"<visual\b.*?</visual>", re.S)
_COLLISION = re.compile(r"<collision\b.*?</collision>", re.S)
_MESH = re.compile(r'<mesh\s+filename="([^"]+)"')
_FILENAME = re.compile(r'filename="([^"]+)"')


def resolve(urdf: str) -> Path:
    """The URDF's file: as given, or inside pybullet_data for a relative name."""
    path = Path(urdf)
    if path.is_absolute():
        return path
    return Path(pybullet_data.getDataPath()) / path


def simplify(text: str) -> str:
    """Every link whose collision is one mesh draws that mesh instead of its visual meshes."""

    def link(m: re.Match[str]) -> str:
        body = m.group(0)
        collisions = [_MESH.search(c) for c in _COLLISION.findall(body)]
        if len(collisions) != 1 or collisions[0] is None:
            return body  # primitives, or several shapes: keep what the author drew
        coarse = collisions[0].group(1)
        return _VISUAL.sub(lambda v: _MESH.sub(f'<mesh filename="{coarse}"', v.group(0)), body)

    return _LINK.sub(link, text)


def absolute_paths(text: str, base: Path) -> str:
    """Mesh and texture paths (relative or `package://`) made absolute against `base`."""

    def fix(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("package://"):
            name = name.removeprefix("package://")
        path = Path(name)
        if not path.is_absolute():
            path = base / path
        return f'filename="{path}"'

    return _FILENAME.sub(fix, text)


def variant(urdf: str, visuals: str) -> str:
    """The path of `urdf` drawn with `visuals` ("simple" or "full"), for loadURDF."""
    if visuals not in VISUALS:
        raise ValueError(f"visuals={visuals!r}: choose one of {', '.join(VISUALS)}")
    if visuals == "full":
        return urdf
    source = resolve(urdf)
    text = source.read_text()
    derived = simplify(text)
    if derived == text:
        return urdf  # nothing to change (an arm built from primitives draws fast as it is)
    derived = absolute_paths(derived, source.parent)
    digest = hashlib.sha1(f"{source}\n{derived}".encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"robolearn-urdf-{os.getuid()}"
    out = folder / f"{source.stem}-{visuals}-{digest}.urdf"
    if not out.exists():
        folder.mkdir(parents=True, exist_ok=True)
        part = out.with_suffix(f".{os.getpid()}.part")  # atomic: parallel workers race here
        part.write_text(derived)
        os.replace(part, out)
    return str(out)
