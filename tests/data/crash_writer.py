"""A writer process for the crash test: appends deterministic episodes until it is killed.

Episode k's contents and length depend only on k, so the test can rebuild what every committed
episode must hold, byte for byte, without the writer telling it anything. With `process` as
second argument the writer is a ProcessEpisodeWriter, and "ready" also names its process id.
After each `save()` returns it prints "saved K": from then on episode K must survive any kill.
"""

from __future__ import annotations

import sys

import numpy as np

from robolearn.data.codecs import ImageCodec
from robolearn.data.procwriter import ProcessEpisodeWriter
from robolearn.data.store import EpisodeStore
from robolearn.spec import Feature, FeatureSpec

FPS = 50.0
SPEC = FeatureSpec(
    {
        "state": Feature((14,), "float32", "state"),
        "action": Feature((14,), "float32", "action"),
        "cam": Feature((32, 32, 3), "uint8", "image"),
        "wrist": Feature((16, 16, 3), "uint8", "image"),
    }
)
CODECS = {"wrist": "jpeg:85"}
_JPEG = ImageCodec("jpeg", 85)


def episode_content(k: int) -> dict[str, np.ndarray]:
    """What episode k holds once stored (the jpeg key as the codec decodes it)."""
    rng = np.random.default_rng(1000 + k)
    n = int(rng.integers(3, 160))
    wrist = rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    return {
        "state": rng.standard_normal((n, 14)).astype(np.float32),
        "action": rng.standard_normal((n, 14)).astype(np.float32),
        "cam": rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
        "wrist": wrist,
        "wrist_stored": _JPEG.decode_frames(_JPEG.encode_frames(wrist), wrist.shape),
        "timestamp": np.arange(n) / FPS,
    }


def main(path: str, mode: str = "thread") -> None:
    store = EpisodeStore.open(path, "a")
    writer = ProcessEpisodeWriter(store) if mode == "process" else store.writer()
    print(f"ready {store.num_episodes} {getattr(writer, 'pid', '')}", flush=True)
    with writer:
        k = store.num_episodes
        while True:
            content = episode_content(k)
            writer.start_episode(task=f"episode {k}")
            for i in range(len(content["timestamp"])):
                writer.add_frame(
                    {key: content[key][i] for key in SPEC}, timestamp=float(content["timestamp"][i])
                )
            writer.save(success=bool(k % 2))
            print(f"saved {k}", flush=True)
            k += 1


if __name__ == "__main__":
    main(*sys.argv[1:3])
