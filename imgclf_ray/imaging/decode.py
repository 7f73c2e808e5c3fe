"""Bytes -> RGB pixels with Pillow, safely.

Pillow's defaults are wrong for untrusted archives in three ways we correct here: the decompression
bomb check only warns below twice its limit, truncated files may be accepted depending on a
process-global flag, and ``convert("RGB")`` clips 16-bit images instead of scaling them.
"""

from __future__ import annotations

import io
import time
import warnings
from typing import Optional

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imgclf_ray.messages import describe, scrub
from imgclf_ray.spec import DecodeSpec


from imgclf_ray.imaging.limits import BLOCK, DecodeError, check_budget, check_scans  # noqa: F401 - re-exported


SNIFF_BYTES = 4096


# Formats Pillow would open that are not decoded here: EPS renders by running Ghostscript (an
# interpreter of the file's PostScript program) where one is installed; an IPTC/NAA file's image is
# handed to Image.open() with every format enabled (an EPS inside ran Ghostscript, and a JPEG or
# JPEG 2000 inside met none of the checks here).
NOT_OPENED = frozenset({"EPS", "IPTC"})


def _no_ghostscript() -> None:
    """Pillow runs Ghostscript for an EPS image wherever one reaches it; in this process it never
    finds one (its own check of the binary, answered once here)."""
    from PIL import EpsImagePlugin

    EpsImagePlugin.gs_binary = False


_no_ghostscript()


def _formats() -> list[str]:
    Image.init()
    return [f for f in Image.OPEN if f not in NOT_OPENED]


def looks_like_image(head: bytes) -> bool:
    """Whether the first bytes of a file are those of an image imgclf decodes: DICOM's preamble
    ('DICM' at byte 128) or the magic number of a format Pillow opens (its plugins' own checks)."""
    from imgclf_ray.imaging import dicom

    if dicom.is_dicom(head):
        return True
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        if name in NOT_OPENED:
            continue
        try:
            if accept is not None and accept(head):
                return True
        except Exception:  # noqa: BLE001 - a plugin's check that fails on these bytes says no
            continue
    return False


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "looks like HTML/XML text, not an image"
    if head.startswith((b"%!ps", b"\xc5\xd0\xd3\xc6")):
        return "PostScript / EPS: not decoded (rendering it runs Ghostscript on the file's program)"
    if data[:1] == b"\x1c" and data[1:2] in bytes([*range(1, 10), 240]):
        return "IPTC/NAA image: not decoded (the image inside it would be opened in any format, unchecked)"
    return "not a format Pillow can identify"


def _to_8bit(arr: np.ndarray) -> np.ndarray:
    """Scale integer / float single-channel data to uint8 over its type's range (never clip),
    a block of samples at a time (a 9459x9459 32-bit TIFF's int64 copies of the whole held 2.6 GB)."""
    if arr.dtype == np.uint8:
        return arr
    flat, out = arr.reshape(-1), np.empty(arr.size, np.uint8)
    blocks = [slice(at, at + BLOCK) for at in range(0, flat.size, BLOCK)]
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = np.inf, -np.inf
        for block in blocks:
            finite = flat[block][np.isfinite(flat[block])]
            if finite.size:
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        for block in blocks:
            scaled = ((np.nan_to_num(flat[block], nan=lo) - lo) / (hi - lo) if hi > lo
                      else np.zeros_like(flat[block]))
            out[block] = np.clip(np.rint(scaled * 255.0), 0, 255)
        return out.reshape(arr.shape)
    # 16-bit (I;16*) and 32-bit "I" images holding 16-bit data: 0..65535 -> 0..255.
    for block in blocks:
        out[block] = (np.clip(flat[block].astype(np.int64), 0, 65535) * 255 + 32767) // 65535
    return out.reshape(arr.shape)


def _flatten_alpha(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = img.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Normalise any Pillow mode to 8-bit RGB: CMYK, YCbCr, palette (with transparency), L/LA,
    1-bit, 16-bit and float greyscale."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        grey = _to_8bit(np.asarray(img))
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info)
    if has_alpha:
        return _flatten_alpha(img, background)
    return img.convert("RGB")


def decode_image(data: bytes, options: DecodeSpec = DecodeSpec(),
                 target_short_side: Optional[int] = None,
                 cache: Optional[dict] = None, stored: Optional[dict] = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode image bytes into an RGB Pillow image, EXIF orientation applied.

    Returns the image and its full-resolution (width, height) as displayed (after orientation). With
    ``options.jpeg_draft``, a ``target_short_side`` and a JPEG much larger than that, the DCT-domain
    draft mode decodes at 1/2, 1/4 or 1/8 scale, never below the target. ``cache`` (a dict the
    caller keeps while it decodes several frames of the same bytes) keeps the opened file, so that
    decoding frame after frame is linear in the frames, not quadratic. ``stored`` (a dict), when
    given, receives under "image" the image as the file stores it (its own mode, before EXIF
    orientation and RGB conversion): what the curation measures look at.
    Raises DecodeError with a readable cause for anything that is not a decodable image, over
    the pixel limit (the file's own size, and that of every sub-image, tile or frame inside it) or
    over the memory budget.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    from imgclf_ray.imaging import dicom

    if dicom.is_dicom(data):
        return dicom.decode(data, options.frame, options.dicom_window, options.max_image_pixels,
                            options.max_decode_bytes, cache, stored, options.max_container_bytes, options.max_seconds)
    # Pillow reads both settings from module globals; they are set for this call only. Its bomb
    # check runs on every size it meets (ICNS / ICO sub-images, GIF frames, TIFF pages), and a
    # warning is an error here.
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = options.max_image_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = options.allow_truncated
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the row records each file's cause; no warning quotes it
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(data, options, target_short_side, cache, stored)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"an image inside the file is over the decompression-bomb limit of "
                          f"{options.max_image_pixels:,} pixels (decode.max_image_pixels): {scrub(exc)}") from None
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 or 270 degrees
_BYTES_PER_BAND = {"I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}


def _pixel_bytes(img: Image.Image) -> int:
    return len(img.getbands()) * _BYTES_PER_BAND.get(img.mode, 1)


def _open(data: bytes, cache: Optional[dict]) -> Image.Image:
    if cache is not None and cache.get("data") is data:
        return cache["image"]
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the outer size: checked by _decode
    try:
        img = Image.open(io.BytesIO(data), formats=_formats())
    except UnidentifiedImageError:
        raise DecodeError(_sniff(data)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"unreadable header ({describe(exc)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if cache is not None:
        cache.clear()
        cache.update(data=data, image=img)
    return img


def _check_j2k(data: bytes, img: Image.Image) -> None:
    """openjpeg allocates what the codestream's own SIZ says, while Pillow sized the image from the
    JP2 file's header (a box before the codestream hides it from Pillow): 128 components of 65,535
    tiles under a header of 1 component held 9.5 GB from 559 bytes. The codestream must say what
    Pillow was told, in tiles as dicom.J2K_MAX_TILES allows."""
    from imgclf_ray.imaging.dicom import J2K_MAX_TILES, j2k_size

    found = j2k_size(data)
    if found is None:
        raise DecodeError(f"its JPEG 2000 codestream's size cannot be read here, or it is cut into more than "
                          f"{J2K_MAX_TILES:,} tiles smaller than 64x64: not decoded")
    told = (*img.size, len(img.getbands()))
    if found != told:
        raise DecodeError("its JPEG 2000 codestream is {}x{} in {} components, its file header says {}x{} in {}: "
                          "not decoded".format(*found, *told))


def _check_tiff(img: Image.Image, data: bytes, options: DecodeSpec) -> None:
    """libtiff decodes a tile whole, whatever part of it the image covers: a 1x1 TIFF in one
    46336x46336 tile held 2.2 GB; a tile is held to the image's limits. A JPEG-compressed strip or
    tile goes to libjpeg as its own JPEG says (the last strip's may be taller than the strip: a
    5.8 KB TIFF's strip of 65500x65500 held 8.5 GB): each must fit its strip or tile, in at most
    MAX_JPEG_SCANS scans; old-style JPEG (compression 6) is not decoded."""
    from imgclf_ray.imaging.dicom import _jpeg_size
    from imgclf_ray.imaging.limits import MAX_JPEG_SCANS, jpeg_scans

    tags = img.tag_v2
    tiled = tags.get(322), tags.get(323)  # TileWidth, TileLength
    if all(isinstance(side, int) for side in tiled):
        limit = options.max_image_pixels
        if limit is not None and tiled[0] * tiled[1] > limit:
            raise DecodeError(f"its TIFF tiles are {tiled[0]}x{tiled[1]} = {tiled[0] * tiled[1]:,} pixels, over "
                              f"the limit of {limit:,} (decode.max_image_pixels)")
        check_budget(*tiled, _pixel_bytes(img), options.max_decode_bytes, "TIFF tile")
    compression = tags.get(259)
    if compression == 6:
        raise DecodeError("its TIFF is compressed with old-style JPEG (compression 6): not decoded")
    if compression != 7:
        return
    rows = tags.get(278) or img.height
    if all(isinstance(side, int) for side in tiled):
        box, offsets, counts = tiled, tags.get(324), tags.get(325)
    else:
        box, offsets, counts = (img.width, min(rows, img.height) if isinstance(rows, int) else 0), tags.get(273), tags.get(279)
    offsets, counts = (v if isinstance(v, tuple) else (v,) for v in (offsets or (), counts or ()))
    if not box[1] or not all(isinstance(v, int) for v in offsets + counts):
        raise DecodeError("its TIFF's JPEG strips or tiles are not given as whole numbers: not decoded")
    for at, n in zip(offsets, counts):
        piece = data[at:at + n]
        size = _jpeg_size(piece)
        if size is None or size[0] > -(-box[0] // 16) * 16 or size[1] > -(-box[1] // 16) * 16:
            raise DecodeError(f"a JPEG strip or tile of its TIFF is not the {box[0]}x{box[1]} it is in: not decoded")
        if jpeg_scans(piece) > MAX_JPEG_SCANS:
            raise DecodeError(f"a JPEG strip or tile of its TIFF has more than {MAX_JPEG_SCANS} scans: not decoded")


def _seek(img: Image.Image, frame: int, max_seconds: Optional[float]) -> None:
    """Pillow composites every frame before the one asked for (GIF, APNG, WebP: frame 999 of a
    23 KB GIF on a 9000x9000 screen took 215 s): stepped to here a frame at a time, within
    decode.max_seconds of this thread's CPU."""
    if max_seconds is None or frame < img.tell():
        img.seek(frame)
        return
    started = time.thread_time()
    while img.tell() < frame:
        img.seek(img.tell() + 1)
        if img.format == "WEBP" and img.tell() < frame:
            img.load()  # (WebP's seek only notes the frame: its decoder composites on load)
        if img.tell() < frame and time.thread_time() - started > max_seconds:
            raise DecodeError(f"reaching frame {frame} took more than decode.max_seconds ({max_seconds:g} s of CPU): "
                              "not decoded")


def _check_blp(data: bytes, img: Image.Image) -> None:
    """A BLP1 texture's JPEG goes to libjpeg through Pillow's JPEG reader, whatever its size and
    scans, past the checks of a JPEG file (the texture's own size is the one checked). It must be
    the size the texture says, in at most MAX_JPEG_SCANS scans."""
    from PIL import JpegImagePlugin

    if data[:4] != b"BLP1" or int.from_bytes(data[4:8], "little", signed=True) != 0:  # (0: JPEG)
        return
    offset, length = int.from_bytes(data[28:32], "little"), int.from_bytes(data[92:96], "little")
    header = int.from_bytes(data[156:160], "little")
    start = max(offset, 160 + header)  # (Pillow reads on from the header when the offset is behind it)
    jpeg = data[160:160 + header] + data[start:start + length]
    try:
        size = JpegImagePlugin.JpegImageFile(io.BytesIO(jpeg)).size
    except Exception:  # noqa: BLE001 - what libjpeg cannot start on, Pillow's read says
        return
    if size != img.size:
        raise DecodeError("its BLP texture holds a JPEG of {}x{}, its header says {}x{}: not decoded".format(*size, *img.size))
    check_scans(jpeg)


def _check_icns(data: bytes) -> None:
    """An ICNS icon's JPEG 2000 entries go to openjpeg through Pillow's JP2 reader, which trusts the
    JP2 header (575 bytes held 9.5 GB): each codestream must be an icon's (at most 1024x1024, 4
    components), tiled as dicom.J2K_MAX_TILES allows."""
    from imgclf_ray.imaging.dicom import J2K_SOC_SIZ, JP2_SIGNATURE, j2k_size

    at = 8
    while at + 8 <= len(data):
        length = int.from_bytes(data[at + 4:at + 8], "big")
        if length < 8:  # (Pillow reads on: a length under its own header seeks back, one of 4 reads to the end)
            raise DecodeError("its ICNS icon has a block shorter than its own header: not decoded")
        body = data[at + 8:at + length]
        if body.startswith((JP2_SIGNATURE, J2K_SOC_SIZ)):
            size = j2k_size(body)
            if size is None or size[0] * size[1] > 1024 * 1024 or size[2] > 4:
                raise DecodeError("its ICNS icon holds a JPEG 2000 codestream that is no icon's (over 1024x1024 or "
                                  "4 components, or tiled past what is read here): not decoded")
        at += length


def _decode(data: bytes, options: DecodeSpec, target_short_side: Optional[int],
            cache: Optional[dict], stored: Optional[dict] = None) -> tuple[Image.Image, tuple[int, int]]:
    img = _open(data, cache)
    width, height = img.size
    limit = options.max_image_pixels
    if limit is not None and width * height > limit:
        raise DecodeError(f"image is {width}x{height} = {width * height:,} pixels, over the "
                          f"decompression-bomb limit of {limit:,} (decode.max_image_pixels)")
    check_budget(width, height, _pixel_bytes(img), options.max_decode_bytes)
    if img.format == "JPEG2000":
        _check_j2k(data, img)
    elif img.format == "ICNS":
        _check_icns(data)
    elif img.format in ("JPEG", "MPO"):
        check_scans(data, tuple(getattr(img, "_MpoImageFile__mpoffsets", None) or (0,)))  # (each image of an MPO)
    elif img.format == "BLP":
        _check_blp(data, img)
    elif img.format == "FITS" and img.tile and img.tile[0].codec_name == "fits_gzip":
        # Pillow inflates 4 bytes a pixel and converts them in Python: a list of ints a byte (a
        # 349 KB file of 9400x9400 32-bit pixels held 3.9 GB)
        check_budget(width, height, 4 + 10 * _pixel_bytes(img), options.max_decode_bytes, "gzip-compressed FITS image")
    try:
        if options.frame:
            n_frames = getattr(img, "n_frames", 1)
            if options.frame >= n_frames:
                raise DecodeError(f"frame {options.frame} asked for (decode.frame), the file has "
                                  f"{n_frames}")
        if img.tell() != options.frame:
            _seek(img, options.frame, options.max_seconds)
        if options.jpeg_draft and target_short_side and img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
            scale = target_short_side / min(width, height)
            if scale < 0.5:
                img.draft(img.mode, (int(np.ceil(width * scale)), int(np.ceil(height * scale))))
        if img.size != (width, height):  # a page or frame of its own size
            check_budget(*img.size, _pixel_bytes(img), options.max_decode_bytes, "frame")
        if img.format == "TIFF":
            _check_tiff(img, data, options)
        img.load()
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        msg = scrub(exc)
        if "truncated" in msg or isinstance(exc, EOFError):
            raise DecodeError(f"truncated file ({msg or 'unexpected end of data'}); "
                              "decode.allow_truncated accepts such files") from None
        raise DecodeError(f"corrupt image data ({describe(exc)})") from None
    if stored is not None:
        stored["image"] = img.copy() if cache is not None else img
    shown = img
    if options.exif_transpose:
        if img.getexif().get(0x0112) in _SWAPS_AXES:
            width, height = height, width
        shown = ImageOps.exif_transpose(img)
    rgb = to_rgb(shown, options.background)
    if cache is not None and rgb is img:
        rgb = img.copy()  # the cached file object moves on to the next frame
    return rgb, (width, height)


def frame_count(data: bytes, options: DecodeSpec = DecodeSpec(), cache: Optional[dict] = None) -> int:
    """Frames in a multi-frame file (DICOM NumberOfFrames checked against the pixel data, TIFF
    pages, GIF / WebP frames); 1 for still images and for anything unreadable (its decode reports
    why). Raises DecodeError for a DICOM file that declares more frames than it holds."""
    from imgclf_ray.imaging import dicom

    if dicom.is_dicom(data):
        # (a count its pixel data cannot hold: an error; the parsed file kept in ``cache`` for its frames)
        return dicom.frame_count(data, options.max_container_bytes, options.max_seconds, cache)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return max(1, int(getattr(Image.open(io.BytesIO(data), formats=_formats()), "n_frames", 1)))
    except Exception:  # noqa: BLE001 - the row's decode gives the real cause
        return 1
