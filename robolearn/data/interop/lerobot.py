"""Import LeRobotDataset v3 folders into episode stores and export stores to LeRobot, offline.

Everything goes through lerobot's own dataset API (`LeRobotDataset(repo_id, root=…)` to read,
`LeRobotDataset.create` / `add_frame` / `save_episode` / `finalize` to write); videos are
decoded with PyAV (`video_backend="pyav"`). Only local folders are read: a folder that lacks
metadata, data or video files is refused before lerobot is asked, so it never falls back to a
Hub download, and the Hub is switched to offline mode while lerobot runs.

Key mapping (import; export is the reverse):

| LeRobot | robolearn |
|---|---|
| `observation.state` | `state` (kind state) |
| `observation.images.<cam>` (image or video) | `<cam>` (kind image, uint8 H×W×3) |
| `observation.<name>` (other numeric) | `<name>` (kind state) |
| `action` | `action` (kind action; representation joint_position when every name ends in `.pos`) |
| `timestamp` | `data/timestamp` (the source's times, not measured ones) |
| per-frame `task` | the episode's task (an episode with several keeps them all in `extra.tasks`) |

Per-dimension names, fps and episode boundaries are kept. What has no counterpart (rewards,
`next.done`, strings, language annotations, depth maps) is refused with the key named; pass it
to `drop` to import without it.

An export also writes what LeRobot has no place for, so that importing it back gives the same
store: a float64 column `robolearn.time` (the measured frame time, then each observation's
capture time; LeRobot's own `timestamp` must be `frame_index / fps` for its video lookup, so
it cannot carry measured times) and `meta/robolearn.json` (the full feature spec with action
limits and representations, per-episode success, tags, start time and extra, the store's
attributes). LeRobot ignores both; `keep_times=False` leaves them out. Further action keys than
the primary one go to `robolearn.action.<key>` columns, which LeRobot policies do not read.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robolearn.data.interop import (
    Block,
    InteropError,
    Progress,
    SourceEpisode,
    block_frames,
    check_destination,
    feature_name,
    publish,
    select,
    staging_dir,
    write_store,
)
from robolearn.data.store import EpisodeStore
from robolearn.errors import RobolearnError
from robolearn.spec import Feature, FeatureSpec

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

log = logging.getLogger(__name__)

SIDECAR = "meta/robolearn.json"
SIDECAR_FORMAT = "robolearn.lerobot-export"
TIME_FEATURE = "robolearn.time"
EXTRA_ACTION_PREFIX = "robolearn.action."
# columns every LeRobot dataset has, filled by lerobot itself
LEROBOT_INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
IMAGE_NAMES = ["height", "width", "channels"]


@dataclass
class LeRobotImportConfig:
    """`episodes`: indices to import (all when None). `drop`: LeRobot keys to leave out.
    `repo_id`: the dataset's id (only a label here: nothing is downloaded).
    `tolerance_s`: how far a decoded video frame may lie from its timestamp.
    `codecs`: store codecs per robolearn key (default lossless)."""

    episodes: Sequence[int] | None = None
    drop: Sequence[str] = ()
    repo_id: str | None = None
    tolerance_s: float = 1e-4
    codecs: dict[str, str] = field(default_factory=dict)


@dataclass
class LeRobotExportConfig:
    """`video`: cameras as mp4 (lossy, small) or as PNG images in the parquet files (lossless).
    `episodes`: indices to export (all when None). `repo_id`: the dataset's id (default
    `robolearn/<dest name>`). `fps`: override for stores whose rate is not a whole number
    (LeRobot's is an integer). `action_key`: the store key that becomes LeRobot's `action`
    (default: `action`, or the only action key). `keep_times`: write `robolearn.time` and
    `meta/robolearn.json`. `vcodec`: video codec (default lerobot's, libsvtav1).
    `robot_type`: written to info.json."""

    video: bool = True
    episodes: Sequence[int] | None = None
    repo_id: str | None = None
    fps: int | None = None
    action_key: str | None = None
    keep_times: bool = True
    vcodec: str | None = None
    robot_type: str | None = None


# ---------------------------------------------------------------------- offline guard
@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hugging Face Hub and datasets in offline mode while lerobot runs, quietly (restored after).

    huggingface_hub reads HF_HUB_OFFLINE once at import, so the module constants are set as
    well as the environment. The datasets library's per-episode progress bars and the AV1
    encoder's banner are silenced: the CLI draws one progress bar of its own.
    """
    names = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "SVT_LOG": "1"}
    saved_env = {n: os.environ.get(n) for n in names}
    for n, v in names.items():
        if n != "SVT_LOG" or n not in os.environ:  # a user's SVT_LOG wins
            os.environ[n] = v
    patched: list[tuple[Any, str, Any]] = []
    for module_name, attr in (
        ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_DATASETS_OFFLINE"),
    ):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(module_name)
            if hasattr(module, attr):
                patched.append((module, attr, getattr(module, attr)))
                setattr(module, attr, True)
    bars_were_on = False
    with contextlib.suppress(ImportError):
        import datasets.utils as ds_utils

        bars_were_on = not ds_utils.are_progress_bars_disabled()
        ds_utils.disable_progress_bars()
    try:
        yield
    finally:
        if bars_were_on:
            ds_utils.enable_progress_bars()
        for module, attr, value in patched:
            setattr(module, attr, value)
        for n, v in saved_env.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def _lerobot() -> Any:
    try:
        with offline():
            from lerobot.datasets import lerobot_dataset
    except ImportError as e:
        raise InteropError(
            "LeRobot datasets need the lerobot package with its dataset extra: "
            "pip install 'lerobot[dataset]'"
        ) from e
    return lerobot_dataset


# ---------------------------------------------------------------------- import
@dataclass(frozen=True)
class _Column:
    """A LeRobot feature and the store key it becomes."""

    lerobot: str
    key: str
    video: bool = False


def _info(root: Path) -> dict[str, Any]:
    """info.json of a local LeRobot dataset, after checking the folder is one."""
    if not root.exists():
        raise InteropError(
            f"{root} does not exist; give the local folder of a LeRobot dataset (robolearn never "
            "downloads: fetch a Hub dataset first, e.g. `hf download --repo-type dataset "
            "USER/NAME --local-dir DIR`)"
        )
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise InteropError(
            f"{root} is not a LeRobot dataset (no meta/info.json); point to the folder that "
            "holds meta/, data/ and videos/"
        )
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise InteropError(f"{info_path} is not valid JSON ({e}); the dataset is damaged") from e
    version = str(info.get("codebase_version", "?"))
    if not version.startswith("v3"):
        raise InteropError(
            f"{root} is a LeRobot {version} dataset; robolearn reads v3.0. Convert it with "
            "lerobot's converter (python -m lerobot.scripts.convert_dataset_v21_to_v30)"
        )
    if not any((root / "data").glob("*/*.parquet")):
        raise InteropError(
            f"{root} has no data/chunk-*/file-*.parquet files; the copy is incomplete"
        )
    if not any((root / "meta" / "episodes").glob("*/*.parquet")):
        raise InteropError(f"{root} has no meta/episodes parquet files; the copy is incomplete")
    if info.get("total_tasks", 0) and not (root / "meta" / "tasks.parquet").is_file():
        raise InteropError(f"{root} has no meta/tasks.parquet; the copy is incomplete")
    return info


def _sidecar(root: Path) -> dict[str, Any] | None:
    path = root / SIDECAR
    if not path.is_file():
        return None
    try:
        side = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; ignored", path)
        return None
    return side if isinstance(side, dict) and side.get("format") == SIDECAR_FORMAT else None


def _dim_names(ft: Mapping[str, Any], size: int) -> list[str] | None:
    names = ft.get("names")
    if isinstance(names, dict) and len(names) == 1:  # older datasets: {"motors": [...]}
        names = next(iter(names.values()))
    if isinstance(names, list) and len(names) == size and all(isinstance(n, str) for n in names):
        return names
    return None


def _is_depth(ft: Mapping[str, Any]) -> bool:
    info = ft.get("info") or {}
    return bool(info.get("is_depth_map") or info.get("video.is_depth_map"))


def _refuse(lkey: str, ft: Mapping[str, Any], why: str) -> InteropError:
    return InteropError(
        f"LeRobot feature {lkey!r} ({ft.get('dtype')}, shape {list(ft.get('shape', []))}) "
        f"{why}; pass --drop {lkey} to import without it"
    )


def _feature(
    lkey: str, ft: Mapping[str, Any], shape: tuple[int, ...], dtype: str, kind: str
) -> Feature:
    """A state or action feature for a numeric LeRobot column (refused if it is not one)."""
    names = _dim_names(ft, math.prod(shape))
    rep = None
    if kind == "action" and names and all(n.endswith(".pos") for n in names):
        rep = "joint_position"  # LeRobot's arms name their joint targets `<joint>.pos`
    try:
        feature = Feature(shape, dtype, kind, names=names, representation=rep)
        feature.check(lkey)
    except RobolearnError as e:
        raise _refuse(lkey, ft, f"cannot be a robolearn {kind}: {e}") from e
    return feature


def _generic_mapping(
    features: Mapping[str, Mapping[str, Any]], drop: set[str]
) -> tuple[list[_Column], FeatureSpec]:
    """Columns and spec by LeRobot's naming conventions (a dataset robolearn did not write)."""
    columns: list[_Column] = []
    spec: dict[str, Feature] = {}
    for lkey, ft in features.items():
        if lkey in LEROBOT_INDEX_COLUMNS or lkey in drop or lkey == TIME_FEATURE:
            continue
        dtype = str(ft.get("dtype"))
        shape = tuple(int(s) for s in ft.get("shape", ()))
        if dtype in ("image", "video"):
            if _is_depth(ft):
                raise _refuse(lkey, ft, "is a depth map; robolearn images are uint8 colour")
            if len(shape) != 3:
                raise _refuse(lkey, ft, "is not an H×W×C (or C×H×W) camera")
            names = ft.get("names") or IMAGE_NAMES
            channel_first = len(names) == 3 and names[0] in ("channel", "channels")
            h, w, c = (shape[1], shape[2], shape[0]) if channel_first else shape
            if c != 3:
                raise _refuse(lkey, ft, f"has {c} channels; robolearn imports RGB cameras")
            key = lkey.removeprefix("observation.").removeprefix("images.")
            feature = Feature((h, w, c), "uint8", "image")
            column = _Column(lkey, key, video=dtype == "video")
        elif dtype in ("string", "language") or lkey.startswith("language"):
            raise _refuse(lkey, ft, "holds text; robolearn keeps one task string per episode")
        elif lkey.startswith("observation."):
            key = lkey.removeprefix("observation.")
            feature = _feature(lkey, ft, shape, dtype, "state")
            column = _Column(lkey, key)
        elif lkey == "action" or lkey.startswith("action."):
            key = lkey
            feature = _feature(lkey, ft, shape, dtype, "action")
            column = _Column(lkey, key)
        else:
            raise _refuse(
                lkey,
                ft,
                "is neither an observation nor an action, so robolearn has no place for it",
            )
        key = feature_name(key, f"LeRobot feature {lkey!r}")
        if key in spec:
            raise InteropError(
                f"LeRobot features {lkey!r} and {next(c.lerobot for c in columns if c.key == key)!r} "
                f"both map to {key!r}; pass --drop with one of them"
            )
        spec[key] = feature
        columns.append(column)
    if not spec:
        raise InteropError("nothing left to import (every feature was dropped)")
    return columns, FeatureSpec(spec)


def _sidecar_mapping(
    side: Mapping[str, Any], features: Mapping[str, Mapping[str, Any]], drop: set[str]
) -> tuple[list[_Column], FeatureSpec] | None:
    """Columns and spec as a robolearn export recorded them; None if the dataset has changed."""
    try:
        spec = FeatureSpec.from_dict(side["features"])
        keys: dict[str, str] = dict(side["keys"])
    except Exception as e:  # a sidecar we cannot use is not worth failing the import for
        log.warning(
            "meta/robolearn.json is unusable (%s); mapping keys by LeRobot's conventions", e
        )
        return None
    own = {k for k in features if k not in LEROBOT_INDEX_COLUMNS and k != TIME_FEATURE}
    if set(keys) != set(spec) or set(keys.values()) != own:
        log.warning("meta/robolearn.json does not match the dataset's features; ignored")
        return None
    columns = []
    kept: dict[str, Feature] = {}
    for key, feature in spec.items():
        lkey = keys[key]
        ft = features[lkey]
        if lkey in drop:
            continue
        shape = tuple(int(s) for s in ft.get("shape", ()))
        if shape != feature.shape:
            log.warning("meta/robolearn.json: %s has shape %s in the data; ignored", lkey, shape)
            return None
        columns.append(_Column(lkey, key, video=ft.get("dtype") == "video"))
        kept[key] = feature
    if not kept:
        raise InteropError("nothing left to import (every feature was dropped)")
    return columns, FeatureSpec(kept)


def read_lerobot(
    src: str | os.PathLike[str], config: LeRobotImportConfig | None = None
) -> tuple[FeatureSpec, float, list[SourceEpisode], dict[str, Any]]:
    """Spec, fps, episodes and store attributes of a local LeRobot v3 dataset (nothing written).

    The episodes read their frames lazily, block by block, through a `LeRobotDataset` of the
    chosen episodes (and lerobot's PyAV decoder for videos).
    """
    config = config or LeRobotImportConfig()
    root = Path(src)
    info = _info(root)
    features: dict[str, dict[str, Any]] = info.get("features", {})
    drop = set(config.drop)
    unknown = drop - set(features)
    if unknown:
        raise InteropError(
            f"--drop names {sorted(unknown)}, which the dataset does not have (it has "
            f"{sorted(k for k in features if k not in LEROBOT_INDEX_COLUMNS)})"
        )
    side = _sidecar(root)
    mapping = _sidecar_mapping(side, features, drop) if side else None
    if mapping is None:
        side = None
        columns, spec = _generic_mapping(features, drop)
    else:
        columns, spec = mapping
    chosen = select(int(info.get("total_episodes", 0)), config.episodes, str(root))
    repo_id = config.repo_id or f"local/{root.name}"
    # every file lerobot will want must be here before it is asked: a missing one would send
    # it to the Hub (refused offline, but with a message about the Hub, not the file)
    meta = _lerobot_call(root, lambda m: m.LeRobotDatasetMetadata(repo_id, root=root))
    for e in chosen:
        for c in columns:
            if c.video and not (root / meta.get_video_file_path(e, c.lerobot)).is_file():
                raise InteropError(
                    f"{root}: the video of {c.lerobot!r} for episode {e} "
                    f"({meta.get_video_file_path(e, c.lerobot)}) is missing; the copy is incomplete"
                )
    ds = _lerobot_call(
        root,
        lambda m: m.LeRobotDataset(
            repo_id,
            root=root,
            episodes=chosen,
            video_backend="pyav",
            return_uint8=True,
            tolerance_s=config.tolerance_s,
            download_videos=False,
        ),
    )
    meta = ds.meta
    # numpy formatting would turn float64 columns into float32: frames are read as Python
    # values (exact), index columns as numpy
    index_cols = ds.hf_dataset.with_format("numpy", columns=["episode_index", "task_index"])
    hf = ds.hf_dataset.with_format(None)
    episode_col = np.asarray(index_cols["episode_index"]).reshape(-1)
    task_col = np.asarray(index_cols["task_index"]).reshape(-1)
    tasks = {int(row.task_index): str(task) for task, row in meta.tasks.iterrows()}
    time_names = list(side.get("time_names", [])) if side else []
    use_times = bool(time_names) and TIME_FEATURE in features and TIME_FEATURE not in drop
    episodes_meta = list(side.get("episodes", [])) if side else []
    episodes = []
    for e in chosen:
        rows = np.flatnonzero(episode_col == e)
        length = int(meta.episodes[e]["length"])
        if rows.size != length or not rows.size or rows[-1] - rows[0] != rows.size - 1:
            raise InteropError(
                f"{root}: episode {e} has {rows.size} rows in data/ but its metadata says "
                f"{length}; the dataset is damaged"
            )
        task_ids = list(dict.fromkeys(task_col[rows].tolist()))
        names = [tasks.get(int(t), "") for t in task_ids]
        extra: dict[str, Any] = {}
        ep_side: dict[str, Any] = (
            episodes_meta[e]
            if e < len(episodes_meta) and isinstance(episodes_meta[e], dict)
            else {}
        )
        if len(names) > 1:
            log.warning(
                "episode %d has %d tasks; the first is its task, all are in extra", e, len(names)
            )
            extra["tasks"] = names
        extra.update(ep_side.get("extra", {}))
        success = ep_side.get("success")
        episodes.append(
            SourceEpisode(
                length=length,
                blocks=_episode_blocks(
                    ds,
                    hf,
                    root,
                    e,
                    int(rows[0]),
                    length,
                    columns,
                    spec,
                    time_names if use_times else [],
                    config.tolerance_s,
                ),
                task=str(ep_side.get("task", names[0] if names else "")),
                name=f"episode {e}",
                success=None if success is None else bool(success),
                tags=tuple(ep_side.get("tags", ())),
                start_time=float(ep_side.get("start_time", 0.0)),
                extra=extra,
            )
        )
    attrs: dict[str, Any] = dict(side.get("attrs", {})) if side else {}
    attrs["source"] = {
        "format": "lerobot",
        "path": str(root.resolve()),
        "codebase_version": info.get("codebase_version"),
        "robot_type": info.get("robot_type"),
    }
    fps = float(side["fps"]) if side and "fps" in side else float(info["fps"])
    return spec, fps, episodes, attrs


def _lerobot_call(root: Path, make: Callable[[Any], Any]) -> Any:
    """`make(lerobot_dataset_module)`, offline, with lerobot's failures as clear errors."""
    module = _lerobot()
    try:
        with offline():
            return make(module)
    except InteropError:
        raise
    except Exception as e:
        # lerobot only reaches for the Hub when local files are missing; offline, that fails
        raise InteropError(
            f"lerobot could not load {root} locally ({type(e).__name__}: {e}); check that the "
            "folder is a complete LeRobot v3 dataset"
        ) from e


def _episode_blocks(
    ds: LeRobotDataset,
    hf: Any,
    root: Path,
    episode: int,
    first_row: int,
    length: int,
    columns: list[_Column],
    spec: FeatureSpec,
    time_names: list[str],
    tolerance_s: float,
) -> Any:
    from lerobot.datasets.video_utils import decode_video_frames

    meta = ds.meta
    step = block_frames(spec)
    ep_meta = meta.episodes[episode]

    def blocks() -> Iterator[Block]:
        for a in range(0, length, step):
            b = min(a + step, length)
            rows = hf[first_row + a : first_row + b]
            ts = np.asarray(rows["timestamp"], dtype=np.float64).reshape(-1)
            values: dict[str, np.ndarray] = {}
            for c in columns:
                feature = spec[c.key]
                if c.video:
                    path = root / meta.get_video_file_path(episode, c.lerobot)
                    offset = float(ep_meta[f"videos/{c.lerobot}/from_timestamp"])
                    try:
                        with offline():
                            frames = decode_video_frames(
                                path,
                                [offset + float(t) for t in ts],
                                tolerance_s,
                                backend="pyav",
                                return_uint8=True,
                            )
                    except Exception as e:  # PyAV and lerobot raise many kinds
                        raise InteropError(
                            f"{path}: frames {a}..{b - 1} of episode {episode} could not be "
                            f"decoded ({type(e).__name__}: {e}); the video is damaged or its "
                            "timestamps are off by more than tolerance_s"
                        ) from e
                    values[c.key] = frames.numpy().transpose(0, 2, 3, 1)
                elif feature.kind == "image":
                    imgs = np.stack([np.asarray(img.convert("RGB")) for img in rows[c.lerobot]])
                    values[c.key] = imgs
                else:
                    values[c.key] = np.asarray(rows[c.lerobot], dtype=feature.dtype).reshape(
                        b - a, *feature.shape
                    )
            times: dict[str, np.ndarray] = {}
            if time_names:
                col = np.asarray(rows[TIME_FEATURE], dtype=np.float64).reshape(b - a, -1)
                ts = col[:, 0]
                times = {n: col[:, j + 1] for j, n in enumerate(time_names[1:])}
            yield Block(values, ts, times)

    return blocks


def import_lerobot(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    config: LeRobotImportConfig | None = None,
    *,
    progress: Progress | None = None,
) -> Path:
    """Import a local LeRobot v3 dataset folder into a new store at `dest`."""
    config = config or LeRobotImportConfig()
    check_destination(dest)
    spec, fps, episodes, attrs = read_lerobot(src, config)
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


# ---------------------------------------------------------------------- export
def lerobot_features(
    spec: FeatureSpec, *, video: bool, action_key: str | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """LeRobot's features dict for `spec`, and the map robolearn key → LeRobot key."""
    actions = spec.action_keys
    if action_key is None:
        if "action" in actions or not actions:
            action_key = "action" if actions else None
        elif len(actions) == 1:
            action_key = actions[0]
        else:
            raise InteropError(
                f"the store has action keys {actions} and none is called 'action'; pick the one "
                "LeRobot's 'action' is with --action-key"
            )
    elif action_key not in actions:
        raise InteropError(
            f"--action-key {action_key!r} is not an action key of the store {actions}"
        )
    features: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}
    for key, f in spec.items():
        if f.kind == "image":
            if f.shape[2] != 3:
                raise InteropError(
                    f"image {key!r} has {f.shape[2]} channels; LeRobot cameras are RGB "
                    "(3 channels; 1-channel ones are read as depth maps)"
                )
            lkey = f"observation.images.{key}"
            ft = {"dtype": "video" if video else "image", "shape": f.shape, "names": IMAGE_NAMES}
        else:
            if f.kind == "state":
                lkey = "observation.state" if key == "state" else f"observation.{key}"
            else:
                lkey = "action" if key == action_key else f"{EXTRA_ACTION_PREFIX}{key}"
            names = list(f.names) if f.names is not None and len(f.shape) == 1 else None
            ft = {"dtype": f.dtype, "shape": f.shape, "names": names}
        if lkey in features or lkey in LEROBOT_INDEX_COLUMNS:
            clash = next((k for k, v in keys.items() if v == lkey), lkey)
            raise InteropError(f"{key!r} and {clash!r} both become LeRobot's {lkey!r}; rename one")
        features[lkey] = ft
        keys[key] = lkey
    return features, keys


def _export_fps(store_fps: float, override: int | None) -> int:
    if override is not None:
        if int(override) <= 0:
            raise InteropError(f"fps must be a positive whole number, got {override}")
        return int(override)
    if abs(store_fps - round(store_fps)) > 1e-6 or round(store_fps) <= 0:
        raise InteropError(
            f"the store's rate is {store_fps:g} fps; LeRobot datasets have a whole-number rate. "
            "Pass --fps N to export at a nominal N fps"
        )
    return round(store_fps)


def export_lerobot(
    store_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    config: LeRobotExportConfig | None = None,
    *,
    progress: Progress | None = None,
) -> Path:
    """Write the chosen episodes of a store as a LeRobot v3 dataset folder at `dest`.

    The folder appears at `dest` only when the dataset is finalised; a failure leaves nothing.
    """
    config = config or LeRobotExportConfig()
    dest_path = check_destination(dest)
    module = _lerobot()
    with EpisodeStore.open(store_path, "r") as store:
        chosen = select(store.num_episodes, config.episodes, str(store_path))
        if not chosen:
            raise InteropError(f"{store_path} has no episodes to export")
        spec = store.spec
        features, keys = lerobot_features(spec, video=config.video, action_key=config.action_key)
        obs_keys = spec.observation_keys
        time_names = ["timestamp", *obs_keys]
        if config.keep_times:
            features[TIME_FEATURE] = {
                "dtype": "float64",
                "shape": (len(time_names),),
                "names": time_names,
            }
        fps = _export_fps(store.fps, config.fps)
        repo_id = config.repo_id or f"robolearn/{dest_path.name}"
        rgb_encoder = None
        if config.vcodec is not None:
            from lerobot.configs import RGBEncoderConfig

            rgb_encoder = RGBEncoderConfig(vcodec=config.vcodec)
        total = int(sum(store.episode(e).length for e in chosen))
        done = 0
        step = block_frames(spec)
        with staging_dir(dest_path, "exporting") as tmp, offline():
            root = tmp / dest_path.name
            ds = module.LeRobotDataset.create(
                repo_id,
                fps,
                features,
                root=root,
                robot_type=config.robot_type,
                use_videos=config.video,
                video_backend="pyav",
                rgb_encoder=rgb_encoder,
            )
            try:
                for e in chosen:
                    info = store.episode(e)
                    for a in range(info.start, info.end, step):
                        b = min(a + step, info.end)
                        data = {k: store.read(k, a, b) for k in spec}
                        stamps = [store.read("timestamp", a, b)]
                        stamps += [np.asarray(store.time_array(k)[a:b]) for k in obs_keys]
                        times = np.stack(stamps, axis=1).astype(np.float64)
                        for i in range(b - a):
                            frame: dict[str, Any] = {keys[k]: v[i] for k, v in data.items()}
                            if config.keep_times:
                                frame[TIME_FEATURE] = times[i]
                            frame["task"] = info.task
                            ds.add_frame(frame)
                        done += b - a
                        if progress is not None:
                            progress(done, total)
                    ds.save_episode(parallel_encoding=False)
                ds.finalize()
            except BaseException:
                with contextlib.suppress(Exception):
                    ds.finalize()  # close lerobot's open parquet writers before the folder goes
                raise
            if config.keep_times:
                _write_sidecar(root, store, chosen, keys, time_names)
            publish(root, dest_path)
    log.info(
        "exported %d episodes (%d frames) of %s to %s", len(chosen), total, store_path, dest_path
    )
    return dest_path


def _write_sidecar(
    root: Path, store: EpisodeStore, chosen: list[int], keys: dict[str, str], time_names: list[str]
) -> None:
    episodes = []
    for e in chosen:
        info = store.episode(e)
        episodes.append(
            {
                "task": info.task,
                "success": info.success,
                "tags": list(info.tags),
                "start_time": info.start_time,
                "extra": info.extra,
                "source_episode": e,
            }
        )
    side = {
        "format": SIDECAR_FORMAT,
        "version": 1,
        "fps": store.fps,
        "features": store.spec.to_dict(),
        "keys": keys,
        "time_names": time_names,
        "episodes": episodes,
        "attrs": store.user_attrs,
        "source": str(store.path),
    }
    (root / SIDECAR).write_text(json.dumps(side, indent=1, default=str))
