"""Small real test corpora: images that scikit-learn ships, and the bad files users really meet."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def jpeg_bytes(img: Image.Image, quality: int = 90, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def png_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with a token IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def digit_images(n: int) -> list[tuple[str, Image.Image]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for i in range(n):
        grey = np.rint(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
        out.append((f"digit-{i:02d}-{digits.target[i]}", Image.fromarray(grey, "L")))
    return out


def good_files(photo: Image.Image, n_digits: int = 8) -> dict[str, bytes]:
    """Real images: digit PNGs and JPEG crops of a photograph."""
    files = {f"good/{name}.png": png_bytes(img) for name, img in digit_images(n_digits)}
    for i, box in enumerate([(0, 0, 320, 240), (100, 50, 420, 290), (300, 180, 640, 427)]):
        files[f"good/photo-{i}.jpg"] = jpeg_bytes(photo.crop(box))
    return files


def bad_files(photo: Image.Image) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, fragment the error message must contain)."""
    full = jpeg_bytes(photo)
    rng = np.random.default_rng(0)
    return {
        "bad/empty.jpg": (b"", "decode: empty file"),
        "bad/random.png": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "decode: not a format"),
        "bad/page.jpg": (b"<!DOCTYPE html><html><body>403 Forbidden</body></html>", "decode: looks like HTML"),
        "bad/truncated.jpg": (full[: len(full) // 2], "decode: truncated file"),
        "bad/bomb.png": (png_header_only(50_000, 50_000), "decode: image is 50000x50000"),
    }
