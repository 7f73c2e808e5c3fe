"""Video files: one part per sampled frame (source.video), decoded here by PyAV."""

from __future__ import annotations

from typing import Optional

from imgclf_ray.containers.base import Part
from imgclf_ray.imaging import video
from imgclf_ray.registry import CONTAINERS, Container
from imgclf_ray.spec import DecodeSpec, SourceSpec


def split(data: bytes, source: SourceSpec, decode: DecodeSpec, side: Optional[int]) -> list[Part]:
    """The sampled frames of a video file, decoded here (source.video)."""
    v = source.video
    frames = video.sample(data, v.fps, v.keyframes, v.max_frames, side, decode.max_image_pixels,
                          decode.max_container_bytes, decode.max_decode_bytes, decode.max_seconds)
    return [Part(f.index, image=f.image, size=f.size, timestamp=f.timestamp,
                 error=f"decode: {f.error}" if f.error else None) for f in frames]


# A frame that cannot be decoded is charged to decode, as a still image's would be.
CONTAINERS.register("video")(Container(split, stage="decode"))
