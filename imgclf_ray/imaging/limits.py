"""What every decoder (Pillow, DICOM, video) shares: its error type and the decode memory budget."""

from __future__ import annotations

import re
from typing import Optional


class DecodeError(ValueError):
    """The bytes are not an image we can decode; the message says why, for the error column."""


# libjpeg decodes a progressive JPEG's every scan over the whole image: 2,000 refinement scans of
# end-of-band runs (119 bytes each) over 9000x9000 took 100 s of CPU from 238 KB. NVIDIA's
# nvImageCodec refuses more than 256 scans by default (NVIMGCODEC_MAX_JPEG_SCANS, after Cure53's
# audit of libjpeg-turbo); libjpeg's and mozjpeg's progressive JPEGs have about ten.
MAX_JPEG_SCANS = 256
_NEXT_MARKER = re.compile(rb"\xff+(?=[^\x00\xd0-\xd7\xff])")  # after a scan's data: not stuffing or RSTn


def jpeg_scans(data: bytes, start: int = 0) -> int:
    """The scans (SOS segments) of the JPEG at ``start``, walked as a decoder reads it up to its EOI:
    segments by their lengths, a scan's entropy-coded data to the next marker. What follows the
    image (a motion photo's video, another image) is not looked at."""
    at, scans = start + 2, 0  # (after SOI)
    while at + 4 <= len(data):
        if data[at] != 0xFF or data[at + 1] == 0xFF:  # stray or fill bytes: to the next marker
            found = _NEXT_MARKER.search(data, at + 1)
            if found is None:
                break
            at = found.end() - 1
            continue
        marker = data[at + 1]
        if marker == 0xD9:  # EOI
            break
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD8:  # no length (0x00: stuffing, skipped as libjpeg does)
            at += 2
            continue
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
        if marker == 0xDA:
            scans += 1
            found = _NEXT_MARKER.search(data, at)
            if found is None:
                break
            at = found.end() - 1
    return scans


def check_scans(data: bytes, starts: tuple[int, ...] = (0,)) -> None:
    """DecodeError when a JPEG (each image of an MPO, at ``starts``) holds more than MAX_JPEG_SCANS scans."""
    scans = max(jpeg_scans(data, at) for at in starts)
    if scans > MAX_JPEG_SCANS:
        raise DecodeError(f"its JPEG has {scans:,} scans, more than {MAX_JPEG_SCANS} (each is decoded over the "
                          "whole image): not decoded")


def check_budget(width: int, height: int, bytes_per_pixel: float, budget: Optional[int], what: str = "image") -> None:
    """DecodeError when decoding ``width`` x ``height`` pixels of ``bytes_per_pixel`` needs more
    than ``budget`` bytes (decode.max_decode_bytes): checked from the header, before decoding."""
    need = width * height * bytes_per_pixel
    if budget is not None and need > budget:
        raise DecodeError(f"{what} of {width}x{height} needs {size_text(need)} to decode, over "
                          f"decode.max_decode_bytes ({size_text(budget)})")


def size_text(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{int(n):,} bytes"


BLOCK = 1 << 20  # samples brought to 8 bits at once: the temporaries of a block, not of the image
