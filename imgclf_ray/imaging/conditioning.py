"""Pixels -> model input: conditioning ops, resize the shorter side, centre-crop, CHW uint8.

Normalisation (mean/std) happens on the predictor, in float, on the whole batch; keeping uint8 until
then makes the rows that cross Ray's object store four times smaller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
from PIL import Image

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]


@dataclass(frozen=True)
class Conditioning:
    """Ops + resize + crop settings, taken from a model card."""

    resize: int
    crop: Optional[int] = None
    channels: Literal[1, 3] = 3
    interpolation: Interpolation = "bilinear"
    ops: tuple[tuple[str, dict[str, Any]], ...] = ()

    @property
    def output_shape(self) -> tuple[int, int, int]:
        side = self.crop or self.resize
        return (self.channels, side, side)


def resize_shorter_side(img: Image.Image, size: int, interpolation: Interpolation = "bilinear") -> Image.Image:
    """Scale so that the shorter side is ``size`` pixels, keeping the aspect ratio.

    Sizes are computed as torchvision's ``Resize(size)`` does (the longer side truncated), so
    weights trained with torchvision's transforms see the same pixels here.
    """
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return img.resize(new, _RESAMPLE[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Cut the central ``size`` x ``size`` square, placed as torchvision's ``CenterCrop`` does."""
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def condition(img: Image.Image, cond: Conditioning) -> np.ndarray:
    """Apply the conditioning ops, then resize + centre crop; return a (C, H, W) uint8 array.

    Without ``crop`` the image is resized to a ``resize`` x ``resize`` square (aspect not kept),
    so every row of a batch has the same shape.
    """
    if cond.ops:
        from imgclf_ray.imaging.ops import apply

        img = Image.fromarray(apply(list(cond.ops), np.asarray(img.convert("RGB"))), "RGB")
    if cond.crop:
        img = center_crop(resize_shorter_side(img, cond.resize, cond.interpolation), cond.crop)
    else:
        img = img.resize((cond.resize, cond.resize), _RESAMPLE[cond.interpolation])
    if cond.channels == 1:
        img = img.convert("L")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
