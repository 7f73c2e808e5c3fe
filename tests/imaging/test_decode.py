"""Decoding real images and the bad files users really meet."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgclf_ray.imaging.decode import DecodeError, decode_image
from imgclf_ray.spec import DecodeSpec
from tests.corpus import eob_scans_jpeg, bad_files, jpeg_bytes, png_bytes, png_header_only


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
    # An IPTC/NAA file hands its image to Image.open() with every format enabled: the EPS inside
    # one ran Ghostscript. Neither is opened; and Pillow itself, asked directly in a process that
    # imported the decoder, finds no Ghostscript to run.
    (tmp_path / "x.jpg").write_bytes(iptc_around(buf.getvalue(), 16, 16))
    code = ("import sys; from imgclf_ray.imaging.decode import DecodeError, decode_image, frame_count, looks_like_image\n"
            "for name in sys.argv[1:]:\n"
            "    data = open(name, 'rb').read()\n"
            "    assert not looks_like_image(data[:64]) and frame_count(data) == 1\n"
            "    try:\n        decode_image(data)\n    except DecodeError as exc:\n        print(exc)\n"
            "from PIL import Image\n"
            "try:\n    Image.open(sys.argv[1]).load()\nexcept OSError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.eps"), str(tmp_path / "x.jpg")],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2],
                          env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "PostScript / EPS: not decoded (rendering it runs Ghostscript on the file's program)",
        "IPTC/NAA image: not decoded (the image inside it would be opened in any format, unchecked)",
        "Unable to locate Ghostscript on paths"]
    assert not (tmp_path / "ran").exists()


def iptc_around(image: bytes, width: int, height: int) -> bytes:
    """An IPTC/NAA file (Pillow's IptcImagePlugin) whose image data (8,10) is ``image``'s bytes."""
    import struct

    def field(record: int, dataset: int, value: bytes) -> bytes:
        return bytes([0x1C, record, dataset]) + struct.pack(">H", len(value)) + value

    return (field(3, 60, bytes([3, 1])) + field(3, 20, struct.pack(">H", width)) + field(3, 30, struct.pack(">H", height))
            + field(3, 120, bytes([5])) + b"".join(field(8, 10, image[at:at + 0x7000]) for at in range(0, len(image), 0x7000))
            + bytes([0x1C, 9, 9, 0, 0]))


def blp_around(jpeg: bytes, width: int, height: int) -> bytes:
    """A BLP1 texture (Pillow's BlpImagePlugin, JPEG compression) declaring ``width`` x ``height``."""
    import struct

    return (b"BLP1" + struct.pack("<iIIIii", 0, 0, width, height, 5, 0) + struct.pack("<16I", 160, *[0] * 15)
            + struct.pack("<16I", len(jpeg), *[0] * 15) + struct.pack("<I", 0) + jpeg)


def test_a_blp_texture_s_jpeg_is_held_to_the_texture_and_the_scan_limit(sample_photo):
    """Pillow hands a BLP1 texture's JPEG to libjpeg whatever its size and scans: a 238 KB texture
    saying 1x1 decoded a 9000x9000 JPEG of 2,000 scans in 108 s and 955 MB, its 1x1 checked. The
    JPEG must be the texture's size, in at most 256 scans; one that is decodes as Pillow decodes it."""
    small = sample_photo.resize((64, 48))
    good = blp_around(jpeg_bytes(small), 64, 48)
    img, size = decode_image(good)
    assert size == (64, 48)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(good)).convert("RGB")))
    with pytest.raises(DecodeError, match=r"^its BLP texture holds a JPEG of 64x48, its header says 1x1: not decoded$"):
        decode_image(blp_around(jpeg_bytes(small), 1, 1))
    with pytest.raises(DecodeError, match=r"^its JPEG has 257 scans, more than 256"):
        decode_image(blp_around(eob_scans_jpeg(64, 257), 64, 64))
    assert decode_image(blp_around(eob_scans_jpeg(64, 256), 64, 64))[1] == (64, 64)


def test_a_gzip_compressed_fits_image_is_held_to_what_pillow_s_decoder_holds():
    """Pillow inflates a gzip-compressed FITS image (4 bytes a pixel) and converts it in Python, a
    list of ints a byte: a 349 KB file of 9400x9400 32-bit pixels held 3.9 GB for an image of
    353 MB. Its budget counts what the decoder holds; a small one decodes as Pillow decodes it."""
    import gzip

    def fits(side: int, bits: int) -> bytes:
        def header(*cards: tuple[str, object]) -> bytes:
            text = b"".join(f"{k:<8}= {v}".ljust(80).encode() for k, v in cards) + b"END".ljust(80)
            return text + b" " * (-len(text) % 2880)

        return (header(("SIMPLE", "T"), ("BITPIX", 8), ("NAXIS", 0))
                + header(("XTENSION", "'BINTABLE'"), ("BITPIX", 8), ("NAXIS", 2), ("NAXIS1", 0), ("NAXIS2", 0),
                         ("ZIMAGE", "T"), ("ZCMPTYPE", "'GZIP_1  '"), ("ZBITPIX", bits), ("ZNAXIS", 2),
                         ("ZNAXIS1", side), ("ZNAXIS2", side))
                + gzip.compress(bytes(range(256)) * (side * side * 4 // 256)))

    small = fits(64, 8)
    np.testing.assert_array_equal(np.asarray(decode_image(small)[0])[..., 0], np.asarray(Image.open(io.BytesIO(small))))
    with pytest.raises(DecodeError, match=r"^gzip-compressed FITS image of 2048x2048 needs 176 MiB to decode, over "
                                          r"decode.max_decode_bytes \(64 MiB\)$"):
        decode_image(fits(2048, 32), DecodeSpec(max_decode_bytes=64 << 20))


def _boxes(jp2: bytes) -> list[tuple[bytes, bytes]]:
    out, at = [], 0
    while at < len(jp2):
        size = int.from_bytes(jp2[at:at + 4], "big")
        out.append((jp2[at + 4:at + 8], jp2[at + 8:at + size]))
        at += size
    return out


def _jp2(boxes: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join((8 + len(body)).to_bytes(4, "big") + kind + body for kind, body in boxes)


def test_a_jpeg_2000_codestream_must_say_what_its_file_header_says():
    """openjpeg allocates what the codestream's SIZ says; Pillow sizes the image from the JP2
    header: a 559-byte JP2 whose header says 1 component over a codestream of 128 components in
    65,535 tiles held 9.5 GB. A codestream that says otherwise than the header, or that is cut into
    more than 4,096 tiles smaller than 64x64, is refused before openjpeg reads it; Pillow's own
    files, in every mode, tiled or not, decode as Pillow decodes them."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    made = {}
    for mode in ("L", "LA", "RGB", "RGBA", "I;16"):
        img = photo.convert(mode) if mode != "I;16" else Image.fromarray(
            np.asarray(photo.convert("L")).astype(np.uint16) * 200)
        for bare in (False, True):
            for extra in ({}, {"tile_size": (32, 32)}, {"irreversible": True}):
                buf = io.BytesIO()
                img.save(buf, "JPEG2000", no_jp2=bare, **extra)
                made[(mode, bare, str(extra))] = buf.getvalue()
    for key, data in made.items():
        decoded, size = decode_image(data)
        reference = Image.open(io.BytesIO(data))
        assert size == (120, 90) and decoded.mode == "RGB", key
        if reference.mode in ("L", "RGB"):
            assert np.array_equal(np.asarray(decoded), np.asarray(reference.convert("RGB"))), key
    # A greyscale JP2's header over an RGB codestream, an unknown box before it (Pillow then does
    # not look at the codestream): refused, naming both.
    grey = _boxes(made[("L", False, "{}")])
    colour = dict(_boxes(made[("RGB", False, "{}")]))
    spliced = _jp2([(k, colour[b"jp2c"] if k == b"jp2c" else v) for k, v in grey[:-1]] + [(b"junk", bytes(8))]
                   + [(b"jp2c", colour[b"jp2c"])])
    with pytest.raises(DecodeError, match=r"^its JPEG 2000 codestream is 120x90 in 3 components, its file header "
                                          r"says 120x90 in 1: not decoded$"):
        decode_image(spliced)
    # A codestream whose SIZ cuts it into 1x1 tiles (10,800 of them), bare and in a JP2.
    for data in (made[("RGB", True, "{}")], made[("RGB", False, "{}")]):
        at = data.index(b"\xff\x4f\xff\x51") + 4 + 2 + 2 + 16  # SOC, SIZ, Lsiz, Rsiz, Xsiz..YOsiz
        tiny = data[:at] + (1).to_bytes(4, "big") * 2 + data[at + 8:]
        with pytest.raises(DecodeError, match="cut into more than 4,096 tiles smaller than 64x64"):
            decode_image(tiny)


def test_a_jpeg_of_more_scans_than_nvimagecodec_allows_is_not_decoded(sample_photo):
    """2,000 refinement scans of 119 bytes over 9000x9000 took 100 s of CPU (libjpeg decodes each
    scan over the whole image). More than 256 scans (nvImageCodec's default limit) is refused
    before libjpeg starts; a progressive JPEG as encoders make them (about ten scans) decodes."""
    progressive = io.BytesIO()
    sample_photo.save(progressive, "JPEG", progressive=True, quality=90)
    from imgclf_ray.imaging.limits import jpeg_scans

    assert jpeg_scans(progressive.getvalue()) == progressive.getvalue().count(b"\xff\xda") > 5
    assert decode_image(progressive.getvalue())[1] == sample_photo.size
    assert decode_image(eob_scans_jpeg(64, 256))[1] == (64, 64)
    with pytest.raises(DecodeError, match=r"^its JPEG has 257 scans, more than 256 \(each is decoded over the whole "
                                          r"image\): not decoded$"):
        decode_image(eob_scans_jpeg(64, 257))
    # Scans are counted as libjpeg reads them, to the image's end: what follows it (a motion photo's
    # video, here one full of SOS-like bytes) is not counted, and bytes inside segments are not scans.
    trailer = (b"\xff\xda\x00\x08" + bytes(60)) * 400
    assert decode_image(progressive.getvalue() + trailer)[1] == sample_photo.size
    # A stuffed pair (FF 00) outside a scan is skipped as libjpeg skips it, not read as a segment
    # whose length would pass over the scans after it.
    scans = eob_scans_jpeg(64, 257)
    hidden = scans[:2] + b"\xff\x00" + scans[2:]
    with pytest.raises(DecodeError, match="^its JPEG has 257 scans"):
        decode_image(hidden)
    commented = io.BytesIO()
    sample_photo.save(commented, "JPEG", comment=b"\xff\xda" * 300)
    assert decode_image(commented.getvalue())[1] == sample_photo.size


def _one_tile_tiff(width: int, height: int, tile: int) -> bytes:
    """An 8-bit greyscale TIFF of width x height stored as one deflated tile x tile tile."""
    import struct
    import zlib

    packed = zlib.compress(bytes(tile * tile), 9)
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 1), (277, 3, 1), (284, 3, 1),
            (322, 4, tile), (323, 4, tile), (324, 4, 8 + 2 + 12 * 11 + 4), (325, 4, len(packed))]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in tags) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8) + ifd + packed


def test_a_tiff_tile_is_held_to_the_image_limits():
    """libtiff decodes a tile whole whatever part of it the image covers: a 2 MB TIFF of 1x1 pixel
    in one 46336x46336 tile held 2.2 GB. A tile over decode.max_image_pixels or the byte budget is
    refused before libtiff reads it; a tile larger than a small image, as encoders write, decodes."""
    assert decode_image(_one_tile_tiff(100, 60, 256))[1] == (100, 60)
    with pytest.raises(DecodeError, match=r"^its TIFF tiles are 4096x4096 = 16,777,216 pixels, over the limit of "
                                          r"1,000,000 \(decode.max_image_pixels\)$"):
        decode_image(_one_tile_tiff(1, 1, 4096), DecodeSpec(max_image_pixels=1_000_000))
    with pytest.raises(DecodeError, match=r"^TIFF tile of 4096x4096 needs 16 MiB to decode, over decode.max_decode_bytes"):
        decode_image(_one_tile_tiff(1, 1, 4096), DecodeSpec(max_decode_bytes=8 << 20))


def test_deep_greyscale_is_converted_a_block_at_a_time_as_the_whole_would_be(monkeypatch):
    """16/32-bit and float greyscale onto 0..255 a block of samples at a time (a 9459x9459 32-bit
    TIFF's int64 copies, whole, held 2.6 GB): the same as the whole array's formula, at block
    edges too; NaN as the lowest value, infinities and a constant image as before."""
    from imgclf_ray.imaging import decode

    monkeypatch.setattr(decode, "BLOCK", 7)
    rng = np.random.default_rng(3)
    ints = rng.integers(-70_000, 140_000, (13, 11)).astype(np.int32)
    assert np.array_equal(decode._to_8bit(ints), ((np.clip(ints.astype(np.int64), 0, 65535) * 255 + 32767)
                                                  // 65535).astype(np.uint8))
    floats = rng.normal(size=(13, 11)).astype(np.float32)
    floats[2, 3], floats[5, 5], floats[7, 1] = np.nan, np.inf, -np.inf
    finite = floats[np.isfinite(floats)]
    lo, hi = float(finite.min()), float(finite.max())
    expected = np.clip(np.rint((np.nan_to_num(floats, nan=lo) - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
    assert np.array_equal(decode._to_8bit(floats), expected)
    assert decode._to_8bit(floats)[2, 3] == 0
    assert not decode._to_8bit(np.full((5, 5), 3.5, np.float32)).any()


def test_an_icns_icon_s_jpeg_2000_entry_must_be_an_icon_s():
    """Pillow hands an ICNS entry of JPEG 2000 to its JP2 reader, which trusts the JP2 header: a
    575-byte icon over a codestream of 128 components in 65,535 tiles held 9.5 GB. Each such
    codestream must be an icon's; icons as Pillow writes them, and a 512x512 JP2 entry, decode."""
    def icns(entries: list[tuple[bytes, bytes]]) -> bytes:
        body = b"".join(kind + (8 + len(data)).to_bytes(4, "big") + data for kind, data in entries)
        return b"icns" + (8 + len(body)).to_bytes(4, "big") + body

    icon = Image.new("RGB", (512, 512), (20, 90, 160))
    written = io.BytesIO()
    icon.save(written, "ICNS")
    assert decode_image(written.getvalue())[1] == (1024, 1024)  # (Pillow writes every size, up to 2x)
    jp2 = io.BytesIO()
    icon.save(jp2, "JPEG2000")
    assert decode_image(icns([(b"ic09", jp2.getvalue())]))[1] == (512, 512)
    at = jp2.getvalue().index(b"\xff\x4f\xff\x51") + 4 + 2 + 2 + 16
    tiles = jp2.getvalue()[:at] + (1).to_bytes(4, "big") * 2 + jp2.getvalue()[at + 8:]  # 262,144 tiles of 1x1
    with pytest.raises(DecodeError, match="^its ICNS icon holds a JPEG 2000 codestream that is no icon's"):
        decode_image(icns([(b"ic09", tiles)]))
    big = io.BytesIO()
    Image.new("RGB", (1200, 1000)).save(big, "JPEG2000")
    with pytest.raises(DecodeError, match="^its ICNS icon holds a JPEG 2000 codestream that is no icon's"):
        decode_image(icns([(b"ic09", big.getvalue())]))  # (over 1024x1024)
    # A block whose length is under its own header: Pillow seeks back and reads on past it.
    entry = b"ic09" + (8 + len(jp2.getvalue())).to_bytes(4, "big") + jp2.getvalue()
    hidden = b"AAAA" + (4).to_bytes(4, "big") + (8).to_bytes(4, "big") + entry
    hidden = b"icns" + (8 + len(hidden)).to_bytes(4, "big") + hidden
    assert Image.open(io.BytesIO(hidden)).size == (512, 512)  # (Pillow finds the entry behind it)
    with pytest.raises(DecodeError, match="^its ICNS icon has a block shorter than its own header: not decoded$"):
        decode_image(hidden)


def _one_strip_tiff(width: int, height: int, rows: int, strip: bytes, compression: int = 7, offset_kind: int = 4) -> bytes:
    """A greyscale TIFF of one strip (RowsPerStrip ``rows``) holding ``strip`` as it is (its
    StripOffsets of TIFF type ``offset_kind``: 4 LONG, 11 FLOAT)."""
    import struct

    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, compression), (262, 3, 1), (277, 3, 1),
            (278, 4, rows), (273, offset_kind, 8 + 2 + 12 * 9 + 4), (279, 4, len(strip))]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in tags) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8) + ifd + strip


def test_a_jpeg_strip_of_a_tiff_must_fit_its_strip():
    """libtiff hands a strip's JPEG to libjpeg as that JPEG says, and lets the last strip's be
    taller than the strip: a 5.8 KB TIFF whose 65500x256 strip held a 65500x65500 progressive JPEG
    took 8.5 GB. A JPEG strip must fit its strip (to libjpeg's 16-row blocks), in at most 256
    scans; old-style JPEG (compression 6) is refused; JPEG TIFFs as libtiff writes them decode."""
    from tests.corpus import eob_scans_jpeg

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (333, 1001, 3), dtype=np.uint8))
    for img in (photo, photo.convert("L")):
        for extra in ({}, {"tiffinfo": {278: 16}}):
            written = io.BytesIO()
            img.save(written, "TIFF", compression="jpeg", **extra)
            assert decode_image(written.getvalue())[1] == (1001, 333)
    tall = io.BytesIO()
    Image.new("L", (64, 4096), 9).save(tall, "JPEG")
    with pytest.raises(DecodeError, match=r"^a JPEG strip or tile of its TIFF is not the 64x8 it is in: not decoded$"):
        decode_image(_one_strip_tiff(64, 8, 8, tall.getvalue()))
    with pytest.raises(DecodeError, match="^a JPEG strip or tile of its TIFF has more than 256 scans"):
        decode_image(_one_strip_tiff(64, 64, 64, eob_scans_jpeg(64, 257)))
    fits = io.BytesIO()
    Image.new("L", (64, 8), 9).save(fits, "JPEG")
    assert decode_image(_one_strip_tiff(64, 8, 8, fits.getvalue()))[1] == (64, 8)
    with pytest.raises(DecodeError, match=r"^its TIFF is compressed with old-style JPEG \(compression 6\)"):
        decode_image(_one_strip_tiff(64, 8, 8, fits.getvalue(), compression=6))
    with pytest.raises(DecodeError, match="^its TIFF's JPEG strips or tiles are not given as whole numbers"):
        decode_image(_one_strip_tiff(64, 8, 8, fits.getvalue(), offset_kind=11))  # (it was a TypeError)


def test_a_late_frame_is_reached_within_decode_max_seconds(monkeypatch):
    """Pillow composites every frame before the one asked for: decode.frame 999 of a 23 KB GIF of
    one-pixel frames on a 9000x9000 screen took 215 s. Stepped a frame at a time, within
    decode.max_seconds (the thread's CPU clock made to tick a second a reading: the cut falls at the
    same frame on any machine); frames before the cut decode as Pillow gives them."""
    import itertools

    from imgclf_ray.imaging import decode

    frames = [Image.new("RGB", (40, 30), (40 * i, 0, 0)) for i in range(6)]
    for fmt in ("GIF", "PNG", "WEBP"):
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], **({"lossless": True} if fmt == "WEBP" else {}))
        ticks = itertools.count()
        monkeypatch.setattr(decode.time, "thread_time", lambda: float(next(ticks)))
        img, _ = decode_image(buf.getvalue(), DecodeSpec(frame=3, max_seconds=10))
        assert np.asarray(img)[0, 0, 0] == 120, fmt
        with pytest.raises(DecodeError, match=r"^reaching frame 5 took more than decode.max_seconds \(2.5 s of CPU\): "
                                              r"not decoded$"):
            decode_image(buf.getvalue(), DecodeSpec(frame=5, max_seconds=2.5))
    # WebP's seek only notes the frame (its decoder composites on load): each step is decoded, so
    # that the CPU the steps take is the one counted (a 625 KB WebP: 18 s at a 0.2 s limit).
    from PIL import WebPImagePlugin

    decoded = []
    real = WebPImagePlugin.WebPImageFile._get_next
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "_get_next", lambda self: decoded.append(1) or real(self))
    with pytest.raises(DecodeError, match="^reaching frame 5"):
        decode_image(buf.getvalue(), DecodeSpec(frame=5, max_seconds=2.5))
    assert len(decoded) >= 2  # (the frames stepped through before the cut were decoded, and timed)
