"""Decoding real images and the bad files users really meet."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgclf_ray.imaging.decode import DecodeError, decode_image
from imgclf_ray.spec import DecodeSpec
from tests.corpus import bad_files, jpeg_bytes, png_bytes, png_header_only


@pytest.mark.parametrize("name", ["empty.jpg", "random.png", "page.jpg", "truncated.jpg", "bomb.png"])
def test_bad_files_raise_a_readable_decode_error(sample_photo, name):
    data, fragment = bad_files(sample_photo)[f"bad/{name}"]
    with pytest.raises(DecodeError) as info:
        decode_image(data)
    assert fragment.removeprefix("decode: ") in str(info.value)
    assert "BytesIO" not in str(info.value)


def test_truncated_jpeg_accepted_only_when_asked(sample_photo):
    data = jpeg_bytes(sample_photo)[:20_000]
    img, size = decode_image(data, DecodeSpec(allow_truncated=True))
    assert size == sample_photo.size and img.mode == "RGB"


def test_pixel_limit_is_configurable():
    small = png_bytes(Image.new("RGB", (100, 100)))
    with pytest.raises(DecodeError, match="decode.max_image_pixels"):
        decode_image(small, DecodeSpec(max_image_pixels=9_999))
    assert decode_image(small, DecodeSpec(max_image_pixels=10_000))[1] == (100, 100)
    # null turns the pixel guard off; the memory budget (1 GiB) still refuses 400 MP of RGB ...
    with pytest.raises(DecodeError, match=r"1,144 MiB to decode, over decode.max_decode_bytes"):
        decode_image(png_header_only(20_000, 20_000), DecodeSpec(max_image_pixels=None))
    # ... and without it the header is accepted, and the missing data is what fails.
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        decode_image(png_header_only(20_000, 20_000), DecodeSpec(max_image_pixels=None, max_decode_bytes=None))


def test_exif_orientation_applied(sample_photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = jpeg_bytes(sample_photo, exif=exif.tobytes())
    img, size = decode_image(data)
    assert img.size == (427, 640) and size == (427, 640)
    raw, raw_size = decode_image(data, DecodeSpec(exif_transpose=False))
    assert raw.size == (640, 427) and raw_size == (640, 427)


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256, dtype=np.uint16).reshape(16, 16)
    img16 = Image.fromarray(ramp)
    assert img16.mode.startswith("I")
    img, _ = decode_image(png_bytes(img16))
    arr = np.asarray(img)[:, :, 0]
    assert arr.min() == 0 and arr.max() == 255
    assert len(np.unique(arr)) > 200  # a clipping convert() would leave almost everything at 255


def test_cmyk_palette_transparency_and_la_become_rgb(sample_photo):
    cmyk, _ = decode_image(jpeg_bytes(sample_photo.convert("CMYK")))
    assert cmyk.mode == "RGB"
    assert abs(np.asarray(cmyk, dtype=float).mean() - np.asarray(sample_photo, dtype=float).mean()) < 10

    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0] + [0, 255, 0] * 255)
    pal.info["transparency"] = 0  # index 0 (red) is transparent
    img, _ = decode_image(png_bytes(pal, transparency=0), DecodeSpec(background=(0, 0, 255)))
    assert np.asarray(img)[0, 0].tolist() == [0, 0, 255]

    la = Image.merge("LA", [Image.new("L", (4, 4), 200), Image.new("L", (4, 4), 0)])
    img, _ = decode_image(png_bytes(la))
    assert np.asarray(img)[0, 0].tolist() == [255, 255, 255]


def test_animated_gif_and_multipage_tiff_frames():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    for fmt in ("GIF", "TIFF"):
        buf = io.BytesIO()
        frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:])
        data = buf.getvalue()
        first, _ = decode_image(data)
        assert np.asarray(first)[0, 0].argmax() == 0
        third, _ = decode_image(data, DecodeSpec(frame=2))
        assert np.asarray(third)[0, 0].argmax() == 2
        with pytest.raises(DecodeError, match="frame 5"):
            decode_image(data, DecodeSpec(frame=5))


def test_jpeg_draft_decodes_smaller_but_never_below_target(sample_photo):
    data = jpeg_bytes(sample_photo)
    img, size = decode_image(data, DecodeSpec(jpeg_draft=True), target_short_side=100)
    assert size == (640, 427)
    assert 100 <= min(img.size) < 427
    assert decode_image(data, target_short_side=100)[0].size == (640, 427)  # off by default


def test_postscript_is_never_handed_to_ghostscript(tmp_path):
    """Pillow opens EPS and renders it by running Ghostscript on the file's PostScript program,
    wherever `gs` is installed (a cluster image with ImageMagick has it): an archive's file would
    run a program. With a `gs` on PATH that records each call (in a process of its own: Pillow
    looks for gs once), an EPS file (under an image's name too) is one error saying why, and
    nothing ran it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, "EPS")
    (tmp_path / "x.eps").write_bytes(buf.getvalue())
    (tmp_path / "bin").mkdir()
    gs = tmp_path / "bin" / "gs"
    gs.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'ran'}\nexit 1\n")
    gs.chmod(0o755)
    code = ("import sys; from imgclf_ray.imaging.decode import DecodeError, decode_image, frame_count, looks_like_image\n"
            "data = open(sys.argv[1], 'rb').read()\n"
            "assert not looks_like_image(data[:64]) and frame_count(data) == 1\n"
            "try:\n    decode_image(data)\nexcept DecodeError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.eps")], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parents[2],
                          env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "PostScript / EPS: not decoded (rendering it runs Ghostscript on the file's program)"
    assert not (tmp_path / "ran").exists()
