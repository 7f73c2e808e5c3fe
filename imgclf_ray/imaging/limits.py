"""What every decoder (Pillow, DICOM, video) shares: its error type and the decode memory budget."""

from __future__ import annotations

from typing import Optional


class DecodeError(ValueError):
    """The bytes are not an image we can decode; the message says why, for the error column."""


# libjpeg decodes a progressive JPEG's every scan over the whole image: 2,000 refinement scans of
# end-of-band runs (119 bytes each) over 9000x9000 took 100 s of CPU from 238 KB. NVIDIA's
# nvImageCodec refuses more than 256 scans by default (NVIMGCODEC_MAX_JPEG_SCANS, after Cure53's
# audit of libjpeg-turbo); libjpeg's and mozjpeg's progressive JPEGs have about ten. Counted as SOS
# markers, which entropy-coded data cannot hold (an EXIF thumbnail's count too).
MAX_JPEG_SCANS = 256


def check_scans(data: bytes) -> None:
    """DecodeError when a JPEG holds more than MAX_JPEG_SCANS scans."""
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise DecodeError(f"its JPEG has {scans:,} scans, more than {MAX_JPEG_SCANS} (each is decoded over the "
                          "whole image): not decoded")


def check_budget(width: int, height: int, bytes_per_pixel: float, budget: Optional[int], what: str = "image") -> None:
    """DecodeError when decoding ``width`` x ``height`` pixels of ``bytes_per_pixel`` needs more
    than ``budget`` bytes (decode.max_decode_bytes): checked from the header, before decoding."""
    need = width * height * bytes_per_pixel
    if budget is not None and need > budget:
        raise DecodeError(f"{what} of {width}x{height} needs {need / 2**20:,.0f} MiB to decode, over "
                          f"decode.max_decode_bytes ({budget / 2**20:,.0f} MiB)")
