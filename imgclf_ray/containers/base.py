"""What a container's split function returns: the parts of one file, each one image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from imgclf_ray.spec import DecodeSpec


@dataclass
class Part:
    """One image of a file: the file itself, a frame of a multi-frame file or video, a row of an
    image table, a sample of a shard."""

    frame: int  # the output's frame column: the part's number in its file
    data: Optional[bytes] = None  # bytes to decode (None: read the file)
    decode_frame: Optional[int] = None  # the frame to decode from ``data`` (None: decode.frame)
    image: Optional[Any] = None  # already decoded RGB Pillow image (video frames)
    size: tuple[int, int] = (0, 0)  # its (width, height) as stored
    metadata: Optional[str] = None  # JSON for the metadata column
    label: Optional[str] = None  # a label the container carries (shards), for true_label
    timestamp: float = float("nan")  # video: presentation time in seconds
    error: Optional[str] = None  # '<stage>: <cause>' when the part is already known to be bad
    skipped: bool = False  # with error: the file is no image (source.extensions: any)


def over_member(size: int, decode: DecodeSpec) -> str:
    return (f"member of {size / 2**20:,.0f} MiB, over decode.max_member_bytes "
            f"({decode.max_member_bytes / 2**20:,.0f} MiB); not read")
