"""Hostile files for the message gate: every metadata field a marker, then mutated many ways.

A marker is a distinct value per field, shaped to the field's type so that parsers accept it:
``ZQ<n>X`` for texts and names (with quotes around it in two of three), ``2.25.9999<n>`` for UIDs, ``2999MMDD`` dates, ``23595<n>`` times.
A test scans every row, message, warning, log line and written file for any of them.
"""

from __future__ import annotations

import io
import random
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image

# Value representations that carry text, names, dates, times or UIDs (PS3.5 6.2).
TEXT_VRS = ("AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT")
MARKER_PATTERN = re.compile(r"ZQ\d{4,6}X|ZQPRIV|(?<![\d.])(?:2\.25\.9999\d+|23595\d\.\d+|2999(?:0[1-9]|1[0-2])(?:0[1-9]|1\d|2[0-8]))(?![\d.])")


def marker(vr: str, n: int) -> str:
    if vr == "UI":
        return f"2.25.9999{n}"
    if vr in ("DA", "DT"):
        return f"2999{1 + n % 12:02d}{1 + n % 28:02d}"
    if vr == "TM":
        return f"23595{n % 10}.{n}"
    # A third holds both quotes, a third an apostrophe (O'BRIEN): a quoted value that holds quotes
    # itself is where a message's quotes stop matching.
    return (f"ZQ{n:04d}X", f"A'ZQ{n:04d}X\" B", f"O'ZQ{n:04d}X")[n % 3]


def find_markers(text: str) -> list[str]:
    return MARKER_PATTERN.findall(text)


def _marked_elements(keep: frozenset[str]):
    from pydicom.datadict import DicomDictionary

    for tag, (vr, _vm, _name, retired, keyword) in sorted(DicomDictionary.items()):
        if retired or not keyword or keyword in keep or vr not in TEXT_VRS:
            continue
        if (tag >> 16) in (0x0000, 0x0002, 0xFFFE, 0x7FE0) or tag == 0x00080005:
            continue  # command set, file meta, items, SpecificCharacterSet (decides how every text reads)
        yield tag, vr, keyword


def marked_dicom(depth: int = 2) -> bytes:
    """A small 8x8 CT image whose every non-kept text-like dictionary element, a private block and
    sequences nested ``depth`` deep carry markers."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    from imgclf_ray.deid import KEEP

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.3.4"
    ds.SeriesInstanceUID, ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "1.2.3.4.6", "CT", "ACME", "CHEST"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 8, 8, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = "1", "-1024", "40", "400"
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # markers that do not fit their VR (AS) are the point
        for tag, vr, _ in _marked_elements(KEEP):
            n += 1
            ds.add_new(tag, vr, marker(vr, n))
        block = ds.private_block(0x0009, "ZQPRIV", create=True)
        for i in range(1, 6):
            n += 1
            block.add_new(i, "LO", marker("LO", n))
        inner = ds
        for _ in range(depth):  # identifiers nested in sequences, each level inside the last
            item = Dataset()
            item.PatientName, item.PatientID = marker("PN", n + 1), marker("LO", n + 2)
            item.add_new(0x00100030, "DA", marker("DA", n + 3))
            n += 3
            inner.OriginalAttributesSequence = Sequence([item])
            inner = item
    ds.PixelData = (np.arange(64, dtype=np.uint16) * 37 % 4096).tobytes()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # markers that do not fit their VR (AS) are the point
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# -- the element walk: where each element's header, length and value are ------------------------

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@dataclass(frozen=True)
class Element:
    start: int  # the tag's first byte
    length_at: int  # the length field's first byte
    length_size: int  # 2 or 4
    value_at: int
    end: int  # one past the value (the element's end; for undefined lengths, its delimiter's end)


def walk(data: bytes, at: int = 132, stop: int | None = None) -> list[Element]:
    """The explicit-VR little-endian elements from ``at``, nested items and sequences included
    (the file meta group too)."""
    out: list[Element] = []
    stop = len(data) if stop is None else stop
    while at + 8 <= stop:
        group, elem = struct.unpack_from("<HH", data, at)
        if group == 0xFFFE:  # item / delimiters: implicit 4-byte length
            length = struct.unpack_from("<I", data, at + 4)[0]
            if elem == 0xE000 and length != 0xFFFFFFFF:
                out.extend(walk(data, at + 8, min(stop, at + 8 + length)))
                at += 8 + length
            elif elem == 0xE000:
                at = _undefined(data, at + 8, stop, out)
            else:
                at += 8
            continue
        vr = data[at + 4:at + 6]
        if vr in _LONG_VRS:
            length_at, size = at + 8, 4
            length = struct.unpack_from("<I", data, length_at)[0] if length_at + 4 <= stop else 0
        else:
            length_at, size = at + 6, 2
            length = struct.unpack_from("<H", data, length_at)[0]
        value_at = length_at + size
        if length == 0xFFFFFFFF:
            end = _undefined(data, value_at, stop, out)
        else:
            end = value_at + length
            if vr == b"SQ":
                out.extend(walk(data, value_at, min(end, stop)))
        out.append(Element(at, length_at, size, value_at, min(end, stop)))
        at = end
    return sorted(out, key=lambda e: e.start)


def _undefined(data: bytes, at: int, stop: int, out: list[Element]) -> int:
    """Walk an undefined-length value up to its delimiter; the offset after it."""
    while at + 8 <= stop:
        group, elem = struct.unpack_from("<HH", data, at)
        if group == 0xFFFE and elem in (0xE00D, 0xE0DD):
            return at + 8
        if group == 0xFFFE and elem == 0xE000:
            length = struct.unpack_from("<I", data, at + 4)[0]
            if length == 0xFFFFFFFF:
                at = _undefined(data, at + 8, stop, out)
            else:
                out.extend(walk(data, at + 8, min(stop, at + 8 + length)))
                at += 8 + length
            continue
        inner = walk(data, at, stop)
        if not inner:
            return stop
        nxt = max(e.end for e in inner if e.start == at) if any(e.start == at for e in inner) else stop
        out.extend(e for e in inner if e.start < nxt)
        at = nxt
    return stop


# -- mutations ---------------------------------------------------------------------------------------

_VRS = [v.encode() for v in ("AE", "CS", "DS", "IS", "LO", "OB", "OW", "PN", "SH", "SQ", "UI", "UL", "UN", "US", "UT", "XX")]


def dicom_variants(base: bytes, count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """Each element's length corrupted in turn so that its value swallows the elements after it
    (to a random later element's end, or to the end of the file), then ``count`` more mutations
    cycling through the other kinds; each (kind, bytes)."""
    rng = random.Random(seed)
    elements = [e for e in walk(base) if e.start >= 132]
    for e in elements:
        data = bytearray(base)
        later = [x.end for x in elements if x.end > e.end]
        target = rng.choice(later) if later and rng.random() < 0.5 else len(data)
        length = min(target - e.value_at, (1 << (8 * e.length_size)) - 2)
        data[e.length_at:e.length_at + e.length_size] = length.to_bytes(e.length_size, "little")
        yield "swallow", bytes(data)
    kinds = ("flip", "truncate", "vr", "undefined", "preamble", "length-random")
    for i in range(count):
        kind = kinds[i % len(kinds)]
        data = bytearray(base)
        e = rng.choice(elements)
        if kind == "flip":
            for _ in range(rng.randint(1, 24)):
                data[rng.randrange(132, len(data))] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            data = data[:e.start if rng.random() < 0.5 else e.value_at + rng.randrange(0, max(1, e.end - e.value_at))]
        elif kind == "vr":
            if data[e.start:e.start + 2] != b"\xfe\xff":
                data[e.start + 4:e.start + 6] = rng.choice(_VRS)
        elif kind == "undefined":
            data[e.length_at:e.length_at + e.length_size] = b"\xff" * e.length_size
        elif kind == "preamble":
            data = data[rng.choice((0, 128, 132)):] if rng.random() < 0.7 else b"\x00" * 128 + data[132:]
        else:
            data[e.length_at:e.length_at + e.length_size] = rng.randrange(1 << (8 * e.length_size)).to_bytes(
                e.length_size, "little")
        yield kind, bytes(data)


# -- Pillow formats ----------------------------------------------------------------------------------

def marked_images() -> dict[str, bytes]:
    """A small image in PNG (tEXt, zTXt, iTXt), TIFF (every ASCII tag Pillow writes), JPEG (EXIF
    with UserComment and text tags, XMP, a comment) and WebP (EXIF, XMP), each field a marker."""
    from PIL import PngImagePlugin, TiffImagePlugin

    img = Image.fromarray((np.arange(32 * 32 * 3, dtype=np.uint32) % 251).astype(np.uint8).reshape(32, 32, 3))
    n = 9000
    out = {}
    info = PngImagePlugin.PngInfo()
    for key in ("Title", "Author", "Description", "Comment", "PatientName"):
        n += 1
        info.add_text(key, marker("LO", n))
        n += 1
        info.add_text(key + "Z", marker("LO", n), zip=True)
        n += 1
        info.add_itxt(key + "I", marker("LO", n), lang="en", tkey=marker("LO", n + 500))
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=info)
    out["png"] = buf.getvalue()
    exif = Image.Exif()
    for tag in (0x010E, 0x013B, 0x8298, 0x010F, 0x0110, 0x0131, 0x0132, 0x010D):  # description, artist ...
        n += 1
        exif[tag] = marker("LO", n)
    ifd = exif.get_ifd(0x8769)
    n += 1
    ifd[0x9286] = b"ASCII\x00\x00\x00" + marker("LO", n).encode()  # UserComment
    n += 1
    ifd[0x9003] = marker("LO", n)
    n += 1
    xmp = f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><dc:creator>{marker("LO", n)}</dc:creator></rdf:RDF></x:xmpmeta>'
    buf = io.BytesIO()
    n += 1
    img.save(buf, "JPEG", exif=exif, xmp=xmp.encode(), comment=marker("LO", n).encode())
    out["jpeg"] = buf.getvalue()
    tiff = TiffImagePlugin.ImageFileDirectory_v2()
    for tag in (270, 315, 305, 306, 316, 33432, 271, 272, 269, 285):
        n += 1
        tiff[tag] = marker("LO", n)
    buf = io.BytesIO()
    img.save(buf, "TIFF", tiffinfo=tiff)
    out["tiff"] = buf.getvalue()
    buf = io.BytesIO()
    img.save(buf, "WEBP", exif=exif, xmp=xmp.encode())
    out["webp"] = buf.getvalue()
    return out


def image_variants(base: bytes, count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """Byte flips, truncations and chunk/segment/tag lengths set to swallow what follows."""
    rng = random.Random(seed)
    for i in range(count):
        data = bytearray(base)
        kind = ("flip", "truncate", "length", "splice")[i % 4]
        if kind == "flip":
            for _ in range(rng.randint(1, 16)):
                data[rng.randrange(8, len(data))] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            data = data[:rng.randrange(8, len(data))]
        elif kind == "length":  # a 2- or 4-byte big- or little-endian field near a marker set large
            spots = [m.start() for m in re.finditer(rb"ZQ\d{4}X", bytes(data))] or [len(data) // 2]
            at = max(8, rng.choice(spots) - rng.randrange(2, 24))
            width = rng.choice((2, 4))
            data[at:at + width] = rng.randrange(1 << (8 * width)).to_bytes(width, rng.choice(("big", "little")))
        else:  # a marker's bytes copied over a header field
            at = rng.randrange(8, max(9, min(len(data) - 8, 200)))
            data[at:at + 7] = b"ZQ0001X"
        yield kind, bytes(data)
