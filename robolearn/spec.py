"""The feature spec: one description of data shared by robots, episode stores and policies."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robolearn.errors import SpecError

KINDS = ("state", "action", "image")
# How an action feature commands the arm: absolute joint targets (the gripper included), or a
# change of end-effector pose per tick: dx dy dz (m), rotation vector drx dry drz (rad), gripper.
ACTION_REPRESENTATIONS = ("joint_position", "ee_delta")
LIMIT_MODES = ("clip", "reject")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
RESERVED_NAMES = frozenset({"timestamp", "episode_index", "frame_index", "index"})


@dataclass(frozen=True)
class Feature:
    """One named array per frame: its shape, dtype and what it is (state, action or image).

    `names` labels the dimensions of a 1-D feature (e.g. joint names). `low` / `high` are the
    limits of an action (one value per dimension); robots and the safety filter enforce them.
    Images are uint8 H×W×C. An action names its `representation` (see ACTION_REPRESENTATIONS)
    and what a robot does with values outside its limits (`on_limit`: clip or reject).
    """

    shape: tuple[int, ...]
    dtype: str
    kind: str
    names: tuple[str, ...] | None = None
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None
    representation: str | None = None
    on_limit: str = "clip"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        try:
            object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        except TypeError as e:
            raise SpecError(f"dtype {self.dtype!r} is not a numpy dtype") from e
        for attr in ("names", "low", "high"):
            value = getattr(self, attr)
            if value is not None:
                cast = str if attr == "names" else float
                object.__setattr__(self, attr, tuple(cast(v) for v in value))

    def check(self, name: str) -> None:
        """Raise SpecError if this feature is inconsistent; `name` is used in the message."""
        if self.kind not in KINDS:
            raise SpecError(f"feature {name!r}: kind {self.kind!r} is not one of {KINDS}")
        if any(s <= 0 for s in self.shape):
            raise SpecError(f"feature {name!r}: shape {self.shape} has a non-positive dimension")
        if self.kind == "image":
            if len(self.shape) != 3 or self.shape[2] not in (1, 3, 4):
                raise SpecError(
                    f"image {name!r} has shape {self.shape}; images are H×W×C with C in 1, 3 or 4"
                )
            if self.dtype != "uint8":
                raise SpecError(
                    f"image {name!r} has dtype {self.dtype}; images are stored as uint8"
                )
        elif not (np.issubdtype(self.dtype, np.number) or self.dtype == "bool"):
            raise SpecError(f"feature {name!r}: dtype {self.dtype} is not numeric")
        size = self.size
        if self.names is not None and len(self.names) != size:
            raise SpecError(
                f"feature {name!r} names {len(self.names)} dimensions but has {size} "
                f"(shape {self.shape}); give one name per dimension"
            )
        for attr in ("low", "high"):
            value = getattr(self, attr)
            if value is not None:
                if self.kind == "image":
                    raise SpecError(f"image {name!r} cannot have {attr} limits")
                if len(value) != size:
                    raise SpecError(
                        f"feature {name!r}: {attr} has {len(value)} values but the feature has "
                        f"{size} dimensions"
                    )
                if any(math.isnan(v) for v in value):
                    raise SpecError(f"feature {name!r}: {attr} contains NaN")
        if self.representation is not None:
            if self.kind != "action":
                raise SpecError(f"{self.kind} {name!r} cannot have an action representation")
            if self.representation not in ACTION_REPRESENTATIONS:
                raise SpecError(
                    f"action {name!r}: representation {self.representation!r} is not one of "
                    f"{ACTION_REPRESENTATIONS}"
                )
        if self.on_limit not in LIMIT_MODES:
            raise SpecError(
                f"feature {name!r}: on_limit {self.on_limit!r} is not one of {LIMIT_MODES}"
            )
        if self.low is not None and self.high is not None:
            bad = [i for i, (lo, hi) in enumerate(zip(self.low, self.high, strict=True)) if lo > hi]
            if bad:
                raise SpecError(f"feature {name!r}: low > high in dimensions {bad}")

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def dim_names(self) -> list[str]:
        """Per-dimension labels: the given names, or `0, 1, ...`."""
        return list(self.names) if self.names is not None else [str(i) for i in range(self.size)]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"shape": list(self.shape), "dtype": self.dtype, "kind": self.kind}
        for attr in ("names", "low", "high"):
            value = getattr(self, attr)
            if value is not None:
                d[attr] = list(value)
        if self.representation is not None:
            d["representation"] = self.representation
        if self.on_limit != "clip":
            d["on_limit"] = self.on_limit
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str = "?") -> Feature:
        unknown = set(d) - {
            "shape",
            "dtype",
            "kind",
            "names",
            "low",
            "high",
            "representation",
            "on_limit",
        }
        if unknown:
            raise SpecError(f"feature {name!r}: unknown field(s) {sorted(unknown)}")
        missing = {"shape", "dtype", "kind"} - set(d)
        if missing:
            raise SpecError(f"feature {name!r}: missing field(s) {sorted(missing)}")
        feature = cls(
            shape=tuple(d["shape"]),
            dtype=d["dtype"],
            kind=d["kind"],
            names=d.get("names"),
            low=d.get("low"),
            high=d.get("high"),
            representation=d.get("representation"),
            on_limit=d.get("on_limit", "clip"),
        )
        feature.check(name)
        return feature


@dataclass(frozen=True)
class FeatureSpec(Mapping[str, Feature]):
    """An ordered mapping name → Feature. Order is meaningful (it fixes concatenation order)."""

    features: dict[str, Feature] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.features:
            raise SpecError("a feature spec needs at least one feature")
        for name, feature in self.features.items():
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise SpecError(
                    f"feature name {name!r} is not allowed: use letters, digits, '_', '.' and '-'"
                )
            if name in RESERVED_NAMES:
                raise SpecError(f"feature name {name!r} is reserved by robolearn; rename it")
            if not isinstance(feature, Feature):
                raise SpecError(f"feature {name!r} is a {type(feature).__name__}, not a Feature")
            feature.check(name)

    def __getitem__(self, name: str) -> Feature:
        try:
            return self.features[name]
        except KeyError:
            raise KeyError(f"no feature {name!r}; the spec has {list(self.features)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.features)

    def __len__(self) -> int:
        return len(self.features)

    def keys_of(self, *kinds: str) -> list[str]:
        """Names of the features of the given kinds, in spec order."""
        for kind in kinds:
            if kind not in KINDS:
                raise SpecError(f"kind {kind!r} is not one of {KINDS}")
        return [n for n, f in self.features.items() if f.kind in kinds]

    @property
    def action_keys(self) -> list[str]:
        return self.keys_of("action")

    @property
    def observation_keys(self) -> list[str]:
        return self.keys_of("state", "image")

    @property
    def image_keys(self) -> list[str]:
        return self.keys_of("image")

    def to_dict(self) -> dict[str, Any]:
        return {name: f.to_dict() for name, f in self.features.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        if not isinstance(d, Mapping):
            raise SpecError(f"a feature spec is a mapping name → feature, got {type(d).__name__}")
        return cls({name: Feature.from_dict(f, name) for name, f in d.items()})

    def check_fits(
        self,
        other: FeatureSpec,
        keys: list[str] | None = None,
        *,
        what: str = "the dataset",
        other_what: str = "the policy",
    ) -> None:
        """Raise SpecError naming the first key where `other` does not match this spec.

        Only `keys` are compared (default: every key of `other`). Shapes, dtypes and kinds must be
        equal; per-dimension names must agree where both give them.
        """
        for name in keys if keys is not None else list(other):
            if name not in other.features:
                raise SpecError(f"{other_what} has no feature {name!r}")
            if name not in self.features:
                raise SpecError(
                    f"{other_what} expects {name!r}, which {what} does not have "
                    f"(it has {list(self.features)})"
                )
            mine, theirs = self.features[name], other.features[name]
            if mine.kind != theirs.kind:
                raise SpecError(
                    f"{name!r} is a {mine.kind} in {what} but a {theirs.kind} in {other_what}"
                )
            if mine.shape != theirs.shape:
                raise SpecError(
                    f"{mine.kind} {name!r} has shape {mine.shape} in {what} but "
                    f"{other_what} expects {theirs.shape}"
                )
            if mine.dtype != theirs.dtype:
                raise SpecError(
                    f"{name!r} is {mine.dtype} in {what} but {other_what} expects {theirs.dtype}"
                )
            if mine.representation != theirs.representation and None not in (
                mine.representation,
                theirs.representation,
            ):
                raise SpecError(
                    f"action {name!r} is {mine.representation} in {what} but "
                    f"{theirs.representation} in {other_what}"
                )
            if mine.names is not None and theirs.names is not None and mine.names != theirs.names:
                diff = [
                    f"{i}: {a!r} vs {b!r}"
                    for i, (a, b) in enumerate(zip(mine.names, theirs.names, strict=True))
                    if a != b
                ]
                raise SpecError(
                    f"{name!r} dimension names differ between {what} and {other_what} ({', '.join(diff[:4])})"
                )
