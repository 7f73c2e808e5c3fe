"""DICOM bytes -> display pixels with pydicom, as a radiologist's viewer would show them.

Compressed transfer syntaxes (JPEG baseline / extended / lossless, JPEG-LS, JPEG 2000, RLE) decode
through the pylibjpeg plugins. Greyscale frames go through the modality LUT (rescale slope and
intercept, e.g. to Hounsfield units), then the window the job gives (``decode.dicom_window``), else
the file's VOI LUT or first window centre/width (the DICOM linear window function), else the
frame's own range — never clipped to a fixed bit depth. MONOCHROME1 (0 = white) is inverted so
that every image reads white-on-black alike. Colour (RGB, YBR converted to RGB, palette colour)
is scaled to 8 bits over its sample range.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from typing import Optional

import numpy as np
from PIL import Image

from imgclf_ray.imaging.limits import BLOCK, MAX_JPEG_SCANS, DecodeError, check_budget, jpeg_scans
from imgclf_ray.messages import describe, uid
from imgclf_ray.spec import DecodeSpec


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then 'DICM'."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _pydicom():
    """pydicom, made quiet: it logs and warns what it finds odd with the element's value ("Invalid
    value for VR PN: 'DOE^JANE'"), which would carry patient data into the workers' logs. Its
    import sets its logger's level, so the level is set after it; values are checked by
    imgclf_ray.deid, not by pydicom's reading validation."""
    from imgclf_ray.extras import require

    pydicom = require("dicom", error=DecodeError)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    return pydicom


INFLATE_LIMIT = DecodeSpec().max_container_bytes  # for the callers that give none


class _Clocked(io.BytesIO):
    """The bytes pydicom parses, this thread's CPU clock looked at every 4,096 reads: pydicom walks
    a dataset element by element in Python (a 467 KB deflated file of 40 million empty elements
    took 180 s), and every element it meets, nested ones included, is read from here."""

    def __init__(self, data: bytes = b"", max_seconds: Optional[float] = None):
        super().__init__(data)
        self.max_seconds = max_seconds
        self.deadline = None if max_seconds is None else time.thread_time() + max_seconds
        self.reads = 0

    def read(self, size: Optional[int] = -1) -> bytes:
        self.reads += 1
        if self.deadline is not None and not self.reads & 4095 and time.thread_time() > self.deadline:
            raise DecodeError(f"reading the DICOM dataset took more than decode.max_seconds ({self.max_seconds:g} s "
                              "of CPU)")
        return super().read(size)


def _inflated(data: bytes, limit: int, max_seconds: Optional[float] = None):
    """A deflated dataset, inflated here 16 MiB at a time (a 3 MB file can inflate to gigabytes):
    (its file meta, the inflated dataset to parse) — None for any other transfer syntax. DecodeError
    when twice its size is over ``limit`` (pydicom holds the inflated bytes and the element values
    cut from them), counted before it is all inflated."""
    import zlib

    from pydicom.filereader import _read_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    fp = io.BytesIO(data)
    fp.seek(132)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = _read_file_meta_info(fp)
    except Exception:  # noqa: BLE001 - a file meta pydicom cannot read: its read says so
        return None
    if str(meta.get("TransferSyntaxUID", "")) != DeflatedExplicitVRLittleEndian:  # (the dataset is zlib-deflated)
        return None
    out = _Clocked(max_seconds=max_seconds)
    inflate, size, tail = zlib.decompressobj(-zlib.MAX_WBITS), 0, data[fp.tell():]
    try:
        while tail and not inflate.eof and 2 * size <= limit:  # (bytes after the stream's end: pydicom's padding)
            size += out.write(inflate.decompress(tail, 16 << 20))
            tail = inflate.unconsumed_tail
        if 2 * size <= limit:
            out.write(inflate.flush())
    except zlib.error:
        raise DecodeError("unreadable DICOM header (a deflated dataset that does not inflate)") from None
    if 2 * size <= limit and not inflate.eof:  # (pydicom's own inflate refused a stream cut short)
        raise DecodeError("unreadable DICOM header (a deflated dataset cut short)")
    if 2 * size > limit:
        raise DecodeError(f"deflated DICOM dataset inflates past {limit / 2**21:,.0f} MiB; pydicom holds it twice: "
                          f"over decode.max_container_bytes ({limit / 2**20:,.0f} MiB)")
    out.seek(0)
    return meta, out


def _read(data: bytes, header_only: bool = False, max_inflated: int = INFLATE_LIMIT,
          max_seconds: Optional[float] = None, cache: Optional[dict] = None):
    """The parsed file, once: a ``cache`` (the caller's, kept while it decodes the frames of the
    same bytes) holds it for the attributes, the frame count and each frame's decode. Parsing is
    held to ``max_seconds`` of CPU (decode.max_seconds)."""
    if cache is not None and cache.get("data") is data:
        return cache["dataset"]
    pydicom = _pydicom()
    try:
        deflated = _inflated(data, max_inflated, max_seconds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if deflated is None:
                ds = pydicom.dcmread(_Clocked(data, max_seconds), stop_before_pixels=header_only and cache is None)
            else:
                ds = _deflated(pydicom, data, *deflated)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - InvalidDicomError, EOFError, BytesLengthException ...
        # pydicom's messages can quote element values: the cause is named by its type only.
        raise DecodeError(f"unreadable DICOM header ({type(exc).__name__}; element values are not shown)") from None
    _check_sequences(ds)
    if cache is not None:
        cache.clear()
        cache.update(data=data, dataset=ds)
    return ds


LAZY_SEQUENCE_LIMIT = 16 << 20  # bytes of a sequence pydicom parses only when it is read
_LUT_SEQUENCES = (0x00283000, 0x00283010)  # ModalityLUTSequence, VOILUTSequence: read by the decode


def _check_sequences(ds) -> None:
    """pydicom keeps a sequence of defined length as bytes and parses it, element by element and
    outside decode.max_seconds, when it is first read: a VOILUTSequence of a million empty elements
    took 2.4 s under a limit of 0.5 (the reviewer). One over LAZY_SEQUENCE_LIMIT is refused when
    the decode reads it (the LUTs), and dropped when it stands where the dictionary has no
    sequence (a WindowCenter written as one would be parsed when read)."""
    from pydicom.datadict import dictionary_VR

    for tag in list(ds.keys()):
        try:
            raw = ds.get_item(tag)  # (the element as read: its VR looked up, its value not parsed)
        except Exception:  # noqa: BLE001 - one pydicom cannot type: its read, if any, says so
            continue
        length = getattr(raw, "length", 0)
        if getattr(raw, "VR", None) != "SQ" or length == 0xFFFFFFFF or length <= LAZY_SEQUENCE_LIMIT:
            continue
        try:
            expected = dictionary_VR(tag)
        except KeyError:  # (a private tag: nothing here reads it)
            expected = "UN"
        if tag in _LUT_SEQUENCES:
            raise DecodeError(f"its {'VOI' if tag == 0x00283010 else 'modality'} LUT sequence holds "
                              f"{length / 2**20:,.0f} MiB, more than {LAZY_SEQUENCE_LIMIT >> 20} MiB: not read")
        if expected != "SQ":
            del ds[tag]


def _deflated(pydicom, data: bytes, meta, dataset: io.BytesIO):
    """A deflated file's dataset read from the bytes inflated here (``_inflated``), as pydicom's own
    read does after inflating them itself (Deflated Explicit VR Little Endian: PS3.5 A.5)."""
    from pydicom.filereader import read_dataset

    read = read_dataset(dataset, is_implicit_VR=False, is_little_endian=True)
    ds = pydicom.dataset.FileDataset(dataset, read, data[:128], meta, is_implicit_VR=False, is_little_endian=True)
    ds.set_original_encoding(False, True, read._character_set)
    return ds


def frame_count(data: bytes, max_inflated: int = INFLATE_LIMIT, max_seconds: Optional[float] = None,
                cache: Optional[dict] = None) -> int:
    """The frames a DICOM file holds: NumberOfFrames, checked against its pixel data (a declared
    count the data cannot hold is a DecodeError, before any row is made)."""
    ds = _read(data, max_inflated=max_inflated, max_seconds=max_seconds, cache=cache)
    return _checked_frames(ds)


def _checked_frames(ds) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
        except (TypeError, ValueError):
            raise DecodeError("malformed NumberOfFrames (values are not shown)") from None
        if frames == 1 or "PixelData" not in ds:
            return frames
        pixels = ds.PixelData
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_compressed:
            from pydicom.encaps import generate_fragments

            try:
                fragments = sum(1 for _ in generate_fragments(pixels[8 + int.from_bytes(pixels[4:8], "little"):]))
            except Exception:  # noqa: BLE001 - a broken item list is the decode's error
                fragments = 0
            if fragments < frames:  # a frame is one fragment or more
                raise DecodeError(f"declares {frames:,} frames but its compressed pixel data holds "
                                  f"{fragments:,} fragments")
            return frames
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 8) or 8)
        frame_bits = rows * columns * samples * bits
        if frame_bits and len(pixels) * 8 < frame_bits * frames:
            raise DecodeError(f"declares {frames:,} frames of {columns}x{rows} but its pixel data holds "
                              f"{len(pixels) * 8 // frame_bits:,}")
        return frames


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB, 0xF7}  # JPEG's non-differential frames, JPEG-LS's
# Hierarchical JPEG (no DICOM syntax in use has it): its DHP gives the image's size and frames
# grow to it (an 8x8 first frame under a DHP of 32768x32768: 6.7 GB); DHP, EXP and differential
# frames make a frame header that cannot be read here.
_HIERARCHICAL = {0xDE, 0xDF, 0xC5, 0xC6, 0xC7, 0xCD, 0xCE, 0xCF}
_NO_LENGTH = {0x01, *range(0xD0, 0xD8), 0xD8}  # TEM, RSTn, SOI: markers without a length
# openjpeg sets up every tile while it reads SIZ (65,535 tiles of 1x1: 0.9 GB from 576 bytes): more
# than J2K_MAX_TILES only of tiles no smaller than 64x64 (as many as decode.max_image_pixels allows).
J2K_MAX_TILES = 4096


def _jpeg_size(frame: bytes) -> Optional[tuple[int, int, int]]:
    """(width, height, components) of a JPEG or JPEG-LS codestream's frame header, found as
    libjpeg finds its markers (bytes other than 0xFF skipped, fill bytes skipped, TEM and RSTn
    without a length); None when it has none before its scan or its end."""
    if frame[:2] != b"\xff\xd8":
        return None
    at, end = 2, len(frame)
    while True:
        while at < end and frame[at] != 0xFF:
            at += 1
        while at < end and frame[at] == 0xFF:
            at += 1
        if at + 9 > end:
            return None
        marker, at = frame[at], at + 1
        if marker in _SOF:  # length, precision, height, width, components
            return (int.from_bytes(frame[at + 5:at + 7], "big"), int.from_bytes(frame[at + 3:at + 5], "big"),
                    frame[at + 7])
        if marker in (0xD9, 0xDA) or marker in _HIERARCHICAL:  # EOI, SOS: no frame header before them
            return None
        if marker not in _NO_LENGTH and marker != 0x00:  # (0x00: a stuffed byte, not a marker)
            at += int.from_bytes(frame[at:at + 2], "big")


JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # a JP2 file's first box
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"  # a bare codestream: SOC, then SIZ


def j2k_size(frame: bytes) -> Optional[tuple[int, int, int]]:
    """(width, height, components) from a JPEG 2000 codestream's SIZ segment (ISO 15444-1 A.5.1:
    it follows SOC), bare or in a JP2 file's codestream box; None when there is none."""
    if frame.startswith(JP2_SIGNATURE):  # JP2: boxes to its contiguous codestream box
        at = 0
        while at + 8 <= len(frame):
            length, kind, body = int.from_bytes(frame[at:at + 4], "big"), frame[at + 4:at + 8], at + 8
            if length == 1:  # the 64-bit length that follows
                length, body = int.from_bytes(frame[at + 8:at + 16], "big"), at + 16
            elif length == 0:  # to the end
                length = len(frame) - at
            if kind == b"jp2c":
                frame = frame[body:]
                break
            if length < body - at:
                return None
            at += length
        else:
            return None
    if not frame.startswith(J2K_SOC_SIZ) or len(frame) < 42:
        return None
    x, y, x0, y0, tx, ty, tx0, ty0 = (int.from_bytes(frame[i:i + 4], "big") for i in range(8, 40, 4))
    if not tx or not ty or (-(-(x - tx0) // tx) * -(-(y - ty0) // ty) > J2K_MAX_TILES and tx * ty < 64 * 64):
        return None
    return x - x0, y - y0, int.from_bytes(frame[40:42], "big")


def _codestream_problem(ds, frame: int, frames: int, cache: Optional[dict] = None) -> Optional[str]:
    """Why a compressed frame may not go to its decoder, which allocates what the frame's own
    header says (an 8x8 DICOM header over a 30000x30000 JPEG: 4.5 GB before pydicom compared
    the shapes): a frame of the JPEG, JPEG-LS or JPEG 2000 syntaxes whose header gives another
    size than Rows, Columns and SamplesPerPixel, or none that can be read here. The bytes checked
    are those pydicom's decoder gets: for a multi-frame file with an offset table, frame ``frame``
    as ``get_frame`` cuts it (the table read as the decoder reads it: a seek); else every frame as
    ``generate_frames`` cuts them — what ``get_frame`` cuts without a table — once per file
    (``cache``). RLE's decoder stops at the header's size."""
    from pydicom import uid

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in ds or syntax not in (*uid.JPEGTransferSyntaxes, *uid.JPEGLSTransferSyntaxes,
                                                *uid.JPEG2000TransferSyntaxes):
        return None
    from pydicom.encaps import generate_frames, get_frame

    size_of = j2k_size if syntax in uid.JPEG2000TransferSyntaxes else _jpeg_size

    def problem(src: bytes) -> Optional[str]:
        if size_of is _jpeg_size and jpeg_scans(src) > MAX_JPEG_SCANS:
            return f"a compressed frame has more than {MAX_JPEG_SCANS} scans (each is decoded over the whole frame)"
        size = size_of(src)
        if size is None:
            return f"a compressed frame has no frame header that can be read here ({_uid_name(syntax)})"
        if size != header:
            return (f"its compressed frame is {size[0]}x{size[1]} with {size[2]} components; its header "
                    f"says {header[0]}x{header[1]} with {header[2]}")
        return None

    try:
        header = (int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), int(ds.get("SamplesPerPixel", 1) or 1))
        pixels = ds.PixelData
        offsets = ((ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
                   if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds else None)
        if frames > 1 and (offsets is not None or pixels[4:8] != b"\0\0\0\0"):  # (a basic offset table)
            return problem(get_frame(pixels, frame, number_of_frames=frames, extended_offsets=offsets))
        found = cache.get("problems") if cache is not None else None
        if found is None:
            found = [problem(src) for src in generate_frames(pixels, number_of_frames=frames)]
            if cache is not None:
                cache["problems"] = found
        if frames == 1:
            return next((p for p in found if p), None)
        return found[frame]
    except Exception:  # noqa: BLE001 - frames pydicom cannot cut: its decode cannot either
        return "its compressed pixel data cannot be cut into frames"


def attributes(data: bytes, keywords: list[str], allow_phi: bool = False, max_inflated: int = INFLATE_LIMIT,
               max_seconds: Optional[float] = None, cache: Optional[dict] = None) -> dict[str, Optional[str]]:
    """The asked-for top-level attributes as strings; None where absent or where the value does
    not fit its value representation (imgclf_ray.deid), unless ``allow_phi``. With a ``cache``, the
    whole file is parsed into it, for the decode that follows (``_read``)."""
    from imgclf_ray.deid import safe_value

    ds = _read(data, header_only=True, max_inflated=max_inflated, max_seconds=max_seconds, cache=cache)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {keyword: safe_value(ds, keyword, allow_phi) for keyword in keywords}
    except Exception as exc:  # noqa: BLE001 - pydicom parses lazily: a malformed element fails here
        raise DecodeError(f"malformed DICOM attributes ({type(exc).__name__}; element values are not shown)") from None


def _uid_name(value, missing: str = "none given") -> str:
    """A UID read from a file, for a message: the name of a UID pydicom knows, else the UID when it
    is one (digits and dots), else ``<invalid UID>`` (pydicom's ``UID.name`` returns an unknown
    value as it stands: whatever a malformed length swallowed)."""
    if value is None:
        return missing
    shown = uid(value)
    if shown != str(value):
        return shown
    from pydicom.uid import UID

    return UID(shown).name  # a registered UID's name from pydicom's table, else the UID itself


def _first(value) -> Optional[float]:
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """The DICOM linear VOI function (PS3.3 C.11.2.1.2.1) onto 0..255."""
    width = max(width, 1.0)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    y = ((x - (center - 0.5)) / (width - 1 if width > 1 else 1) + 0.5) * 255.0
    return np.where(x <= low, 0.0, np.where(x > high, 255.0, y))


def _by_rows(arr: np.ndarray, fn, channels: tuple[int, ...] = ()) -> np.ndarray:
    """``fn`` (elementwise onto 0..255) over blocks of rows of ``arr``, rounded into uint8: the
    LUTs' float64 copies of one block at a time (a whole 9459x9459 palette frame's held 5 GB)."""
    out = np.empty(arr.shape[:2] + channels, np.uint8)
    step = max(1, BLOCK // max(1, arr[0].size))
    for at in range(0, len(arr), step):
        out[at:at + step] = np.clip(np.rint(fn(arr[at:at + step])), 0, 255)
    return out


def _stretched(arr: np.ndarray, fn) -> np.ndarray:
    """``fn``'s values stretched over their finite range onto 0..255 (two passes over blocks)."""
    lo, hi = np.inf, -np.inf
    step = max(1, BLOCK // max(1, arr[0].size))
    for at in range(0, len(arr), step):
        x = fn(arr[at:at + step])
        finite = x[np.isfinite(x)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if not hi > lo:
        return np.zeros(arr.shape, np.uint8)
    return _by_rows(arr, lambda block: (fn(block) - lo) / (hi - lo) * 255.0)


def decode(data: bytes, frame: int = 0, window: Optional[tuple[float, float]] = None,
           max_pixels: Optional[int] = None, max_bytes: Optional[int] = None,
           cache: Optional[dict] = None, stored: Optional[dict] = None,
           max_inflated: int = INFLATE_LIMIT, max_seconds: Optional[float] = None) -> tuple[Image.Image, tuple[int, int]]:
    """One frame of a DICOM file as an 8-bit RGB image, and its (width, height). ``cache`` keeps
    the parsed file between frames of the same bytes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img, size, native = _decode(data, frame, window, max_pixels, max_bytes, cache, max_inflated, max_seconds)
            if stored is not None:
                stored["image"] = native
            return img, size
    except DecodeError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise DecodeError(f"malformed DICOM attributes ({type(exc).__name__}; element values are not shown)") from None


def _decode(data: bytes, frame: int, window: Optional[tuple[float, float]],
            max_pixels: Optional[int], max_bytes: Optional[int],
            cache: Optional[dict], max_inflated: int,
            max_seconds: Optional[float]) -> tuple[Image.Image, tuple[int, int], Image.Image]:
    _pydicom()
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    ds = _read(data, max_inflated=max_inflated, max_seconds=max_seconds, cache=cache)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DecodeError(f"DICOM object without pixel data ({_uid_name(ds.get('SOPClassUID'), 'unknown SOP class')})")
    frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if max_pixels is not None and rows * columns > max_pixels:
        raise DecodeError(f"image is {columns}x{rows} = {rows * columns:,} pixels, over the "
                          f"decompression-bomb limit of {max_pixels:,} (decode.max_image_pixels)")
    # What the decoder and the LUTs hold of a frame (the decoded samples, a palette's 16-bit
    # colours; the float64 copies are a block's, _by_rows): up to 8 bytes a sample.
    check_budget(columns, rows, int(ds.get("SamplesPerPixel", 1) or 1) * 8, max_bytes, "DICOM frame")
    if frame >= frames:
        raise DecodeError(f"frame {frame} asked for (decode.frame), the file has {frames}")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    refused = _codestream_problem(ds, frame, frames, cache)
    if refused:
        raise DecodeError(refused)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=frame if frames > 1 else None)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's error row
        raise DecodeError(f"DICOM pixel data not decodable ({_uid_name(syntax)}; {describe(exc)})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    palette = photometric == "PALETTE COLOR" and arr.ndim == 2
    if palette or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):  # colour: scaled over the sample range
        from pydicom.pixels import apply_color_lut

        # A palette's colours are in its LUTs' bits (the descriptor's third value: 8 or 16), not
        # the indices' BitsStored (scaled by those, an ultrasound's 16-bit colours were white).
        bits = (int((ds.get("RedPaletteColorLookupTableDescriptor") or [0, 0, 16])[2] or 16) if palette
                else int(ds.get("BitsStored", 16) or 16))

        def colour(block: np.ndarray) -> np.ndarray:
            rgb = (apply_color_lut(block, ds) if palette else block)[..., :3]
            return rgb if rgb.dtype == np.uint8 else rgb.astype(np.float64) * 255.0 / (2 ** bits - 1)

        img = Image.fromarray(_by_rows(arr, colour, (3,)), "RGB")
        return img, img.size, img
    if arr.ndim != 2:
        raise DecodeError(f"DICOM frame has shape {arr.shape}; expected rows x columns (x samples)")

    def value(block: np.ndarray) -> np.ndarray:
        return apply_modality_lut(block, ds).astype(np.float64)

    center, width = window if window else (_first(ds.get("WindowCenter")), _first(ds.get("WindowWidth")))
    if window is None and "VOILUTSequence" in ds:
        grey = _stretched(arr, lambda block: apply_voi_lut(value(block), ds, index=0).astype(np.float64))
    elif center is not None and width is not None:
        grey = _by_rows(arr, lambda block: _window(value(block), center, width))
    else:
        grey = _stretched(arr, value)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    native = Image.fromarray(grey, "L")
    img = native.convert("RGB")
    return img, img.size, native
