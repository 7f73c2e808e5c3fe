"""Training-only augmentation of a whole batch at once, on the batch's device.

Each image gets its own random parameters (as torchvision's per-image transforms draw them), but
the work is one call per batch: the random resized crop, the flips and the rotation are one affine
resampling of every image (``affine_grid`` + ``grid_sample``, bilinear; corners outside the
image are zeros, as RandomRotation fills them), brightness and contrast per-image factors
(ColorJitter's formulas), the blur one grouped separable convolution with a kernel per image
(GaussianBlur's, reflect padding). On a GPU worker it runs on the GPU; on a CPU it spares the
per-image Python loop. The parameters are drawn on the CPU from the worker's seeded generator.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect-ratio range


class BatchAugment:
    """``cfg``: the CNN spec's ``augment`` (hflip, vflip, rotation, crop_scale, brightness,
    contrast, blur); ``side``: the output side of a random resized crop."""

    def __init__(self, cfg: dict[str, Any], side: int, seed: int = 0):
        import torch

        self.cfg, self.side = cfg, side
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x):
        return self.apply(x, self.params(len(x)))

    def _uniform(self, n: int, low: float, high: float):
        import torch

        return low + (high - low) * torch.rand(n, generator=self.generator, dtype=torch.float64)

    def params(self, n: int) -> dict[str, Any]:
        """Each image's parameters: crop size (fractions of the image) and centre, flips (+1/-1),
        angle (radians), brightness and contrast factors, blur sigma (None: no blur)."""
        import torch

        cfg, u = self.cfg, self._uniform
        w = h = torch.ones(n, dtype=torch.float64)
        if cfg.get("crop_scale"):
            area = u(n, *cfg["crop_scale"])
            ratio = torch.exp(u(n, math.log(RATIO[0]), math.log(RATIO[1])))
            w, h = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
        flip = lambda on: torch.where(torch.rand(n, generator=self.generator) < 0.5, -1.0, 1.0).double() \
            if on else torch.ones(n, dtype=torch.float64)  # noqa: E731
        return {
            "w": w, "h": h, "cx": u(n, 0, 1) * (1 - w) + w / 2, "cy": u(n, 0, 1) * (1 - h) + h / 2,
            "fx": flip(cfg.get("hflip")), "fy": flip(cfg.get("vflip")),
            "angle": u(n, -1, 1) * math.radians(cfg.get("rotation") or 0.0),
            "brightness": u(n, max(0.0, 1 - cfg.get("brightness", 0)), 1 + cfg.get("brightness", 0)),
            "contrast": u(n, max(0.0, 1 - cfg.get("contrast", 0)), 1 + cfg.get("contrast", 0)),
            "sigma": u(n, 0.1, cfg["blur"]) if cfg.get("blur") else None,
        }

    def apply(self, x, p: dict[str, Any]):
        """The (N, C, H, W) uint8 batch ``x`` augmented with parameters ``p``, uint8."""
        import torch

        y = _resampled(x.float(), p, self.side if self.cfg.get("crop_scale") else None)
        y = _colour(y, p["brightness"].to(y), p["contrast"].to(y))
        if p["sigma"] is not None:
            y = _blurred(y, p["sigma"].to(y), 2 * int(np.ceil(2 * self.cfg["blur"])) + 1)
        return y.round().clamp(0, 255).to(torch.uint8)


def _resampled(x, p: dict[str, Any], side: Optional[int]):
    """One affine resampling: an output pixel (centred coordinates) is flipped, rotated, scaled to
    the crop's size and moved to its centre in the input."""
    import torch
    import torch.nn.functional as F

    n, c, height, width = x.shape
    out_h, out_w = (side, side) if side else (height, width)
    cos, sin = torch.cos(p["angle"]), torch.sin(p["angle"])
    sx, sy = p["w"] * width / out_w, p["h"] * height / out_h  # input pixels per output pixel
    # input_centred = diag(sx, sy) @ R @ diag(fx, fy) @ output_centred, in pixels; then normalised
    a = torch.stack([torch.stack([sx * cos * p["fx"], -sx * sin * p["fy"]], 1),
                     torch.stack([sy * sin * p["fx"], sy * cos * p["fy"]], 1)], 1)
    to_in = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64).view(1, 2, 1)
    from_out = torch.tensor([out_w / 2.0, out_h / 2.0], dtype=torch.float64).view(1, 1, 2)
    theta = torch.cat([to_in * a * from_out, torch.stack([2 * p["cx"] - 1, 2 * p["cy"] - 1], 1).unsqueeze(2)], 2)
    grid = F.affine_grid(theta.to(x), (n, c, out_h, out_w), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _colour(y, brightness, contrast):
    """ColorJitter's brightness (a factor) then contrast (a blend with the image's mean grey)."""
    y = (y * brightness.view(-1, 1, 1, 1)).clamp(0, 255)
    grey = y if y.shape[1] == 1 else (0.299 * y[:, 0:1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:3])
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    c = contrast.view(-1, 1, 1, 1)
    return (c * y + (1 - c) * mean).clamp(0, 255)


def _blurred(y, sigma, size: int):
    """A Gaussian blur with each image's own sigma: a separable grouped convolution, reflect padding."""
    import torch
    import torch.nn.functional as F

    n, c, height, width = y.shape
    d = torch.arange(size, dtype=y.dtype, device=y.device) - (size - 1) / 2
    k = torch.exp(-(d.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n * c, size)
    pad = size // 2
    z = y.reshape(1, n * c, height, width)
    z = F.conv2d(F.pad(z, (pad, pad, 0, 0), mode="reflect"), k.view(n * c, 1, 1, size), groups=n * c)
    z = F.conv2d(F.pad(z, (0, 0, pad, pad), mode="reflect"), k.view(n * c, 1, size, 1), groups=n * c)
    return z.view(n, c, height, width)
