"""Import HDF5 demonstrations (ACT/ALOHA episode files, robomimic files) into an episode store.

ACT/ALOHA style: a folder of `episode_<N>.hdf5` files (or one such file), each holding
`/observations/qpos` (T, J), optional `/observations/qvel` and `/observations/effort`,
`/observations/images/<cam>` and `/action` (T, A); root attributes `sim` and, in ALOHA's
recorder, `compress`. Images are raw uint8 (T, H, W, C) arrays or, compressed, one JPEG per row
(T, padded bytes, zero padding after the image, as ALOHA writes them, or variable-length bytes).
They become store keys `state` (qpos), `qvel`, `effort`, one image key per camera and `action`
(representation joint_position: ACT's actions are absolute joint targets).

robomimic style: one file with `data/demo_<N>/obs/<key>` and `data/demo_<N>/actions`, and
`data` attributes `env_args` (JSON). Observation keys ending in `_image` are cameras (stored
without the suffix: `agentview_image` → `agentview`); the others are state keys of their own
name; `actions` becomes `action` (representation left open: robomimic actions are often
normalised controller commands).

Neither format stores time: frame i of an episode gets timestamp i / fps, where fps comes from
the file (`fps` attribute, or robomimic's `env_kwargs.control_freq`) or from the caller.
JPEG-compressed images are decoded with OpenCV exactly as ACT's loaders do (no colour swap:
the array that was encoded comes back; `swap_rb=True` swaps red and blue for files whose
recorder stored BGR).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from robolearn.data.interop import (
    Block,
    InteropError,
    Progress,
    SourceEpisode,
    block_frames,
    check_destination,
    feature_name,
    natural_key,
    select,
    write_store,
)
from robolearn.spec import ACTION_REPRESENTATIONS, Feature, FeatureSpec

log = logging.getLogger(__name__)

# ALOHA's qpos / action layout (two 6-joint arms, each with a gripper), as lerobot names it
ALOHA_JOINTS = tuple(
    f"{side}_{joint}"
    for side in ("left", "right")
    for joint in (
        "waist",
        "shoulder",
        "elbow",
        "forearm_roll",
        "wrist_angle",
        "wrist_rotate",
        "gripper",
    )
)
ALOHA_LOWDIM = {"observations/qpos": ("state", "pos"), "observations/qvel": ("qvel", "vel")}
ALOHA_LOWDIM["observations/effort"] = ("effort", "effort")


@dataclass
class HDF5ImportConfig:
    """How to read an HDF5 dataset.

    `fps`: the frame rate, needed when the file does not say it. `episodes`: indices (in the
    natural order of the files / demos) to import, all when None. `task`: the task string of
    every episode (default: what the file says, else empty). `drop`: source keys to leave out
    (as named in errors, e.g. `observations/effort`, `robot0_eye_in_hand_image`).
    `joint_names`: per-joint names of qpos/action (ALOHA files with 14 joints get ALOHA's).
    `action_representation`: of the imported action: `default` (joint_position for ACT files,
    left open for robomimic), `none` (left open) or one of ACTION_REPRESENTATIONS.
    `filter_key`: robomimic only, import the demos listed in `mask/<filter_key>`.
    `codecs`: store codecs per key (default lossless).
    """

    fps: float | None = None
    episodes: Sequence[int] | None = None
    task: str | None = None
    drop: Sequence[str] = ()
    joint_names: Sequence[str] | None = None
    action_representation: str = "default"
    filter_key: str | None = None
    swap_rb: bool = False
    codecs: dict[str, str] = field(default_factory=dict)

    def representation(self, default: str | None) -> str | None:
        rep = self.action_representation
        if rep == "default":
            return default
        if rep == "none":
            return None
        if rep not in ACTION_REPRESENTATIONS:
            raise InteropError(
                f"action representation {rep!r} is not one of default, none, "
                f"{', '.join(ACTION_REPRESENTATIONS)}"
            )
        return rep

    def dropped(self, key: str) -> bool:
        wanted = {d.strip("/") for d in self.drop}
        return key.strip("/") in wanted


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is a dependency of the dataset extra
        raise InteropError("reading HDF5 needs h5py: pip install h5py") from e
    return h5py


def _check_source(src: str | os.PathLike[str]) -> Path:
    path = Path(src)
    if not path.exists():
        raise InteropError(f"{path} does not exist; give a local HDF5 file or folder")
    return path


def _fps(config: HDF5ImportConfig, found: float | None, source: str, hint: str) -> float:
    fps = config.fps if config.fps is not None else found
    if fps is None:
        raise InteropError(f"{source} does not say its frame rate; pass --fps N ({hint})")
    fps = float(fps)
    if not (np.isfinite(fps) and fps > 0):
        raise InteropError(f"fps must be a positive number, got {fps}")
    return fps


def _attr_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_text(value.item())
    return str(value)


def _decode_jpeg(buf: np.ndarray, swap_rb: bool, where: str) -> np.ndarray:
    img = cv2.imdecode(np.ascontiguousarray(buf, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise InteropError(f"{where}: the compressed image could not be decoded (not a JPEG/PNG)")
    return img[..., ::-1].copy() if swap_rb else img


# ---------------------------------------------------------------------- ACT / ALOHA
@dataclass(frozen=True)
class _AlohaKey:
    """One array of an ACT episode file and the store key it becomes."""

    path: str  # inside the file, without leading slash
    key: str
    kind: str
    compressed: bool = False


def aloha_files(src: str | os.PathLike[str]) -> list[Path]:
    """The episode files of an ACT-style dataset (one file, or a folder of episode_*.hdf5)."""
    path = _check_source(src)
    if path.is_file():
        return [path]
    files = sorted(
        (p for p in path.iterdir() if p.suffix in (".hdf5", ".h5") and p.is_file()),
        key=lambda p: natural_key(p.name),
    )
    episodes = [p for p in files if p.name.startswith("episode")]
    files = episodes or files
    if not files:
        raise InteropError(
            f"{path} holds no .hdf5 files; give the folder of ACT episode_*.hdf5 files"
        )
    return files


def read_aloha(
    src: str | os.PathLike[str], config: HDF5ImportConfig | None = None
) -> tuple[FeatureSpec, float, list[SourceEpisode], dict[str, Any]]:
    """Spec, fps, episodes and store attributes of an ACT-style dataset (nothing written)."""
    config = config or HDF5ImportConfig()
    h5py = _h5py()
    files = aloha_files(src)
    chosen = [files[i] for i in select(len(files), config.episodes, str(src))]
    with h5py.File(chosen[0], "r") as f:
        keys, spec, attrs = _aloha_layout(f, chosen[0].name, config)
        found_fps = next((float(f.attrs[a]) for a in ("fps", "frame_rate") if a in f.attrs), None)
    fps = _fps(config, found_fps, str(src), "ALOHA records at 50 fps")
    episodes = []
    for file in chosen:
        with h5py.File(file, "r") as f:
            _refuse_unknown(f, file.name, config)
            length = _aloha_check(f, file.name, keys, spec)
            sim = bool(f.attrs["sim"]) if "sim" in f.attrs else None
            task = config.task
            if task is None:
                task = next(
                    (
                        _attr_text(f.attrs[a])
                        for a in ("task", "language_instruction", "instruction")
                        if a in f.attrs
                    ),
                    "",
                )
        extra: dict[str, Any] = {"source_file": file.name}
        if sim is not None:
            extra["sim"] = sim
        episodes.append(
            SourceEpisode(
                length=length,
                blocks=_aloha_blocks(file, keys, config.swap_rb, fps, block_frames(spec)),
                task=task,
                name=file.name,
                extra=extra,
            )
        )
    store_attrs = {"source": {"format": "aloha-hdf5", "path": str(Path(src).resolve()), **attrs}}
    return spec, fps, episodes, store_attrs


def _aloha_layout(
    f: Any, name: str, config: HDF5ImportConfig
) -> tuple[list[_AlohaKey], FeatureSpec, dict[str, Any]]:
    for required in ("observations/qpos", "action"):
        if required not in f:
            raise InteropError(
                f"{name} has no /{required}; ACT-style files hold /observations/qpos, "
                "/observations/images/<camera> and /action (use --format robomimic-hdf5 for "
                "robomimic files)"
            )
    joints = config.joint_names
    qpos = f["observations/qpos"]
    if joints is not None and (qpos.ndim != 2 or len(joints) != qpos.shape[1]):
        raise InteropError(
            f"{len(joints)} joint names given but /observations/qpos of {name} has shape "
            f"{qpos.shape}; give one name per column"
        )
    keys: list[_AlohaKey] = []
    features: dict[str, Feature] = {}
    for path, (key, suffix) in ALOHA_LOWDIM.items():
        if path not in f or config.dropped(path):
            continue
        ds = f[path]
        features[key] = _lowdim_feature(
            ds, f"{name}:/{path}", "state", _joint_names(ds, joints, suffix)
        )
        keys.append(_AlohaKey(path, key, "state"))
    if "observations/images" in f:
        for cam in sorted(f["observations/images"], key=natural_key):
            path = f"observations/images/{cam}"
            if config.dropped(path) or config.dropped(cam):
                continue
            ds = f[path]
            where = f"{name}:/{path}"
            compressed = ds.ndim == 2 or ds.dtype.kind == "O"
            if compressed:
                if ds.shape[0] == 0:
                    raise InteropError(f"{where} has no frames")
                shape = _decode_jpeg(_row_bytes(ds[0]), False, where).shape
            elif ds.ndim == 4 and ds.dtype == np.uint8:
                shape = ds.shape[1:]
            else:
                raise InteropError(
                    f"{where} has shape {ds.shape} and dtype {ds.dtype}; cameras are uint8 "
                    f"(T, H, W, C) arrays or JPEG bytes per row. Pass --drop {path} to leave it out"
                )
            key = feature_name(cam, where)
            if key in features:
                raise InteropError(f"{where}: camera name {cam!r} clashes with the {key!r} key")
            features[key] = Feature(tuple(shape), "uint8", "image")
            keys.append(_AlohaKey(path, key, "image", compressed))
    action = f["action"]
    rep = config.representation("joint_position")
    features["action"] = _lowdim_feature(
        action, f"{name}:/action", "action", _joint_names(action, joints, "pos"), rep
    )
    keys.append(_AlohaKey("action", "action", "action"))
    attrs: dict[str, Any] = {}
    for a in ("sim", "compress"):
        if a in f.attrs:
            attrs[a] = bool(f.attrs[a])
    return keys, FeatureSpec(features), attrs


def _refuse_unknown(f: Any, name: str, config: HDF5ImportConfig) -> None:
    """Arrays an ACT file may hold beyond ours (Mobile ALOHA's base_action…) are not lost
    silently: each is refused unless the caller drops it."""
    h5py = _h5py()
    found: list[str] = []
    f.visititems(lambda path, obj: found.append(path) if isinstance(obj, h5py.Dataset) else None)
    for path in found:
        if (
            path in ALOHA_LOWDIM
            or path in ("action", "compress_len")
            or path.startswith("observations/images/")
            or config.dropped(path)
        ):
            continue
        ds = f[path]
        raise InteropError(
            f"{name}:/{path} (shape {ds.shape}, {ds.dtype}) has no place in the store (from ACT "
            "files robolearn takes qpos, qvel, effort, the cameras and action); pass "
            f"--drop {path} to import without it"
        )


def _joint_names(ds: Any, joints: Sequence[str] | None, suffix: str) -> list[str] | None:
    if ds.ndim != 2:
        return None
    if joints is None and ds.shape[1] == len(ALOHA_JOINTS):
        joints = ALOHA_JOINTS
    if joints is None or len(joints) != ds.shape[1]:
        return None
    return [f"{j}.{suffix}" for j in joints]


def _lowdim_feature(
    ds: Any,
    where: str,
    kind: str,
    names: Sequence[str] | None = None,
    representation: str | None = None,
) -> Feature:
    if ds.ndim < 2 or ds.dtype.kind not in "biuf":
        raise InteropError(
            f"{where} has shape {ds.shape} and dtype {ds.dtype}; a {kind} is a numeric (T, D) array"
        )
    return Feature(
        tuple(ds.shape[1:]), ds.dtype.name, kind, names=names, representation=representation
    )


def _row_bytes(row: Any) -> np.ndarray:
    if isinstance(row, bytes | bytearray):
        return np.frombuffer(row, dtype=np.uint8)
    return np.asarray(row, dtype=np.uint8).reshape(-1)


def _aloha_check(f: Any, name: str, keys: list[_AlohaKey], spec: FeatureSpec) -> int:
    """The episode's frame count, after checking it has every key with the first file's shape."""
    length = None
    for k in keys:
        if k.path not in f:
            raise InteropError(
                f"{name} has no /{k.path}, which the first episode has; every episode needs the "
                f"same arrays (or pass --drop {k.path})"
            )
        ds = f[k.path]
        if not k.compressed and tuple(ds.shape[1:]) != spec[k.key].shape:
            raise InteropError(
                f"{name}:/{k.path} has frames of shape {tuple(ds.shape[1:])} but the first "
                f"episode's are {spec[k.key].shape}"
            )
        if length is None:
            length, first = int(ds.shape[0]), k.path
        elif int(ds.shape[0]) != length:
            raise InteropError(
                f"{name}: /{k.path} has {ds.shape[0]} rows but /{first} has {length}; every "
                "array of an episode has one row per frame"
            )
    if not length:
        raise InteropError(f"{name} has no frames")
    return length


def _aloha_blocks(file: Path, keys: list[_AlohaKey], swap_rb: bool, fps: float, step: int) -> Any:
    def blocks() -> Iterator[Block]:
        with _h5py().File(file, "r") as f:
            length = int(f[keys[0].path].shape[0])
            for a in range(0, length, step):
                b = min(a + step, length)
                values = {}
                for k in keys:
                    raw = f[k.path][a:b]
                    if k.compressed:
                        where = f"{file.name}:/{k.path}"
                        raw = np.stack([_decode_jpeg(_row_bytes(r), swap_rb, where) for r in raw])
                    elif k.kind == "image" and swap_rb:
                        raw = raw[..., ::-1]
                    values[k.key] = raw
                yield Block(values, np.arange(a, b, dtype=np.float64) / fps)

    return blocks


def import_aloha(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    config: HDF5ImportConfig | None = None,
    *,
    progress: Progress | None = None,
) -> Path:
    """Import an ACT/ALOHA-style HDF5 dataset into a new store at `dest`."""
    check_destination(dest)
    spec, fps, episodes, attrs = read_aloha(src, config)
    return write_store(
        dest,
        spec,
        fps,
        episodes,
        source=str(src),
        codecs=(config or HDF5ImportConfig()).codecs,
        attrs=attrs,
        progress=progress,
    )


# ---------------------------------------------------------------------- robomimic
def read_robomimic(
    src: str | os.PathLike[str], config: HDF5ImportConfig | None = None
) -> tuple[FeatureSpec, float, list[SourceEpisode], dict[str, Any]]:
    """Spec, fps, episodes and store attributes of a robomimic-style file (nothing written)."""
    config = config or HDF5ImportConfig()
    h5py = _h5py()
    path = _check_source(src)
    if path.is_dir():
        raise InteropError(f"{path} is a folder; a robomimic dataset is one .hdf5 file")
    with h5py.File(path, "r") as f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise InteropError(
                f"{path} has no 'data' group; robomimic files hold data/demo_N/obs/<key> and "
                "data/demo_N/actions (use --format aloha-hdf5 for ACT episode files)"
            )
        data = f["data"]
        demos = sorted((d for d in data if d.startswith("demo")), key=natural_key)
        if config.filter_key is not None:
            mask = f.get(f"mask/{config.filter_key}")
            if mask is None:
                have = sorted(f["mask"]) if "mask" in f else []
                raise InteropError(
                    f"{path} has no filter key {config.filter_key!r} (it has {have or 'none'})"
                )
            listed = {_attr_text(m) for m in mask[:]}
            demos = [d for d in demos if d in listed]
        if not demos:
            raise InteropError(f"{path}: data holds no demo_N groups")
        env_args: dict[str, Any] = {}
        if "env_args" in data.attrs:
            try:
                env_args = json.loads(_attr_text(data.attrs["env_args"]))
            except json.JSONDecodeError:
                log.warning("%s: env_args is not JSON; ignored", path)
        control = env_args.get("env_kwargs", {}).get("control_freq")
        found_fps = data.attrs.get("fps", control)
        fps = _fps(config, found_fps, str(path), "robomimic's robosuite tasks run at 20 Hz")
        chosen = [demos[i] for i in select(len(demos), config.episodes, str(path))]
        layout, spec = _robomimic_layout(data[chosen[0]], f"{path.name}:data/{chosen[0]}", config)
        episodes = []
        for demo in chosen:
            group = data[demo]
            length = _robomimic_check(group, f"{path.name}:data/{demo}", layout, spec)
            task = config.task
            if task is None:
                task = _robomimic_task(group) or str(env_args.get("env_name", ""))
            episodes.append(
                SourceEpisode(
                    length=length,
                    blocks=_robomimic_blocks(path, demo, layout, fps, block_frames(spec)),
                    task=task,
                    name=f"data/{demo}",
                    extra={"source_demo": demo},
                )
            )
    attrs = {"source": {"format": "robomimic-hdf5", "path": str(path.resolve())}}
    if env_args:
        attrs["source"]["env_args"] = env_args
    return spec, fps, episodes, attrs


def _robomimic_layout(
    group: Any, where: str, config: HDF5ImportConfig
) -> tuple[dict[str, str], FeatureSpec]:
    """(source path inside the demo → store key) and the spec, from the first demo."""
    if "actions" not in group:
        raise InteropError(f"{where} has no 'actions'; robomimic demos hold obs/<key> and actions")
    if "obs" not in group:
        raise InteropError(
            f"{where} has no 'obs' group; robomimic demos hold obs/<key> and actions"
        )
    layout: dict[str, str] = {}
    features: dict[str, Feature] = {}
    for obs in sorted(group["obs"], key=natural_key):
        src = f"obs/{obs}"
        if config.dropped(src) or config.dropped(obs):
            continue
        ds = group[src]
        here = f"{where}/{src}"
        if obs.endswith("_image"):
            if ds.dtype != np.uint8 or ds.ndim != 4:
                raise InteropError(
                    f"{here} has shape {ds.shape} and dtype {ds.dtype}; an image obs is uint8 "
                    f"(T, H, W, C). Pass --drop {obs} to leave it out"
                )
            key = feature_name(obs[: -len("_image")], here)
            feature = Feature(tuple(ds.shape[1:]), "uint8", "image")
        elif obs.endswith("_depth") or (ds.dtype == np.uint8 and ds.ndim == 4):
            raise InteropError(
                f"{here} (shape {ds.shape}, {ds.dtype}) is a depth map or an image whose name "
                f"does not end in _image; robolearn stores uint8 colour images only. Pass "
                f"--drop {obs} to leave it out"
            )
        else:
            key = feature_name(obs, here)
            feature = _lowdim_feature(ds, here, "state")
        if key in features:
            raise InteropError(f"{here} maps to the key {key!r}, which another obs already uses")
        features[key] = feature
        layout[src] = key
    if "action" in features:
        raise InteropError(f"{where}/obs/action clashes with the actions; pass --drop action")
    rep = config.representation(None)
    names = list(config.joint_names) if config.joint_names is not None else None
    features["action"] = _lowdim_feature(group["actions"], f"{where}/actions", "action", names, rep)
    layout["actions"] = "action"
    if names is not None and len(names) != features["action"].size:
        raise InteropError(
            f"{len(names)} names given but {where}/actions has {features['action'].size} columns"
        )
    return layout, FeatureSpec(features)


def _robomimic_check(group: Any, where: str, layout: dict[str, str], spec: FeatureSpec) -> int:
    length = None
    for src, key in layout.items():
        if src not in group:
            raise InteropError(
                f"{where} has no {src}, which the first demo has; every demo needs the same "
                f"keys (or pass --drop {src.removeprefix('obs/')})"
            )
        ds = group[src]
        if tuple(ds.shape[1:]) != spec[key].shape:
            raise InteropError(
                f"{where}/{src} has frames of shape {tuple(ds.shape[1:])} but the first demo's "
                f"are {spec[key].shape}"
            )
        if length is None:
            length, first = int(ds.shape[0]), src
        elif int(ds.shape[0]) != length:
            raise InteropError(
                f"{where}: {src} has {ds.shape[0]} rows but {first} has {length}; every array "
                "of a demo has one row per frame"
            )
    if not length:
        raise InteropError(f"{where} has no frames")
    return length


def _robomimic_task(group: Any) -> str:
    """A language instruction stored with the demo (robocasa-style `ep_meta`), if any."""
    if "ep_meta" in group.attrs:
        try:
            meta = json.loads(_attr_text(group.attrs["ep_meta"]))
        except json.JSONDecodeError:
            return ""
        return str(meta.get("lang", "")) if isinstance(meta, dict) else ""
    return ""


def _robomimic_blocks(path: Path, demo: str, layout: dict[str, str], fps: float, step: int) -> Any:
    def blocks() -> Iterator[Block]:
        with _h5py().File(path, "r") as f:
            group = f["data"][demo]
            length = int(group["actions"].shape[0])
            for a in range(0, length, step):
                b = min(a + step, length)
                values = {key: group[src][a:b] for src, key in layout.items()}
                yield Block(values, np.arange(a, b, dtype=np.float64) / fps)

    return blocks


def import_robomimic(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    config: HDF5ImportConfig | None = None,
    *,
    progress: Progress | None = None,
) -> Path:
    """Import a robomimic-style HDF5 file into a new store at `dest`."""
    config = config or HDF5ImportConfig()
    check_destination(dest)
    spec, fps, episodes, attrs = read_robomimic(src, config)
    return write_store(
        dest,
        spec,
        fps,
        episodes,
        source=str(src),
        codecs=config.codecs,
        attrs=attrs,
        progress=progress,
    )
