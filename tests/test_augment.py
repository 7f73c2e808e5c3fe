"""Batched training augmentation against torchvision's per-image functional ops, with the same
parameters: exact for flips and quarter turns, within one grey level for the crop (bilinear,
torchvision without antialias) and the blur, two for brightness then contrast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from imgclf_ray.training.augment import BatchAugment


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """Eight 32x32 RGB images with structure (gradients, a bright square, noise)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:32, 0:32]
    out = []
    for i in range(8):
        img = np.stack([x * 7 + i * 5, y * 6, (x + y) * 3], 0).astype(np.float64)
        img[:, 8 + i:16 + i, 4:12] = 250
        out.append(np.clip(img + rng.normal(0, 8, img.shape), 0, 255))
    return torch.from_numpy(np.stack(out).astype(np.uint8))


def _params(n: int, **given) -> dict:
    one = torch.ones(n, dtype=torch.float64)
    p = {"w": one, "h": one, "cx": one / 2, "cy": one / 2, "fx": one, "fy": one, "angle": 0 * one,
         "brightness": one, "contrast": one, "sigma": None}
    return {**p, **{k: torch.as_tensor(v, dtype=torch.float64) if k != "sigma" or v is not None else None
                    for k, v in given.items()}}


def _close(a: torch.Tensor, b: torch.Tensor, levels: int) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.uint8
    assert int((a.int() - b.int()).abs().max()) <= levels


def test_flips_and_quarter_turns_are_exact(batch):
    n = len(batch)
    flip = torch.tensor([-1.0, 1.0] * (n // 2))
    out = BatchAugment({}, 32).apply(batch, _params(n, fx=flip))
    for i in range(n):
        _close(out[i], batch[i].flip(-1) if flip[i] < 0 else batch[i], 0)
    out = BatchAugment({}, 32).apply(batch, _params(n, fy=-torch.ones(n)))
    _close(out, batch.flip(-2), 0)
    turned = BatchAugment({}, 32).apply(batch, _params(n, angle=[math.pi / 2] * n))
    assert any(torch.equal(turned, torch.rot90(batch, k, dims=(-2, -1))) for k in (1, -1))


def test_the_crop_is_torchvisions_resized_crop(batch):
    n = len(batch)
    # a 16x20 box at (top 6, left 4) -> 32x32: centre and size as fractions of the image
    out = BatchAugment({"crop_scale": [0.1, 1.0]}, 32).apply(
        batch, _params(n, w=[20 / 32] * n, h=[16 / 32] * n, cx=[(4 + 10) / 32] * n, cy=[(6 + 8) / 32] * n))
    ref = TF.resized_crop(batch, 6, 4, 16, 20, [32, 32], antialias=False)
    # torchvision resizes the cut-out crop (its border samples clamp to the crop's edge); the one
    # resampling reads the image's own pixels there: the same everywhere but the outermost ring
    _close(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], 1)


def test_brightness_contrast_and_blur_are_colorjitters_and_gaussianblurs(batch):
    n = len(batch)
    b, c, s = np.linspace(0.6, 1.4, n), np.linspace(1.3, 0.5, n), np.linspace(0.3, 1.5, n)
    out = BatchAugment({"brightness": 0.4, "contrast": 0.5}, 32).apply(batch, _params(n, brightness=b, contrast=c))
    ref = torch.stack([TF.adjust_contrast(TF.adjust_brightness(batch[i], b[i]), c[i]) for i in range(n)])
    _close(out, ref, 2)  # torchvision rounds to uint8 between brightness and contrast
    aug = BatchAugment({"blur": 1.5}, 32)
    out = aug.apply(batch, _params(n, sigma=s))
    size = 2 * int(np.ceil(2 * 1.5)) + 1
    ref = torch.stack([TF.gaussian_blur(batch[i], [size, size], [float(s[i])] * 2) for i in range(n)])
    _close(out, ref, 1)


def test_parameters_are_drawn_per_image_and_seeded(batch):
    cfg = {"hflip": True, "rotation": 15, "crop_scale": [0.8, 1.0], "brightness": 0.2, "contrast": 0.2, "blur": 1.0}
    a, b = BatchAugment(cfg, 32, seed=3)(batch), BatchAugment(cfg, 32, seed=3)(batch)
    assert torch.equal(a, b) and not torch.equal(a, BatchAugment(cfg, 32, seed=4)(batch))
    p = BatchAugment(cfg, 32, seed=3).params(256)
    assert 0.3 < float((p["fx"] < 0).double().mean()) < 0.7  # flipped half the time, image by image
    assert float(p["angle"].abs().max()) <= math.radians(15) and len(set(p["angle"].tolist())) == 256
    area = p["w"] * p["h"]
    assert float(area.min()) >= 0.77 and float(area.max()) <= 1.0 + 1e-9  # a side clamped to the image: less area
    assert ((p["cx"] - p["w"] / 2) >= -1e-9).all() and ((p["cx"] + p["w"] / 2) <= 1 + 1e-9).all()
