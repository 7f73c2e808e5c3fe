"""Per-image quality measures, computed once per decoded image in the pipeline's CPU tasks.

The flags follow cleanvision's definitions and default thresholds (cleanvision 0.3, its
``issue_managers``), so that imgclf and cleanvision flag the same images. Like cleanvision, the
measures are taken on the image as the file stores it (its own Pillow mode and size, before any
conversion to RGB); DICOM frames and video frames have no such file image and are measured on
what they decode to (greyscale DICOM as one channel):

- ``dark_score``: 99th percentile of per-pixel brightness sqrt(.241 R² + .691 G² + .068 B²) / 255
  (one-channel images: value / 255); dark below 0.32.
- ``light_score``: 1 - the 5th percentile of that brightness; light (``overexposed``) below 0.05.
- ``brightness``: mean brightness of the channel means (cleanvision's ``brightness``), informative.
- ``entropy``: Pillow's ``Image.entropy()`` in bits; low information below 3.0 (cleanvision's
  score entropy / 10 below 0.3).
- ``blur_score``: cleanvision's blurry score on a copy whose longer side is at most 64 px: with
  s = std of Pillow's FIND_EDGES on its greyscale and h = std of its greyscale histogram,
  min(1 - e^(-s/100) + (1 - e^(-h/100) if that exceeds 0.18, else 0), 1); blurry below 0.29.
- ``grayscale_score``: 0 for a one-channel image (Pillow mode L, LA, 1, I, I;16, F), 1 for colour
  (an RGB file whose channels are equal is colour, as for cleanvision); grayscale below 0.5.
- ``color_spread``: mean over pixels of (largest - smallest channel) of the RGB image, informative.
- ``pixel_hash``: MD5 of the image's pixel bytes (cleanvision's exact-duplicate hash).
- ``phash``: 64-bit perceptual hash (the ``imagehash`` package's phash: DCT of a 32x32 greyscale
  copy, the 8x8 lowest frequencies against their median) as a signed int64; near duplicates share it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import numpy as np
from PIL import Image

BLUR_SIDE = 64  # cleanvision's MAX_RESOLUTION_FOR_BLURRY_DETECTION
FLOAT_MEASURES = ("blur_score", "brightness", "dark_score", "light_score", "entropy", "grayscale_score",
                  "color_spread")
ONE_CHANNEL_MODES = {"L", "LA", "La", "1", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def phash(img: Image.Image) -> int:
    """64-bit DCT perceptual hash of ``img``, as a signed 64-bit integer."""
    from scipy.fft import dctn

    grey = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(grey, type=2)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0].astype(np.int64))


def pixel_hash(img: Image.Image) -> str:
    """MD5 of the pixel bytes as the file stores them (cleanvision's exact-duplicate hash)."""
    return hashlib.md5(np.asarray(img).tobytes()).hexdigest()


def _brightness(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] >= 3:
        r, g, b = (arr[:, :, i].astype(np.int64) for i in range(3))
        return np.sqrt(0.241 * r * r + 0.691 * g * g + 0.068 * b * b) / 255
    return (arr[:, :, 0] if arr.ndim == 3 else arr) / 255.0


def _mean_brightness(img: Image.Image) -> float:
    from PIL import ImageStat

    means = ImageStat.Stat(img).mean
    r, g, b = means[:3] if len(means) >= 3 else (means[0],) * 3
    return float(np.sqrt(0.241 * r * r + 0.691 * g * g + 0.068 * b * b) / 255)


def blur_score(img: Image.Image) -> float:
    """cleanvision's blurry score (lower = blurrier), on a copy at most 64 px on its longer side."""
    from PIL import ImageFilter, ImageStat

    ratio = max(img.width, img.height) / BLUR_SIDE
    small = img.resize((max(int(img.width // ratio), 1), max(int(img.height // ratio), 1))) if ratio > 1 else img
    grey = small.convert("L")
    edges = float(np.sqrt(ImageStat.Stat(grey.filter(ImageFilter.FIND_EDGES)).var[0]))
    spread = 1 - np.exp(-float(np.std(grey.histogram())) * 0.01)
    return float(min(1 - np.exp(-edges * 0.01) + (spread if spread > 0.18 else 0.0), 1.0))


def _entropy(stored: Image.Image, img: Image.Image) -> float:
    try:
        return float(stored.entropy())
    except (ValueError, TypeError):  # modes Pillow has no histogram entropy for
        return float(img.entropy())


def measure(img: Image.Image, stored: Optional[Image.Image] = None) -> dict[str, Any]:
    """All per-image measures: ``stored`` is the image as the file stores it (cleanvision's view;
    default ``img``), ``img`` the decoded RGB image."""
    stored = img if stored is None else stored
    p5, p99 = np.percentile(_brightness(stored), [5, 99])
    small = np.asarray(img.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.int16)
    return {
        "blur_score": blur_score(stored),
        "brightness": _mean_brightness(stored),
        "dark_score": float(p99),
        "light_score": float(1.0 - p5),
        "entropy": _entropy(stored, img),
        "grayscale_score": 0.0 if stored.mode in ONE_CHANNEL_MODES else 1.0,
        "color_spread": float((small.max(axis=2) - small.min(axis=2)).mean()),
        "pixel_hash": pixel_hash(stored),
        "phash": phash(stored),
    }


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between int64 hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.int64), np.asarray(b, np.int64)).view(np.uint64))
