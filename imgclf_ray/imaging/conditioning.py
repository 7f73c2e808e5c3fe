"""Pixels -> model input: conditioning ops, resize the shorter side, centre-crop, CHW uint8.

Normalisation (mean/std) happens on the predictor, in float, on the whole batch; keeping uint8 until
then makes the rows that cross Ray's object store four times smaller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
from PIL import Image

from imgclf_ray.config.base import PILLOW_MAX_IMAGE_PIXELS

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
    crop_offset: Literal["round", "floor"] = "round"
    resampler: Literal["pil", "torch"] = "pil"
    ops: tuple[tuple[str, dict[str, Any]], ...] = ()

    @property
    def output_shape(self) -> tuple[int, int, int]:
        side = self.crop or self.resize
        return (self.channels, side, side)


def resize(img: Image.Image, width: int, height: int, interpolation: Interpolation = "bilinear",
           resampler: str = "pil") -> Image.Image:
    """Resize to ``width`` x ``height`` with Pillow (``resampler="pil"``: what torchvision and timm
    transforms do to PIL images), or with torchvision's tensor resize on uint8 and antialiasing
    (``"torch"``: what Hugging Face's torchvision-backed image processors do; within one grey level
    of Pillow's, not equal)."""
    if resampler == "pil":
        return img.resize((width, height), _RESAMPLE[interpolation])
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    arr = np.array(img)  # writable: torch warns on a read-only view of Pillow's buffer
    chw = torch.from_numpy(np.ascontiguousarray(arr if arr.ndim == 3 else arr[:, :, None])).permute(2, 0, 1)
    out = F.resize(chw, [height, width], interpolation=InterpolationMode(interpolation), antialias=True)
    out = out.permute(1, 2, 0).numpy()
    return Image.fromarray(out if arr.ndim == 3 else out[:, :, 0], img.mode)


def resize_shorter_side(img: Image.Image, size: int, interpolation: Interpolation = "bilinear",
                        resampler: str = "pil") -> Image.Image:
    """Scale so that the shorter side is ``size`` pixels, keeping the aspect ratio.

    Sizes are computed as torchvision's ``Resize(size)`` does (the longer side truncated), so
    weights trained with torchvision's transforms see the same pixels here.
    """
    w, h = img.size
    if min(w, h) == size:
        return img
    new = shorter_side_to(w, h, size)
    if enlarges_too_far(w, h, size):
        # Enlarging a sliver: a 1,532-byte PNG of 1,500,000 x 1 pixels would be 384,000,000 x 256.
        from imgclf_ray.imaging.limits import DecodeError

        raise DecodeError(f"image of {w}x{h}: its shorter side brought to {size} makes it {new[0]:,}x{new[1]:,} "
                          f"= {new[0] * new[1]:,} pixels, over {MAX_ENLARGED:,} (Pillow's decompression-bomb "
                          "limit): refused")
    return resize(img, *new, interpolation, resampler)


# The most pixels an image is enlarged to (Pillow's own bomb limit, decode.max_image_pixels' default):
# a strip of 1,700:1 still goes to 224 (a 30000x100 line scan is 67200x224).
MAX_ENLARGED = PILLOW_MAX_IMAGE_PIXELS


def shorter_side_to(w: int, h: int, size: int) -> tuple[int, int]:
    """The size torchvision's ``Resize(size)`` gives: shorter side ``size``, the longer truncated."""
    return (size, int(size * h / w)) if w <= h else (int(size * w / h), size)


def enlarges_too_far(w: int, h: int, size: int) -> bool:
    """Whether bringing the shorter side to ``size`` makes the image larger than it is and than MAX_ENLARGED."""
    new = shorter_side_to(w, h, size)
    return new[0] * new[1] > max(w * h, MAX_ENLARGED)


def center_crop(img: Image.Image, size: int, offset: str = "round") -> Image.Image:
    """Cut the central ``size`` x ``size`` square, placed as torchvision's ``CenterCrop`` does
    (``offset="round"``), or as Hugging Face image processors do (``"floor"``: the odd pixel of the
    margin goes to the right and bottom)."""
    w, h = img.size
    if offset == "floor":
        left, top = (w - size) // 2, (h - size) // 2
    else:
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
        img = center_crop(resize_shorter_side(img, cond.resize, cond.interpolation, cond.resampler), cond.crop,
                          cond.crop_offset)
    else:
        img = resize(img, cond.resize, cond.resize, cond.interpolation, cond.resampler)
    if cond.channels == 1:
        img = img.convert("L")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
