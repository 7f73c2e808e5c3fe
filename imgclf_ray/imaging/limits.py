"""What every decoder (Pillow, DICOM, video) shares: its error type and the decode memory budget."""

from __future__ import annotations

from typing import Optional


class DecodeError(ValueError):
    """The bytes are not an image we can decode; the message says why, for the error column."""


def check_budget(width: int, height: int, bytes_per_pixel: float, budget: Optional[int], what: str = "image") -> None:
    """DecodeError when decoding ``width`` x ``height`` pixels of ``bytes_per_pixel`` needs more
    than ``budget`` bytes (decode.max_decode_bytes): checked from the header, before decoding."""
    need = width * height * bytes_per_pixel
    if budget is not None and need > budget:
        raise DecodeError(f"{what} of {width}x{height} needs {need / 2**20:,.0f} MiB to decode, over "
                          f"decode.max_decode_bytes ({budget / 2**20:,.0f} MiB)")
