"""Per-key compression for the episode store: lossless blosc/zstd, or JPEG / JPEG-XL for images.

The image codecs are zarr v3 array→bytes codecs registered under `robolearn.image`; the choice is
written into each array's metadata, so a reader needs no flags: importing robolearn is enough.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import imagecodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import BloscCodec
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

from robolearn.errors import SpecError

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

IMAGE_CODEC_NAME = "robolearn.image"
IMAGE_FORMATS = ("jpeg", "jpegxl")
_HEADER = struct.Struct("<I")


@dataclass(frozen=True)
class ImageCodec(ArrayBytesCodec):
    """Encodes a chunk of uint8 frames (N×H×W×C) as N JPEG or JPEG-XL images.

    Layout of an encoded chunk: u32 frame count, u32 byte length of each frame, then the frames.
    JPEG-XL at quality 100 is mathematically lossless.
    """

    format: str = "jpeg"
    quality: int = 90

    def __post_init__(self) -> None:
        if self.format not in IMAGE_FORMATS:
            raise ValueError(f"image codec format {self.format!r} is not one of {IMAGE_FORMATS}")
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"image codec quality {self.quality} is not in 1..100")

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, config = parse_named_configuration(data, IMAGE_CODEC_NAME)
        return cls(**config)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {
            "name": IMAGE_CODEC_NAME,
            "configuration": {"format": self.format, "quality": int(self.quality)},
        }

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        native = dtype.to_native_dtype() if hasattr(dtype, "to_native_dtype") else np.dtype(dtype)
        if np.dtype(native) != np.uint8 or len(shape) != 4:
            raise ValueError(f"{self.format} needs uint8 frames of shape N×H×W×C, got {shape}")
        channels = shape[3]
        allowed = (1, 3) if self.format == "jpeg" else (1, 2, 3, 4)
        if channels not in allowed:
            raise ValueError(f"{self.format} cannot store {channels}-channel images")

    def encode_frames(self, frames: np.ndarray) -> bytes:
        parts = [self._encode_one(frame) for frame in frames]
        header = _HEADER.pack(len(parts)) + b"".join(_HEADER.pack(len(p)) for p in parts)
        return header + b"".join(parts)

    def decode_frames(self, data: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
        data = memoryview(data)
        (n,) = _HEADER.unpack_from(data, 0)
        sizes = struct.unpack_from(f"<{n}I", data, _HEADER.size)
        out = np.empty(shape, dtype=np.uint8)
        offset = _HEADER.size * (n + 1)
        for i, size in enumerate(sizes):
            frame = self._decode_one(data[offset : offset + size])
            out[i] = frame.reshape(shape[1:])
            offset += size
        return out

    def _encode_one(self, frame: np.ndarray) -> bytes:
        img = frame[..., 0] if frame.shape[-1] == 1 else frame
        img = np.ascontiguousarray(img)
        if self.format == "jpeg":
            return bytes(imagecodecs.jpeg8_encode(img, level=int(self.quality)))
        if self.quality >= 100:
            return bytes(imagecodecs.jpegxl_encode(img, lossless=True))
        return bytes(imagecodecs.jpegxl_encode(img, level=int(self.quality)))

    def _decode_one(self, data: memoryview) -> np.ndarray:
        if self.format == "jpeg":
            return imagecodecs.jpeg8_decode(data)
        return imagecodecs.jpegxl_decode(data)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        frames = self.decode_frames(chunk_bytes.as_numpy_array().tobytes(), chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(frames)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        frames = np.asarray(chunk_array.as_numpy_array(), dtype=np.uint8)
        return chunk_spec.prototype.buffer.from_bytes(self.encode_frames(frames))

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("image codecs have a variable-size output")


register_codec(IMAGE_CODEC_NAME, ImageCodec)


@dataclass(frozen=True)
class CodecChoice:
    """How one key is compressed: `lossless` (blosc/zstd), `jpeg[:Q]` or `jpegxl[:Q]`."""

    name: str = "lossless"
    quality: int | None = None

    @classmethod
    def parse(cls, text: str | CodecChoice, key: str = "?") -> CodecChoice:
        if isinstance(text, CodecChoice):
            return text
        name, _, q = str(text).strip().lower().partition(":")
        if name not in ("lossless", *IMAGE_FORMATS):
            raise SpecError(
                f"codec {text!r} for {key!r} is unknown; use 'lossless', 'jpeg[:quality]' "
                "or 'jpegxl[:quality]' (quality 1..100, jpegxl:100 is lossless)"
            )
        if name == "lossless":
            if q:
                raise SpecError(f"codec {text!r} for {key!r}: 'lossless' takes no quality")
            return cls("lossless")
        try:
            quality = int(q) if q else (90 if name == "jpeg" else 95)
        except ValueError:
            raise SpecError(
                f"codec {text!r} for {key!r}: quality {q!r} is not an integer"
            ) from None
        if not 1 <= quality <= 100:
            raise SpecError(f"codec {text!r} for {key!r}: quality must be in 1..100")
        return cls(name, quality)

    def __str__(self) -> str:
        return self.name if self.quality is None else f"{self.name}:{self.quality}"

    @property
    def is_lossy(self) -> bool:
        return self.name == "jpeg" or (self.name == "jpegxl" and (self.quality or 0) < 100)

    def zarr_codecs(self, *, image: bool) -> dict[str, Any]:
        """Keyword arguments for `zarr.create_array` (serializer / compressors)."""
        if self.name == "lossless":
            if image:
                # zstd level 1 encodes camera frames at ~190 MB/s on one core (level 3: ~75),
                # enough for two 480×640 cameras at 50 Hz with room to spare; level 3 would
                # fall behind the recording and make save() wait.
                return {"compressors": BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle")}
            # Byte shuffle groups the bytes of multi-byte numbers.
            return {"compressors": BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")}
        return {"serializer": ImageCodec(self.name, int(self.quality or 90)), "compressors": None}
