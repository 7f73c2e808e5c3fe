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

from imgclf_ray.imaging.conditioning import Conditioning, enlarges_too_far
from imgclf_ray.imaging.limits import DecodeError, check_budget
from imgclf_ray.messages import describe
from imgclf_ray.spec import DecodeSpec

_SOI, _EOI = b"\xff\xd8\xff", b"\xff\xd9"


def for_device(data: bytes, options: DecodeSpec, side: Optional[int] = None) -> Optional[tuple[int, int]]:
    """(width, height) when ``data`` is a whole JPEG the device decodes as Pillow would: 8-bit RGB
    or greyscale, no EXIF rotation to apply, within the pixel and memory limits, and not a sliver
    that bringing its shorter side to ``side`` would enlarge past conditioning.MAX_ENLARGED (a
    4 KB JPEG of 40000x1: 9 GB). None otherwise: the decode task decodes it (and gives a bad file
    its error row)."""
    if not data.startswith(_SOI) or not data[-64:].rstrip(b"\x00").endswith(_EOI):
        return None  # not a JPEG, or truncated
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a decompression-bomb warning: the task says why
            img = Image.open(io.BytesIO(data), formats=["JPEG"])
            width, height = img.size
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None  # CMYK / YCCK: Pillow converts them, the device would not alike
            if img.info.get("progressive") or img.info.get("progression"):
                return None  # nvJPEG decodes progressive JPEGs on the host: the tasks' cores do it as well
            if options.exif_transpose and img.getexif().get(0x0112, 1) != 1:
                return None
            limit = options.max_image_pixels
            if limit is not None and width * height > limit:
                return None
            check_budget(width, height, 3, options.max_decode_bytes)
            if side is not None and enlarges_too_far(width, height, side):
                return None
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


# The most pixels decoded at full size on the device at once: 64 MP, about 192 MB of RGB (a batch of
# 128 phone photos of 24 MP would be 9 GB, outside what the predictor's batch limit measures).
DEVICE_PIXELS = 64_000_000


def chunks(pixels: list[int], budget: Optional[int] = None) -> list[list[int]]:
    """Consecutive groups of indices whose full-size pixels add up to at most ``budget`` (default
    DEVICE_PIXELS; an image larger than the budget alone): what one nvJPEG call decodes."""
    budget = DEVICE_PIXELS if budget is None else budget
    out: list[list[int]] = []
    total = 0
    for i, n in enumerate(pixels):
        if not out or total + n > budget:
            out.append([])
            total = 0
        out[-1].append(i)
        total += n
    return out


def halving(encoded: list, decode) -> list:
    """``decode(list) -> list`` over ``encoded``; when a call fails (one bad file fails nvJPEG's
    whole batch; or the device ran out of memory), each half again, down to single files, which
    fail alone (None). An error of the device itself (or out of memory with one file) is raised."""
    from imgclf_ray.errors import device_fault

    if not encoded:
        return []
    try:
        return list(decode(encoded))
    except RuntimeError as exc:
        fault = device_fault(exc)
        if fault == "fatal" or (fault == "oom" and len(encoded) == 1):
            raise  # the device's failure, not a file's: the predictor stops the run
        if len(encoded) == 1:
            return [None]
        mid = len(encoded) // 2
        return halving(encoded[:mid], decode) + halving(encoded[mid:], decode)


def decode_batch(blobs: list[bytes], cond: Conditioning, options: DecodeSpec, device,
                 pixels: Optional[list[int]] = None) -> tuple[list, list[Optional[str]]]:
    """Decode and condition JPEG files on ``device``: one (3, S, S) uint8 tensor per file there
    (None for a file that failed) and each file's error (``decode: cause``) or None. In chunks of
    at most DEVICE_PIXELS full-size pixels (``pixels``: each file's width x height, from its header),
    each full-size image freed once conditioned."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(items: list) -> list:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to TorchCodec
            return decode_jpeg(items, mode=ImageReadMode.RGB, device=device)

    out: list = [None] * len(blobs)
    errors: list[Optional[str]] = [None] * len(blobs)
    for chunk in chunks(pixels if pixels is not None else [0] * len(blobs)):
        images = halving([torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in chunk], decode)
        for k, i in enumerate(chunk):
            img, images[k] = images[k], None  # the full-size image goes once conditioned
            if img is not None:
                out[i] = _condition(img, cond)
                continue
            try:
                pixels_here = _on_cpu(blobs[i], cond, options)
            except Exception as exc:  # noqa: BLE001 - the decode tasks make any failure an error row
                errors[i] = f"decode: {exc}" if isinstance(exc, DecodeError) else f"decode: {describe(exc)}"
                continue
            out[i] = torch.from_numpy(pixels_here).to(device)  # a device's failure here is the run's
    return out, errors
