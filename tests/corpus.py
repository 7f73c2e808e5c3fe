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


def eob_scans_jpeg(side: int, scans: int) -> bytes:
    """A progressive greyscale JPEG of ``scans`` AC refinement scans, each one end-of-band run over
    every block (libjpeg visits every block's 63 coefficients per scan: CPU from a few bytes)."""
    import struct

    def segment(marker: int, body: bytes) -> bytes:
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body

    blocks = (-(-side // 8)) ** 2
    bits = ("0" + "1" * 14) * -(-blocks // 32767)  # EOB runs of 32,767 blocks (symbol 0xE0, code 0)
    bits += "1" * (-len(bits) % 8)
    data = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    scan = segment(0xDA, b"\x01\x01\x00" + bytes([1, 63, 0x10])) + data
    return (b"\xff\xd8" + segment(0xDB, b"\x00" + b"\x01" * 64)
            + segment(0xC0 + 2, struct.pack(">BHHB", 8, side, side, 1) + b"\x01\x11\x00")
            + segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\xe0") + scan * scans + b"\xff\xd9")
