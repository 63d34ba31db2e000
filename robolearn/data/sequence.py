"""SequenceDataset: training windows (observation history + action horizon) from an episode store."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from robolearn.data.stats import KeyStats, get_stats
from robolearn.data.store import EpisodeStore
from robolearn.errors import SpecError

CacheMode = Literal["none", "lowdim", "all"]


def split_episodes(
    num_episodes: int, val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split episode indices into (train, val) at random; at least one of each when possible."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(num_episodes)
    n_val = round(num_episodes * val_fraction)
    if val_fraction > 0 and num_episodes >= 2:
        n_val = min(max(n_val, 1), num_episodes - 1)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


class _Batch(list):
    """Per-sample views of one batch; `collate_batched` hands on the batch without a copy."""

    batch: dict[str, torch.Tensor]


def collate_batched(samples: Any) -> dict[str, torch.Tensor]:
    """DataLoader collate_fn for SequenceDataset: the batch is already stacked."""
    if isinstance(samples, _Batch):
        return samples.batch
    return torch.utils.data.default_collate(samples)


class SequenceDataset(Dataset):
    """Windows of `n_obs_steps` observations and `horizon` actions around every frame.

    For the window anchored at frame t of an episode, observations are frames
    t-n_obs_steps+1 .. t and actions are frames t+action_offset .. t+action_offset+horizon-1
    (default offset -(n_obs_steps-1): the horizon starts with the first observed step, as in
    diffusion policy; ACT uses n_obs_steps=1 so it starts at t). Frames before an episode's
    start or after its end repeat the edge frame and are marked in `obs_is_pad` /
    `action_is_pad`.

    Each item is a dict of tensors: every observation key (n_obs_steps, ...), every action key
    (horizon, ...), images as uint8 H×W×C (policies convert them on their device), plus
    `obs_is_pad`, `action_is_pad`, `episode_index` and `frame_index`.

    `cache`: "lowdim" (default) keeps states and actions in RAM and reads images from disk,
    "all" loads everything into RAM, "none" reads everything from the store on each access.
    Batched access (`__getitems__`) reads each key once per batch; use `loader()` or pass
    `collate_fn=collate_batched` to a DataLoader to avoid a second copy.
    """

    def __init__(
        self,
        store: EpisodeStore | str | os.PathLike[str],
        *,
        n_obs_steps: int = 2,
        horizon: int = 16,
        action_offset: int | None = None,
        obs_keys: Sequence[str] | None = None,
        action_keys: Sequence[str] | None = None,
        episodes: Sequence[int] | None = None,
        cache: CacheMode = "lowdim",
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if n_obs_steps < 1 or horizon < 1:
            raise ValueError(f"n_obs_steps ({n_obs_steps}) and horizon ({horizon}) must be ≥ 1")
        if cache not in ("none", "lowdim", "all"):
            raise ValueError(f"cache must be 'none', 'lowdim' or 'all', got {cache!r}")
        if not isinstance(store, EpisodeStore):
            store = EpisodeStore.open(store, "r", storage_options=storage_options)
        self._store: EpisodeStore | None = store
        self._pid = os.getpid()
        self._path = store.path
        self._storage_options = dict(storage_options or {})
        self.spec = store.spec
        self.fps = store.fps
        self.n_obs_steps = int(n_obs_steps)
        self.horizon = int(horizon)
        self.action_offset = (
            -(self.n_obs_steps - 1) if action_offset is None else int(action_offset)
        )
        self.obs_keys = list(obs_keys) if obs_keys is not None else self.spec.observation_keys
        self.action_keys = list(action_keys) if action_keys is not None else self.spec.action_keys
        for key in self.obs_keys:
            if key not in self.spec or self.spec[key].kind == "action":
                raise SpecError(
                    f"observation key {key!r} is not in the store; it has {self.spec.observation_keys}"
                )
        for key in self.action_keys:
            if key not in self.spec or self.spec[key].kind != "action":
                raise SpecError(
                    f"action key {key!r} is not in the store; it has {self.spec.action_keys}"
                )
        if not self.action_keys:
            raise SpecError(f"{store.path} has no action key to learn")
        n_ep = store.num_episodes
        self.episodes = list(range(n_ep)) if episodes is None else [int(e) for e in episodes]
        for e in self.episodes:
            if not 0 <= e < n_ep:
                raise IndexError(f"episode {e} does not exist; the store has {n_ep} episodes")
        starts, ends = store.episode_starts, store.episode_ends
        lengths = ends[self.episodes] - starts[self.episodes]
        # One anchor per frame of the chosen episodes, with its episode's bounds.
        self._anchor = np.concatenate(
            [np.arange(starts[e], ends[e]) for e in self.episodes] or [np.empty(0, np.int64)]
        ).astype(np.int64)
        self._ep_start = np.repeat(starts[self.episodes], lengths).astype(np.int64)
        self._ep_end = np.repeat(ends[self.episodes], lengths).astype(np.int64)
        self._ep_index = np.repeat(np.asarray(self.episodes, dtype=np.int64), lengths)
        self._obs_off = np.arange(-(self.n_obs_steps - 1), 1, dtype=np.int64)
        self._act_off = np.arange(
            self.action_offset, self.action_offset + self.horizon, dtype=np.int64
        )
        self.cache_mode = cache
        self._cache: dict[str, np.ndarray] = {}
        for key in self.obs_keys + self.action_keys:
            image = self.spec[key].kind == "image"
            if cache == "all" or (cache == "lowdim" and not image):
                self._cache[key] = store.read(key, 0, store.num_frames)

    # ------------------------------------------------------------------ store handle
    @property
    def store(self) -> EpisodeStore:
        """The store, reopened once in each DataLoader worker process."""
        if self._store is None or self._pid != os.getpid():
            self._store = EpisodeStore.open(self._path, "r", storage_options=self._storage_options)
            self._pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    def stats(self) -> dict[str, KeyStats]:
        """Normalisation statistics of the store (all episodes), computed once and kept."""
        return get_stats(self.store)

    @property
    def cache_bytes(self) -> int:
        return sum(a.nbytes for a in self._cache.values())

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self._anchor.size)

    def _read(self, key: str, frames: np.ndarray) -> np.ndarray:
        cached = self._cache.get(key)
        if cached is not None:
            return cached[frames]
        return self.store.read_frames(key, frames)

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """A stacked batch of windows, each key read once for the whole batch."""
        idx = np.asarray(indices, dtype=np.int64)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"window index out of range for a dataset of {n} windows")
        idx = idx % max(n, 1)
        anchor = self._anchor[idx][:, None]
        lo, hi = self._ep_start[idx][:, None], self._ep_end[idx][:, None] - 1
        obs = anchor + self._obs_off
        act = anchor + self._act_off
        out: dict[str, torch.Tensor] = {}
        obs_frames = np.clip(obs, lo, hi)
        act_frames = np.clip(act, lo, hi)
        for key in self.obs_keys:
            out[key] = torch.from_numpy(np.ascontiguousarray(self._read(key, obs_frames)))
        for key in self.action_keys:
            out[key] = torch.from_numpy(np.ascontiguousarray(self._read(key, act_frames)))
        out["obs_is_pad"] = torch.from_numpy(obs < lo)
        out["action_is_pad"] = torch.from_numpy((act < lo) | (act > hi))
        out["episode_index"] = torch.from_numpy(self._ep_index[idx])
        out["frame_index"] = torch.from_numpy(self._anchor[idx] - self._ep_start[idx])
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch = self.get_batch([index])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices: Sequence[int]) -> _Batch:
        batch = self.get_batch(indices)
        samples = _Batch({k: v[i] for k, v in batch.items()} for i in range(len(indices)))
        samples.batch = batch
        return samples

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        num_workers: int = 0,
        drop_last: bool = True,
        seed: int | None = None,
        **kwargs: Any,
    ) -> DataLoader:
        """A DataLoader that reads whole batches at once (see `collate_batched`)."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return DataLoader(
            self,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            drop_last=drop_last,
            collate_fn=collate_batched,
            generator=generator,
            persistent_workers=num_workers > 0,
            **kwargs,
        )
