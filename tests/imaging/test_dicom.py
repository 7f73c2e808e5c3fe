"""DICOM with the files the pydicom wheel itself ships: transfer syntaxes, LUTs, MONOCHROME1,
multi-frame, non-image objects, attributes and patient identifiers."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest

from imgclf_ray.imaging.decode import DecodeError, decode_image
from imgclf_ray.imaging.dicom import attributes, is_dicom
from imgclf_ray.spec import DecodeSpec

FILES = Path(pydicom.data.__file__).parent / "test_files"
logging.getLogger("pydicom").setLevel(logging.ERROR)


def _grey(name: str, **decode) -> np.ndarray:
    img, _ = decode_image((FILES / name).read_bytes(), DecodeSpec(**decode))
    arr = np.asarray(img)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    return arr[..., 0]


def test_every_shipped_file_is_an_image_or_a_clear_decode_error():
    outcomes = {}
    for f in sorted(p for p in FILES.rglob("*") if p.is_file()):
        try:
            img, (w, h) = decode_image(f.read_bytes(), DecodeSpec())
            assert img.mode == "RGB" and img.size == (w, h)
            outcomes[f.name] = "ok"
        except DecodeError as exc:  # anything else would be a crash of the row, not an error row
            outcomes[f.name] = str(exc)
    ok = [n for n, o in outcomes.items() if o == "ok"]
    assert len(ok) >= 60
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle_2frame.dcm", "SC_ybr_full_422_uncompressed.dcm"):
        assert outcomes[name] == "ok", (name, outcomes[name])
    assert outcomes["rtplan.dcm"] == "DICOM object without pixel data (RT Plan Storage)"
    assert outcomes["test-SR.dcm"] == "DICOM object without pixel data (Comprehensive SR Storage)"
    assert "not decodable" in outcomes["MR_truncated.dcm"]


def test_lossless_transfer_syntaxes_give_the_same_pixels():
    reference = _grey("MR_small.dcm")
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        np.testing.assert_array_equal(_grey(name), reference, err_msg=name)


def test_window_from_the_file_and_from_the_job():
    raw = pydicom.dcmread(FILES / "MR_small.dcm").pixel_array.astype(float)  # no rescale in this file
    shown = _grey("MR_small.dcm")  # the file's window: centre 600, width 1600
    assert (shown[raw <= 600 - 0.5 - 799.5] == 0).all() and (shown[raw > 600 - 0.5 + 799.5] == 255).all()
    narrow = _grey("MR_small.dcm", dicom_window=(600, 200))
    assert (narrow[raw <= 499.5] == 0).all() and (narrow[raw > 699.5] == 255).all()
    inside = (raw > 520) & (raw < 680)
    np.testing.assert_allclose(narrow[inside], ((raw[inside] - 599.5) / 199 + 0.5) * 255, atol=0.51)


def test_sixteen_bit_without_a_window_uses_the_whole_range_never_clipping():
    ds = pydicom.dcmread(FILES / "CT_small.dcm")
    assert "WindowCenter" not in ds and ds.RescaleIntercept == -1024  # modality LUT to Hounsfield
    raw = ds.pixel_array.astype(float).ravel()
    shown = _grey("CT_small.dcm").astype(float).ravel()
    assert shown.min() == 0 and shown.max() == 255
    order = np.argsort(raw, kind="stable")
    assert (np.diff(shown[order]) >= 0).all()  # a monotonic map of the stored values
    hu = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    soft = _grey("CT_small.dcm", dicom_window=(40, 400)).astype(float).ravel()
    assert (soft[hu <= 40 - 0.5 - 199.5] == 0).all() and (soft[hu > 40 - 0.5 + 199.5] == 255).all()


def test_monochrome1_is_inverted():
    ds = pydicom.dcmread(FILES / "MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    buf = io.BytesIO()
    ds.save_as(buf)
    inverted, _ = decode_image(buf.getvalue(), DecodeSpec())
    np.testing.assert_array_equal(np.asarray(inverted)[..., 0], 255 - _grey("MR_small.dcm"))


def test_multi_frame_files_give_any_frame():
    data = (FILES / "SC_rgb_rle_2frame.dcm").read_bytes()
    first, _ = decode_image(data, DecodeSpec())
    second, _ = decode_image(data, DecodeSpec(frame=1))
    expected = pydicom.dcmread(FILES / "SC_rgb_rle_2frame.dcm").pixel_array
    np.testing.assert_array_equal(np.asarray(first), expected[0])
    np.testing.assert_array_equal(np.asarray(second), expected[1])
    with pytest.raises(DecodeError, match="frame 2 asked for .* the file has 2"):
        decode_image(data, DecodeSpec(frame=2))


def test_attributes_and_patient_identifiers():
    data = (FILES / "CT_small.dcm").read_bytes()
    assert is_dicom(data) and not is_dicom(b"\x89PNG" + b"\x00" * 200)
    attrs = attributes(data, list(DecodeSpec().dicom_attributes))
    assert attrs["Modality"] == "CT" and attrs["SOPInstanceUID"].startswith("1.3.6.1.4.1.5962")
    assert "PatientName" not in attrs
    with pytest.raises(ValueError, match="PatientName, PatientID are not kept by the DICOM PS3.15 Annex E"):
        DecodeSpec(dicom_attributes=["Modality", "PatientName", "PatientID"])
    with pytest.raises(ValueError, match="unknown DICOM keyword"):
        DecodeSpec(dicom_attributes=["Modalty"])
    allowed = DecodeSpec(dicom_attributes=["PatientName"], dicom_allow_phi=True)
    assert attributes(data, allowed.dicom_attributes, allowed.dicom_allow_phi)["PatientName"] == "CompressedSamples^CT1"
    assert attributes(data, ["PatientName"])["PatientName"] is None  # outside the keep list


def test_a_deflated_dataset_is_counted_before_it_is_inflated():
    """Deflated Explicit VR Little Endian: pydicom inflates the whole dataset in one call (a 3 MB
    file inflated to 3 GiB: 6.4 GB at its peak). The shipped deflated file decodes; one that
    inflates past decode.max_container_bytes is one DecodeError, and what Python allocated for it
    (zlib's output is Python bytes: tracemalloc sees it) stays near one 16 MiB step."""
    import tracemalloc

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    shipped = (FILES / "image_dfl.dcm").read_bytes()
    assert decode_image(shipped, DecodeSpec())[1] == (512, 512)
    for cut in (50, 2000):  # (as pydicom's own inflate did, a stream cut short is refused)
        with pytest.raises(DecodeError, match=r"^unreadable DICOM header \(a deflated dataset cut short\)$"):
            decode_image(shipped[:-cut], DecodeSpec())
    ds = pydicom.dcmread(FILES / "CT_small.dcm")
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4096, 8192, 16, 16, 15
    ds.PixelData = bytes(4096 * 8192 * 2)  # 64 MiB of zeros
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf)
    bomb = buf.getvalue()
    assert len(bomb) < 2 ** 20  # (64 MiB deflated)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="deflated DICOM dataset inflates past 8 MiB; pydicom holds it twice: "
                                              "over decode.max_container_bytes \\(16 MiB\\)"):
            decode_image(bomb, DecodeSpec(max_container_bytes=16 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20, peak
    assert decode_image(bomb, DecodeSpec(max_decode_bytes=None))[1] == (8192, 4096)  # within the default
    # pydicom pads an odd-length deflated dataset with a byte after the stream's end: the count
    # looped forever on it (zlib leaves it unconsumed). In a thread, so that the test ends either way.
    import threading

    from imgclf_ray.imaging.dicom import _inflated

    for padded in (bomb + b"\0", bomb + b"\0" * 1000):
        counted = threading.Thread(target=_inflated, args=(padded, 2 << 30), daemon=True)
        counted.start()
        counted.join(60)
        assert not counted.is_alive(), "the count does not end on bytes after the deflated stream"


def _with_elements(count: int, nested: bool, deflated: bool) -> bytes:
    """An 8x8 DICOM whose dataset opens with ``count`` empty private elements (8 bytes each), at
    its top level or inside one undefined-length sequence item; its dataset deflated or not."""
    import struct
    import zlib

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 8, 8, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(64))
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True)
    elements = b"\x09\x00\x10\x10LO\x00\x00" * count
    if nested:
        elements = (b"\x09\x00\x10\x10SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff" + elements
                    + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    body = elements + buf.getvalue()
    if deflated:
        zipped = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = zipped.compress(body) + zipped.flush()
    shell = Dataset()
    shell.file_meta = FileMetaDataset()
    shell.file_meta.MediaStorageSOPClassUID, shell.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, "1.2.3.4"
    shell.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    shell.preamble = b"\0" * 128
    meta = io.BytesIO()
    pydicom.dcmwrite(meta, shell, enforce_file_format=True)
    head = meta.getvalue()
    return head[:144 + struct.unpack("<I", head[140:144])[0]] + body


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("deflated", [False, True])
def test_reading_a_dataset_of_millions_of_elements_is_held_to_decode_max_seconds(nested, deflated):
    """pydicom walks a dataset element by element in Python: a 467 KB deflated file of 40 million
    empty elements took 180 s a read (and a 1.2 MB one of 100 million, nested in a sequence that
    pydicom reads as eagerly, would take 900 s, read twice). Reading is held to decode.max_seconds
    of CPU, nested elements, deflated datasets too (they are inflated here, not by pydicom)."""
    data = _with_elements(60_000, nested, deflated)
    assert decode_image(data, DecodeSpec())[1] == (8, 8)
    assert pydicom.dcmread(io.BytesIO(data)).pixel_array.tobytes() == bytes(range(64))  # (the reference reads it)
    with pytest.raises(DecodeError, match=r"^reading the DICOM dataset took more than decode.max_seconds \(1e-09 s of CPU\)$"):
        decode_image(data, DecodeSpec(max_seconds=1e-9))
    with pytest.raises(DecodeError, match=r"decode.max_seconds"):
        attributes(data, ["Modality"], max_seconds=1e-9)


def test_a_large_sequence_that_pydicom_would_parse_when_read_is_never_read():
    """pydicom keeps a sequence of defined length as bytes and parses it when it is first read,
    outside decode.max_seconds (a VOILUTSequence of a million empty elements: 2.4 s under a limit
    of 0.5 s). Over 16 MiB, a LUT sequence the decode reads is refused; one written where the
    dictionary has no sequence (a WindowCenter) is dropped, and the frame shown by its own range."""
    import struct
    import zlib

    def with_sequence(group: int, element: int, count: int) -> bytes:
        data = bytearray(_with_elements(0, nested=False, deflated=False))
        items = b"\x09\x00\x10\x10LO\x00\x00" * count
        item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(items)) + items
        at = data.index(b"\xe0\x7f\x10\x00")  # (before PixelData)
        data[at:at] = struct.pack("<HH", group, element) + b"SQ\x00\x00" + struct.pack("<I", len(item)) + item
        head = 144 + struct.unpack("<I", data[140:144])[0]
        meta = bytes(data[:head]).replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.1.99")
        meta = meta[:140] + struct.pack("<I", struct.unpack("<I", meta[140:144])[0] + 2) + meta[144:]
        meta = meta.replace(b"\x02\x00\x10\x00UI\x14\x00", b"\x02\x00\x10\x00UI\x16\x00")
        zipped = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return meta + zipped.compress(bytes(data[head:])) + zipped.flush()

    plain = decode_image(_with_elements(0, nested=False, deflated=False), DecodeSpec())[0]
    with pytest.raises(DecodeError, match=r"^its VOI LUT sequence holds 23 MiB, more than 16 MiB: not read$"):
        decode_image(with_sequence(0x0028, 0x3010, 3_000_000), DecodeSpec(max_seconds=0.5))
    img, size = decode_image(with_sequence(0x0028, 0x1050, 3_000_000), DecodeSpec(max_seconds=0.5))
    assert size == (8, 8) and np.array_equal(np.asarray(img), np.asarray(plain))


def test_a_file_is_parsed_once_for_its_attributes_its_frame_count_and_every_frame(tmp_path, monkeypatch):
    """Its attributes, then its pixels, and for ``frames: all`` its frame count and then each frame's
    attributes: a multi-frame file was parsed once a frame and three times more, each read the
    whole walk over its elements. Now once a file (pydicom.dcmread counted)."""
    from imgclf_ray.stages import LoadConfig, LoadStage

    reads = []
    read = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: reads.append(1) or read(*a, **k))
    for name in ("SC_rgb_rle_2frame.dcm", "CT_small.dcm", "MR_small.dcm"):
        (tmp_path / name).write_bytes((FILES / name).read_bytes())
    for frames, files, rows in (("all", ["SC_rgb_rle_2frame.dcm"], 2), ("one", ["CT_small.dcm", "MR_small.dcm"], 2)):
        reads.clear()
        stage = LoadStage(LoadConfig(decode=DecodeSpec(frames=frames, dicom_attributes=["Modality", "Rows"])))
        out = stage({"uri": np.asarray([f"file://{tmp_path}/{n}" for n in files], dtype=object)})
        assert out["status"].tolist() == ["ok"] * rows and all(json.loads(d)["Rows"] for d in out["dicom_json"])
        assert len(reads) == len(files)


def test_a_compressed_frame_larger_than_its_header_is_refused_before_it_is_decoded():
    """The limits are checked on Rows and Columns; the decoder allocates what the codestream's own
    header says (an 8x8 header over a 30000x30000 JPEG: 4.5 GB). Frames of 2000x1000 under a
    header of 8x8 — a JPEG, a bare JPEG 2000 codestream, a JP2 file, and the ways a decoder still
    finds the frame header that a simple walk misses (the frame split over fragments after its first
    two bytes, a TEM marker without a length, stray bytes between segments, a JP2 box of 64-bit
    length), and a frame that an offset table points elsewhere than the fragments' order — are
    refused with the frame's own size, before a decoder runs (after it, the error was pydicom's
    shape mismatch); a frame whose header cannot be read here is refused: none before the scan, a
    hierarchical JPEG (DHP: libjpeg grows its 8x8 first frame to the DHP's size; 6.7 GB from 9 KB),
    a JPEG 2000 frame cut into more than 4,096 tiles smaller than 64x64; 8x8 frames under the same header decode."""
    from PIL import Image
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    def item(data: bytes) -> bytes:
        data += b"\0" * (len(data) % 2)
        return b"\xfe\xff\x00\xe0" + len(data).to_bytes(4, "little") + data

    def dicom(fragments: list[bytes], syntax, side: int = 8, table: bytes = b"", frames: int = 1) -> bytes:
        ds = pydicom.dcmread(FILES / "CT_small.dcm")
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = side, side, 8, 8, 7
        ds.NumberOfFrames = frames
        ds.PixelData = item(table) + b"".join(map(item, fragments)) + b"\xfe\xff\xdd\xe0\0\0\0\0"
        ds.PixelRepresentation, ds.file_meta.TransferSyntaxUID = 0, syntax
        ds["PixelData"].is_undefined_length, ds["PixelData"].VR = True, "OB"
        buf = io.BytesIO()
        ds.save_as(buf)
        return buf.getvalue()

    def encoded(size, fmt, **options) -> bytes:
        buf = io.BytesIO()
        Image.new("L", size, 40).save(buf, fmt, **options)
        return buf.getvalue()

    def xl_boxes(jp2: bytes) -> bytes:  # each box after the signature with the 64-bit length form
        out, at = jp2[:12], 12
        while at < len(jp2):
            length = int.from_bytes(jp2[at:at + 4], "big") or len(jp2) - at
            out += (1).to_bytes(4, "big") + jp2[at + 4:at + 8] + (length + 8).to_bytes(8, "big") + jp2[at + 8:at + length]
            at += length
        return out

    big_jpeg = encoded((2000, 1000), "JPEG")
    app0_end = 4 + int.from_bytes(big_jpeg[4:6], "big")
    cases = {
        "JPEG": ([big_jpeg], JPEGBaseline8Bit),
        "J2K": ([encoded((2000, 1000), "JPEG2000", no_jp2=True)], JPEG2000Lossless),
        "JP2": ([encoded((2000, 1000), "JPEG2000")], JPEG2000Lossless),
        "split": ([big_jpeg[:2], big_jpeg[2:]], JPEGBaseline8Bit),
        "TEM": ([big_jpeg[:2] + b"\xff\x01" + big_jpeg[2:]], JPEGBaseline8Bit),
        "stray bytes": ([big_jpeg[:app0_end] + b"\0\0" + big_jpeg[app0_end:]], JPEGBaseline8Bit),
        "JP2 XLBox": ([xl_boxes(encoded((2000, 1000), "JPEG2000"))], JPEG2000Lossless),
    }
    for name, (fragments, syntax) in cases.items():
        with pytest.raises(DecodeError, match="its compressed frame is 2000x1000 with 1 components; its header "
                                              "says 8x8 with 1"):
            decode_image(dicom(fragments, syntax), DecodeSpec())
    small = encoded((8, 8), "JPEG")
    unreadable = {
        "scan first": [big_jpeg[:2] + b"\xff\xda" + big_jpeg[2:]],
        # Hierarchical: a DHP of 2000x1000 before an 8x8 first frame (libjpeg grows it to the DHP's).
        "DHP": [small[:2] + b"\xff\xde\x00\x0b\x08" + (1000).to_bytes(2, "big") + (2000).to_bytes(2, "big")
                + b"\x01\x01\x11\x00" + small[2:]],
    }
    for name, fragments in unreadable.items():
        with pytest.raises(DecodeError, match="a compressed frame has no frame header that can be read here"):
            decode_image(dicom(fragments, JPEGBaseline8Bit), DecodeSpec())
    # 10,000 tiles of 1x1 (openjpeg sets each up while it reads SIZ): over 4,096, refused.
    j2k = bytearray(encoded((100, 100), "JPEG2000", no_jp2=True))
    j2k[24:32] = (1).to_bytes(4, "big") * 2  # XTsiz, YTsiz
    with pytest.raises(DecodeError, match="a compressed frame has no frame header that can be read here"):
        decode_image(dicom([bytes(j2k)], JPEG2000Lossless, side=100), DecodeSpec())
    # Two frames whose offset table points frame 0 at the second fragment: the decoder decodes the
    # bytes the table names (get_frame), whatever the fragments' order; those are checked.
    first = len(item(small))
    table = first.to_bytes(4, "little") + (first + len(item(big_jpeg))).to_bytes(4, "little")
    with pytest.raises(DecodeError, match="its compressed frame is 2000x1000 with 1 components; its header says 8x8"):
        decode_image(dicom([small, big_jpeg], JPEGBaseline8Bit, table=table, frames=2), DecodeSpec(frame=0))
    for fmt, syntax, options in (("JPEG", JPEGBaseline8Bit, {}), ("JPEG2000", JPEG2000Lossless, {"no_jp2": True}),
                                 ("JPEG2000", JPEG2000Lossless, {})):
        assert decode_image(dicom([encoded((8, 8), fmt, **options)], syntax), DecodeSpec())[1] == (8, 8), (fmt, options)
    assert decode_image(dicom([small[:2], small[2:]], JPEGBaseline8Bit), DecodeSpec())[1] == (8, 8)
    # A frame of more than 256 scans (each decoded over the whole frame: CPU from a few bytes).
    from tests.corpus import eob_scans_jpeg

    with pytest.raises(DecodeError, match="a compressed frame has more than 256 scans"):
        decode_image(dicom([eob_scans_jpeg(8, 257)], JPEGBaseline8Bit), DecodeSpec())


@pytest.mark.ray
def test_dicom_archive_through_the_pipeline(ray_session, tiny_model, tmp_path):
    from imgclf_ray.io.listing import list_archive
    from imgclf_ray.runner.job import execute
    from tests.support.jobs import make_spec, read_run

    archive = tmp_path / "dicom"
    archive.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "rtplan.dcm"):
        (archive / name).write_bytes((FILES / name).read_bytes())
    spec = make_spec(str(archive), str(tmp_path / "out"), tiny_model)
    result = execute(spec, list_archive(spec.source), "d1")
    assert result.by_status == {"ok": 4, "error": 1}
    rows = {Path(r["uri"]).name: r for r in read_run(str(tmp_path / "out"), "d1")}
    assert rows["rtplan.dcm"]["error"] == "decode: DICOM object without pixel data (RT Plan Storage)"
    ct = json.loads(rows["CT_small.dcm"]["dicom"])
    assert ct["Modality"] == "CT" and set(ct) == set(DecodeSpec().dicom_attributes)
    assert rows["CT_small.dcm"]["label"] is not None and (rows["CT_small.dcm"]["width"], rows["CT_small.dcm"]["height"]) == (128, 128)
    assert all("Patient" not in json.dumps(r["dicom"]) for r in rows.values())


@pytest.mark.ray
def test_multi_frame_files_become_one_row_per_frame(ray_session, tiny_model, tmp_path):
    from imgclf_ray.io.listing import list_archive
    from imgclf_ray.runner.job import execute
    from tests.support.jobs import make_spec, read_run

    archive = tmp_path / "frames"
    archive.mkdir()
    for name in ("SC_rgb_rle_2frame.dcm", "CT_small.dcm", "rtplan.dcm"):
        (archive / name).write_bytes((FILES / name).read_bytes())
    spec = make_spec(str(archive), str(tmp_path / "out"), tiny_model, decode={"frames": "all"})
    result = execute(spec, list_archive(spec.source), "f1")
    rows = sorted((Path(r["uri"]).name, r["frame"], r["status"]) for r in read_run(str(tmp_path / "out"), "f1"))
    assert rows == [("CT_small.dcm", 0, "ok"), ("SC_rgb_rle_2frame.dcm", 0, "ok"),
                    ("SC_rgb_rle_2frame.dcm", 1, "ok"), ("rtplan.dcm", 0, "error")]
    assert result.rows == 4


def test_palette_colour_is_scaled_by_its_lookup_tables_bits():
    """A palette's colours are in its LUTs' bits (16 here), not the indices' BitsStored (8): scaled
    by those, 58% of this ultrasound's pixels were white. Reference: pydicom's own LUT applied."""
    from pydicom.pixels import apply_color_lut

    data = (FILES / "examples_palette.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.PhotometricInterpretation == "PALETTE COLOR" and ds.BitsStored == 8
    expected = np.rint(apply_color_lut(ds.pixel_array, ds)[..., :3] / 257.0).astype(np.uint8)
    img, _ = decode_image(data, DecodeSpec())
    assert np.array_equal(np.asarray(img), expected)


@pytest.mark.parametrize("name, window", [("examples_palette.dcm", None), ("CT_small.dcm", None),
                                          ("CT_small.dcm", (40.0, 400.0)), ("MR_small.dcm", None),
                                          ("SC_rgb_rle_16bit.dcm", None), ("ExplVR_BigEnd.dcm", None)])
def test_a_frame_is_converted_a_block_of_rows_at_a_time_with_the_same_pixels(name, window, monkeypatch):
    """The LUTs' float64 copies are made a block of rows at a time (a 9459x9459 palette frame's,
    whole, held 5 GB from 88 KB): blocks of 1,000 samples give the pixels one block gives."""
    from imgclf_ray.imaging import dicom

    data = (FILES / name).read_bytes()
    spec = DecodeSpec(dicom_window=window)
    whole = np.asarray(decode_image(data, spec)[0])
    monkeypatch.setattr(dicom, "BLOCK", 1000)
    assert np.array_equal(np.asarray(decode_image(data, spec)[0]), whole)


def test_a_windowed_ct_frame_is_the_dicom_linear_window_of_its_hounsfield_units():
    """Reference written here from PS3.3 C.11.2.1.2.1 on pydicom's modality LUT: the block-by-block
    conversion gives those pixels."""
    from pydicom.pixels import apply_modality_lut

    data = (FILES / "CT_small.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    c, w = 40.0, 400.0
    y = np.where(hu <= c - 0.5 - (w - 1) / 2, 0.0, np.where(hu > c - 0.5 + (w - 1) / 2, 255.0,
                                                           ((hu - (c - 0.5)) / (w - 1) + 0.5) * 255.0))
    expected = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    img, _ = decode_image(data, DecodeSpec(dicom_window=(c, w)))
    assert np.array_equal(np.asarray(img)[..., 0], expected) and 0 < expected.mean() < 255
