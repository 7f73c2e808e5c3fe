"""``decode.jpeg_on: predictor``: plain JPEG files decoded on the predictor's device, in batches.

The decode task reads the file and its JPEG header only (``for_device``: size, mode, orientation,
limits) and sends the encoded bytes on (about a third of a conditioned 224 px image); the
predictor decodes the batch with ``torchvision.io.decode_jpeg`` (nvJPEG on a GPU actor,
libjpeg-turbo on a CPU one), then resizes and crops there with torch's antialiased resize: the
conditioning a ``resampler: torch`` card asks for, and within one grey level of Pillow's for the
others. A file the device cannot decode is decoded again on the actor's CPU by the decode tasks'
own code, so that a bad file gets the same error row either way.
"""

from __future__ import annotations

import io
import warnings
from typing import Optional

import numpy as np

from imgclf_ray.imaging.conditioning import Conditioning
from imgclf_ray.imaging.limits import DecodeError, check_budget
from imgclf_ray.messages import describe
from imgclf_ray.spec import DecodeSpec

_SOI, _EOI = b"\xff\xd8\xff", b"\xff\xd9"


def for_device(data: bytes, options: DecodeSpec) -> Optional[tuple[int, int]]:
    """(width, height) when ``data`` is a whole JPEG the device decodes as Pillow would: 8-bit RGB
    or greyscale, no EXIF rotation to apply, within the pixel and memory limits. None otherwise:
    the decode task decodes it (and gives a bad file its error row)."""
    if not data.startswith(_SOI) or not data[-64:].rstrip(b"\x00").endswith(_EOI):
        return None  # not a JPEG, or truncated
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a decompression-bomb warning: the task says why
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None  # CMYK / YCCK: Pillow converts them, the device would not alike
            if options.exif_transpose and img.getexif().get(0x0112, 1) != 1:
                return None
            limit = options.max_image_pixels
            if limit is not None and width * height > limit:
                return None
            check_budget(width, height, 3, options.max_decode_bytes)
    except Exception:  # noqa: BLE001 - any doubt (a bad header, a limit): the task decodes it and says why
        return None
    return width, height


def _torch_mode(cond: Conditioning):
    from torchvision.transforms.v2 import InterpolationMode

    return InterpolationMode(cond.interpolation)


def _condition(img, cond: Conditioning):
    """(3, H, W) uint8 on the device -> (3, S, S): ``imaging.conditioning.condition`` with
    ``resampler: torch`` (the same sizes, crop offsets and antialiased resize)."""
    from torchvision.transforms.v2 import functional as F

    if img.device.type == "cpu":  # the layout a NumPy image has: the same kernel, the same values
        img = img.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    h, w = img.shape[-2:]
    if not cond.crop:
        return F.resize(img, [cond.resize, cond.resize], interpolation=_torch_mode(cond), antialias=True)
    size = cond.resize
    if min(w, h) != size:
        w, h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        img = F.resize(img, [h, w], interpolation=_torch_mode(cond), antialias=True)
    c = cond.crop
    if cond.crop_offset == "floor":
        left, top = (w - c) // 2, (h - c) // 2
    else:
        left, top = int(round((w - c) / 2.0)), int(round((h - c) / 2.0))
    if left < 0 or top < 0:
        return _padded(img, c, left, top)
    return img[:, top:top + c, left:left + c]


def _padded(img, c: int, left: int, top: int):
    """The c x c window at (left, top) that reaches past the image, black outside it: what
    Pillow's ``crop`` gives the decode tasks (and torchvision's CenterCrop pads to)."""
    import torch

    out = torch.zeros((img.shape[0], c, c), dtype=img.dtype, device=img.device)
    h, w = img.shape[-2:]
    ys, xs = max(0, -top), max(0, -left)
    sy, sx = max(0, top), max(0, left)
    hh, ww = min(h - sy, c - ys), min(w - sx, c - xs)
    out[:, ys:ys + hh, xs:xs + ww] = img[:, sy:sy + hh, sx:sx + ww]
    return out


def _on_cpu(data: bytes, cond: Conditioning, options: DecodeSpec) -> np.ndarray:
    """The decode tasks' own path (Pillow), for a file the device refused: (C, S, S) uint8."""
    from imgclf_ray.imaging.conditioning import condition
    from imgclf_ray.imaging.decode import decode_image

    img, _ = decode_image(data, options, cond.crop or cond.resize)
    return condition(img, cond)


def decode_batch(blobs: list[bytes], cond: Conditioning, options: DecodeSpec, device
                 ) -> tuple[list, list[Optional[str]]]:
    """Decode and condition JPEG files on ``device``: one (3, S, S) uint8 tensor per file there
    (None for a file that failed) and each file's error (``decode: cause``) or None."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to TorchCodec
        try:
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: each on its own
            images = []
            for one in encoded:
                try:
                    images.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    images.append(None)
    out: list = []
    errors: list[Optional[str]] = []
    for blob, img in zip(blobs, images):
        if img is not None:
            out.append(_condition(img, cond))
            errors.append(None)
            continue
        try:
            out.append(torch.from_numpy(_on_cpu(blob, cond, options)).to(device))
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - the decode tasks make any failure an error row
            out.append(None)
            errors.append(f"decode: {exc}" if isinstance(exc, DecodeError) else f"decode: {describe(exc)}")
    return out, errors
