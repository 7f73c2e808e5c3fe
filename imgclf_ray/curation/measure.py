"""Per-image quality measures, computed once per decoded image in the pipeline's CPU tasks.

Every measure is taken on the decoded image (after EXIF orientation), not on the model's input, so
the scores do not depend on which model (if any) the job applies:

- ``blur_score``: variance of the Laplacian over the variance of the image, on a greyscale copy
  scaled down to at most 256x256 (small images are never scaled up, which would blur them). Dividing by the image's own variance makes it independent of brightness and contrast (a
  darkened sharp photo stays sharp); lower is blurrier.
- ``brightness``: mean luminance (ITU-R 601-2, Pillow's "L"), 0..1.
- ``entropy``: Shannon entropy of the 256-bin greyscale histogram, in bits (0..8).
- ``color_spread``: mean over pixels of (largest - smallest channel), 0..255: 0 for greyscale
  files and for RGB files whose channels are equal.
- ``pixel_hash``: BLAKE2b-128 of the decoded pixels and their shape (exact duplicates whatever the
  file format or metadata).
- ``phash``: 64-bit perceptual hash (DCT of a 32x32 greyscale copy, the 8x8 lowest frequencies
  against their median, as in Zauner's pHash and the ``imagehash`` package) as a signed int64.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from PIL import Image

MEASURE_SIDE = 256
FLOAT_MEASURES = ("blur_score", "brightness", "entropy", "color_spread")


def phash(img: Image.Image) -> int:
    """64-bit DCT perceptual hash of ``img``, as a signed 64-bit integer."""
    from scipy.fft import dctn

    grey = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(grey, type=2)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0].astype(np.int64))


def pixel_hash(img: Image.Image) -> str:
    arr = np.asarray(img)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((arr.shape, str(arr.dtype))).encode())
    digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def measure(img: Image.Image) -> dict[str, Any]:
    """All per-image measures of one decoded RGB image."""
    from scipy.ndimage import laplace

    size = (min(img.width, MEASURE_SIDE), min(img.height, MEASURE_SIDE))
    grey = np.asarray(img.convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    variance = float(grey.var())
    blur = float(laplace(grey).var()) / variance if variance > 1e-6 else 0.0
    counts = np.bincount(grey.astype(np.uint8).ravel(), minlength=256)
    p = counts[counts > 0] / grey.size
    small = np.asarray(img.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.int16)
    return {
        "blur_score": blur,
        "brightness": float(grey.mean()) / 255.0,
        "entropy": float(-(p * np.log2(p)).sum()),
        "color_spread": float((small.max(axis=2) - small.min(axis=2)).mean()),
        "pixel_hash": pixel_hash(img),
        "phash": phash(img),
    }


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between int64 hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.int64), np.asarray(b, np.int64)).view(np.uint64))
