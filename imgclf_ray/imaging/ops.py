"""Conditioning operations: decoded RGB image (H, W, 3 uint8) -> image, composable by name.

A model card lists them (``preprocess.ops``) and they run, in order, after decoding and before the
card's resize and crop, in training and inference alike. Each wraps the library that defines it
(Pillow, scikit-image, SciPy), so results match the reference implementation.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from imgclf_ray.registry import OPS as _REGISTRY

Op = Callable[..., np.ndarray]
register, names, get = _REGISTRY.register, _REGISTRY.names, _REGISTRY.get


def apply(ops: list[tuple[str, dict[str, Any]]], image: np.ndarray) -> np.ndarray:
    """Run ``(name, params)`` operations in order on an (H, W, 3) uint8 image."""
    for name, params in ops:
        image = np.ascontiguousarray(get(name)(image, **params), dtype=np.uint8)
    return image


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _per_channel(image: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.stack([fn(image[:, :, c]) for c in range(image.shape[2])], axis=2)


@register("grayscale")
def grayscale(image: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R 601, as Pillow's convert('L')) copied to the three channels."""
    from PIL import Image

    grey = np.asarray(Image.fromarray(image, "RGB").convert("L"))
    return np.repeat(grey[:, :, None], 3, axis=2)


@register("equalize")
def equalize(image: np.ndarray) -> np.ndarray:
    """Histogram equalisation of each channel (Pillow's ImageOps.equalize)."""
    from PIL import Image, ImageOps

    return np.asarray(ImageOps.equalize(Image.fromarray(image, "RGB")))


@register("clahe")
def clahe(image: np.ndarray, clip_limit: float = 0.01, kernel_size: int | None = None) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (scikit-image equalize_adapthist), as it
    does a colour image: on the HSV value channel. The conversions to HSV and back are made a block
    of rows at a time (they are per pixel: the same values), so that only the value channel is
    whole: scikit-image's own held about 350 bytes a pixel (a 20-megapixel mammogram, 7.1 GB; now
    0.9 GB)."""
    from skimage.color import hsv2rgb, rgb2hsv
    from skimage.exposure import equalize_adapthist

    from imgclf_ray.imaging.limits import BLOCK

    rows = max(1, BLOCK // 16 // max(1, image.shape[1]))  # (rgb2hsv's temporaries: ~300 bytes a pixel of a block)
    blocks = [slice(at, at + rows) for at in range(0, image.shape[0], rows)]
    value = np.empty(image.shape[:2], np.float64)
    for block in blocks:
        value[block] = rgb2hsv(image[block])[..., 2]
    value = equalize_adapthist(value, clip_limit=clip_limit, kernel_size=kernel_size)
    out = np.empty(image.shape, np.uint8)
    for block in blocks:
        hsv = rgb2hsv(image[block])
        hsv[..., 2] = value[block]
        out[block] = _to_u8(hsv2rgb(hsv) * 255.0)
    return out


@register("gaussian")
def gaussian(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian denoising (scipy.ndimage.gaussian_filter over rows and columns)."""
    from scipy.ndimage import gaussian_filter

    return _to_u8(gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0)))


@register("median")
def median(image: np.ndarray, size: int = 3) -> np.ndarray:
    """Median denoising of each channel (scipy.ndimage.median_filter)."""
    from scipy.ndimage import median_filter

    return median_filter(image, size=(size, size, 1))


@register("wiener")
def wiener(image: np.ndarray, size: int = 5) -> np.ndarray:
    """Wiener denoising of each channel (scipy.signal.wiener, noise estimated from the image)."""
    from scipy.signal import wiener as sp_wiener

    with np.errstate(divide="ignore", invalid="ignore"):
        return _per_channel(image, lambda ch: _to_u8(np.nan_to_num(sp_wiener(ch.astype(np.float64), size))))


@register("minmax")
def minmax(image: np.ndarray) -> np.ndarray:
    """Min-max normalisation: stretch the image's own range to 0..255."""
    lo, hi = int(image.min()), int(image.max())
    if hi == lo:
        return image.copy()
    return _to_u8((image.astype(np.float32) - lo) * (255.0 / (hi - lo)))


@register("trim_border")
def trim_border(image: np.ndarray, tolerance: int = 10) -> np.ndarray:
    """Cut away uniform borders (scanner margins, letterbox bars): rows and columns whose pixels all
    lie within ``tolerance`` of the top-left corner's colour."""
    background = image[0, 0].astype(np.int16)
    content = (np.abs(image.astype(np.int16) - background) > tolerance).any(axis=2)
    rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    if not len(rows):
        return image
    return image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


@register("letterbox")
def letterbox(image: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
    """Fit the longer side to ``size`` and pad to a ``size`` x ``size`` square, keeping the aspect."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(Image.fromarray(image, "RGB").resize((new_w, new_h), Image.Resampling.BILINEAR))
    out = np.full((size, size, 3), fill, dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    return out


@register("crop")
def crop(image: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
    """A fixed crop (e.g. a region of interest at a known place in every frame)."""
    h, w = image.shape[:2]
    if left + width > w or top + height > h:
        raise ValueError(f"crop {width}x{height}+{left}+{top} does not fit a {w}x{h} image")
    return image[top:top + height, left:left + width]
