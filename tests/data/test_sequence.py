"""SequenceDataset: window contents, edge padding, splits, caches and DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.data.sequence import SequenceDataset, collate_batched, split_episodes
from robolearn.data.store import EpisodeStore
from robolearn.errors import SpecError


def expected_window(
    store: EpisodeStore, episode: int, t: int, n_obs: int, horizon: int, offset: int
):
    start, end = store.bounds(episode)
    obs_idx = np.arange(t - n_obs + 1, t + 1)
    act_idx = np.arange(t + offset, t + offset + horizon)
    data = store.read_episode(episode)
    return (
        {k: data[k][np.clip(obs_idx, 0, end - start - 1)] for k in ("state", "top")},
        data["action"][np.clip(act_idx, 0, end - start - 1)],
        obs_idx < 0,
        (act_idx < 0) | (act_idx >= end - start),
    )


@pytest.mark.parametrize(("n_obs", "horizon", "offset"), [(2, 16, None), (1, 10, 0), (3, 4, 2)])
def test_windows_match_the_episode_with_edge_padding(sample_store, n_obs, horizon, offset) -> None:
    store = EpisodeStore.open(sample_store(episodes=3, frames=[12, 5, 20]))
    ds = SequenceDataset(store, n_obs_steps=n_obs, horizon=horizon, action_offset=offset)
    off = -(n_obs - 1) if offset is None else offset
    assert len(ds) == 37
    for i in range(len(ds)):
        item = ds[i]
        ep, t = int(item["episode_index"]), int(item["frame_index"])
        obs, act, obs_pad, act_pad = expected_window(store, ep, t, n_obs, horizon, off)
        np.testing.assert_array_equal(item["state"].numpy(), obs["state"])
        np.testing.assert_array_equal(item["top"].numpy(), obs["top"])
        np.testing.assert_array_equal(item["action"].numpy(), act)
        np.testing.assert_array_equal(item["obs_is_pad"].numpy(), obs_pad)
        np.testing.assert_array_equal(item["action_is_pad"].numpy(), act_pad)
    assert ds[0]["top"].dtype == torch.uint8 and ds[0]["top"].shape == (n_obs, 24, 32, 3)


def test_cache_modes_give_identical_batches(sample_store) -> None:
    path = sample_store(episodes=3, frames=30, codecs={"wrist": "jpeg:90"})
    idx = np.random.default_rng(0).integers(0, 90, 40)
    batches = [
        SequenceDataset(path, cache=mode).get_batch(idx) for mode in ("none", "lowdim", "all")
    ]
    for other in batches[1:]:
        assert other.keys() == batches[0].keys()
        for key in other:
            assert torch.equal(other[key], batches[0][key]), key


def test_episode_subset_and_split(sample_store) -> None:
    train, val = split_episodes(10, 0.2, seed=1)
    assert sorted(train + val) == list(range(10)) and len(val) == 2
    assert split_episodes(10, 0.2, seed=1) == (train, val)
    assert split_episodes(2, 0.05)[1] != []  # at least one validation episode
    assert split_episodes(5, 0.0) == ([0, 1, 2, 3, 4], [])
    path = sample_store(episodes=4, frames=[5, 6, 7, 8])
    ds = SequenceDataset(path, episodes=[1, 3])
    assert len(ds) == 14
    assert set(ds.get_batch(np.arange(14))["episode_index"].tolist()) == {1, 3}
    with pytest.raises(IndexError, match="episode 9 does not exist"):
        SequenceDataset(path, episodes=[9])


def test_bad_keys_and_arguments_are_named(sample_store) -> None:
    path = sample_store(episodes=1)
    with pytest.raises(SpecError, match="observation key 'gripper_cam'"):
        SequenceDataset(path, obs_keys=["gripper_cam"])
    with pytest.raises(SpecError, match="action key 'state'"):
        SequenceDataset(path, action_keys=["state"])
    with pytest.raises(ValueError, match="horizon"):
        SequenceDataset(path, horizon=0)
    with pytest.raises(ValueError, match="cache"):
        SequenceDataset(path, cache="gpu")
    with pytest.raises(IndexError):
        SequenceDataset(path).get_batch([10_000])


def test_dataloader_with_worker_processes_matches_direct_reads(sample_store) -> None:
    path = sample_store(episodes=4, frames=25)
    ds = SequenceDataset(path, cache="lowdim")
    loader = ds.loader(8, shuffle=False, num_workers=2, drop_last=False)
    seen = []
    for batch in loader:
        assert batch["top"].shape[1:] == (2, 24, 32, 3)
        seen.append(batch)
    assert sum(len(b["state"]) for b in seen) == 100
    direct = ds.get_batch(np.arange(100))
    for key in direct:
        assert torch.equal(torch.cat([b[key] for b in seen]), direct[key]), key
    # A default DataLoader (per-sample collation) sees the same samples.
    plain = torch.utils.data.DataLoader(ds, batch_size=10, shuffle=False)
    first = next(iter(plain))
    assert torch.equal(first["action"], direct["action"][:10])
    assert collate_batched([ds[0], ds[1]])["state"].shape == (2, 2, 14)


def test_stats_are_computed_once_and_kept(sample_store) -> None:
    path = sample_store(episodes=2, frames=30)
    ds = SequenceDataset(path)
    stats = ds.stats()
    states = EpisodeStore.open(path).read("state", 0, 60)
    np.testing.assert_allclose(stats["state"].mean, states.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["state"].p99, np.percentile(states, 99, axis=0), rtol=1e-5)
    assert stats["top"].mean.shape == (3,) and 0 < stats["top"].mean[0] < 1
    assert stats["action"].min.shape == (14,)
    attrs = EpisodeStore.open(path).group.attrs.asdict()
    assert attrs["robolearn_stats"]["frames"] == 60
    # Appending an episode makes the kept statistics stale; they are recomputed.
    with EpisodeStore.open(path, "a") as store, store.writer() as w:
        w.start_episode()
        frame = {k: np.zeros(f.shape, f.dtype) for k, f in store.spec.items()}
        frame["state"] = np.full(14, 100.0, np.float32)
        w.add_frame(frame, timestamp=0)
        w.save()
    fresh = SequenceDataset(path).stats()
    assert fresh["state"].max[0] == 100.0 and fresh["state"].count == 61
