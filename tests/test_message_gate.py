"""No byte of a file in any message: hostile files with a marker in every metadata field, mutated
thousands of ways (seeded), decoded in-process as a decode task does; no marker may reach a row's
error, its dicom column (within the keep list), a warning, a log record or anything printed. The
end-to-end half (mutated files through ``imgclf run`` and ``imgclf report``) is in
tests/test_guarantees.py, beside the crafted-DICOM run."""

from __future__ import annotations

import logging
import warnings

import pytest

from imgclf_ray.containers.base import Part
from imgclf_ray.deid import KEEP
from imgclf_ray.messages import describe, printable, scrub, uid
from imgclf_ray.spec import DecodeSpec
from imgclf_ray.stages import LoadConfig, LoadStage
from imgclf_ray.stages.common import StageError
from tests.support.hostile import dicom_variants, find_markers, image_variants, marked_dicom, marked_images

OTHER_DICOM_VARIANTS = 420  # beyond one swallowing length per element (1,642)
IMAGE_VARIANTS = 150  # per format (PNG, TIFF, JPEG, WebP)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _decoded(stage: LoadStage, data: bytes) -> list[str]:
    """Everything a decode task makes of these bytes that could be shown: the row's error, or its
    dicom column; the frame count's error (decode.frames: all); the dicom column with every kept
    attribute asked for."""
    import json

    from imgclf_ray.imaging.decode import DecodeError, frame_count
    from imgclf_ray.imaging.dicom import attributes, is_dicom

    texts = []
    if is_dicom(data):
        try:
            texts.append(json.dumps(attributes(data, sorted(KEEP))))
        except DecodeError as exc:
            texts.append(str(exc))
    stage._dicom = None
    try:
        stage.load_one("file:///archive/x", Part(0, data))
    except StageError as exc:
        texts.append(str(exc))
    texts.append(stage._dicom or "")
    try:
        frame_count(data)
    except Exception as exc:  # noqa: BLE001 - its message is what a row would carry
        texts.append(str(exc))
    return texts


def _leaks(variants, stages: list[LoadStage], capfd) -> tuple[int, list[tuple[str, str]]]:
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    old_level, root.level = root.level, logging.DEBUG
    found, tried = [], 0
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for kind, data in variants:
                tried += 1
                for stage in stages:
                    for text in _decoded(stage, data):
                        found += [(kind, m) for m in find_markers(text)]
            shown = [str(w.message) for w in caught]
    finally:
        root.removeHandler(records)
        root.level = old_level
    out, err = capfd.readouterr()
    for text in shown + records.lines + [out, err]:
        found += [("printed", m) for m in find_markers(text)]
    return tried, found


def test_mutated_dicoms_leak_no_marker(capfd):
    base = marked_dicom(depth=3)
    assert len(find_markers(base.decode("latin-1"))) > 1500  # every text-like element carries one
    stages = [LoadStage(LoadConfig())]
    tried, found = _leaks(dicom_variants(base, OTHER_DICOM_VARIANTS, seed=20), stages, capfd)
    assert tried >= 2000 and not found, found[:20]
    print(f"{tried} DICOM variants, {len(found)} markers found")
    # The unmutated file decodes, and its kept attributes are there.
    kept, default = _decoded(stages[0], base)  # no error
    assert '"Modality": "CT"' in kept and '"Modality": "CT"' in default


@pytest.mark.parametrize("fmt", ["png", "tiff", "jpeg", "webp"])
def test_mutated_images_with_marked_metadata_leak_no_marker(fmt, capfd):
    base = marked_images()[fmt]
    stages = [LoadStage(LoadConfig())]
    assert not [t for t in _decoded(stages[0], base) if t]  # the original decodes
    tried, found = _leaks(image_variants(base, IMAGE_VARIANTS, seed=21), stages, capfd)
    assert tried == IMAGE_VARIANTS and not found, found[:20]


def test_the_gate_drops_what_is_quoted_unprintable_or_long_and_says_what_it_dropped():
    assert scrub("Invalid value for VR UI: '1.2.3\x00DOE^JANE MRN123'") == "Invalid value for VR UI: <value>"
    assert scrub("broken PNG file (chunk b'tEXt')") == "broken PNG file (chunk <value>)"
    assert scrub('unterminated "DOE JANE') == "unterminated <value>"
    assert scrub("name DOE^JANE here") == "name <value> here"
    assert scrub("x" * 41) == "<value>"
    assert scrub("first line\nsecond ZQ0001X") == "first line"
    assert len(scrub("word " * 100)) <= 120
    assert describe(ValueError("bad 'ZQ0001X'")) == "ValueError: bad <value>"
    assert describe(KeyError("ZQ\x01")) == "KeyError"
    assert uid("1.2.840.10008.1.2") == "1.2.840.10008.1.2"
    assert uid("1.2.3\x00DOE^JANE") == uid("1.2.3 4") == uid("9" * 65) == "<invalid UID>"
    assert printable("a\x00b\u00e9c") == "a b c"
    # A URL's credentials (an MLflow server's from the environment, a presigned URL): dropped, the rest kept.
    assert scrub("API request to http://svc:S3CRET@127.0.0.1:9/api failed") == "API request to http://127.0.0.1:9/api failed"
    assert printable("at https://T0KEN@h:5000/x?a=1&X-Amz-Signature=S3CRET&api_key=K3Y") == \
        "at https://h:5000/x?a=1&X-Amz-Signature=<secret>&api_key=<secret>"
    assert printable("s3://b/k?versionId=3 and a@b.c") == "s3://b/k?versionId=3 and a@b.c"
    assert printable("http://u:p@ss@host/api") == "http://host/api"  # (to the authority's last '@', as urlsplit)
    # A fragment's too (OAuth's implicit flow, a single-page app's route): a browser never sends it, a log keeps it.
    assert printable("https://h/cb#access_token=T0KEN&state=1 and https://app/#/in?token=T0KEN&x=2 #top") == \
        "https://h/cb#access_token=<secret>&state=1 and https://app/#/in?token=<secret>&x=2 #top"
    # Not credentials: a user alone outside HTTP, an object key's own '?', ';' or '&', a file's name.
    for kept in ("sftp://alice@host/data", "s3://b/photos/2024?sort_key=1", "s3://bucket/a;key=1/x",
                 "read: file:///data/report&token=1.png: cannot identify"):
        assert printable(kept, names=True) == kept


def test_a_swallowing_sop_class_uid_is_named_as_invalid_never_shown():
    from imgclf_ray.imaging.decode import DecodeError, decode_image
    from tests.support.hostile import walk

    base = bytearray(marked_dicom(depth=1))
    sop = next(e for e in walk(bytes(base)) if base[e.start:e.start + 4] == b"\x08\x00\x16\x00")
    # SOPClassUID swallows everything up to the pixel data's end: no pixel data is left.
    base[sop.length_at:sop.length_at + 2] = (0xFFFE).to_bytes(2, "little")
    data = bytes(base[:sop.value_at + 0xFFFE])
    with pytest.raises(DecodeError) as caught:
        decode_image(data.ljust(sop.value_at + 0xFFFE, b"\x00"), DecodeSpec())
    assert not find_markers(str(caught.value))
    assert "<invalid UID>" in str(caught.value) or "unreadable DICOM header" in str(caught.value), str(caught.value)


def test_c_library_and_warning_output_of_a_worker_passes_the_gate(tmp_path):
    import subprocess
    import sys

    code = ("import os, warnings; from imgclf_ray.messages import guard_output; guard_output(); "
            "os.write(2, b\"libtiff: tag 'ZQ0001X' DOE^JANE ok\\n\"); "
            "warnings.warn(\"Invalid value for VR PN: 'ZQ0002X'\"); "
            "import time; time.sleep(0.2)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not find_markers(proc.stderr) and "DOE^JANE" not in proc.stderr
    assert "libtiff: tag <value> ok" in proc.stderr and "UserWarning: Invalid value for VR PN: <value>" in proc.stderr


def test_a_value_holding_quotes_is_dropped_whole_however_it_is_quoted():
    """A message quotes a value (Python's repr, pydicom's hand-made '...', bytes' b'...'); a value
    holding quotes itself (O'BRIEN, A'B"C) made the quotes of a message stop matching and the words
    inside pass. Reference: each message built the way libraries build them, with random quotes,
    escapes and words around a marker; none may survive the gate."""
    import random

    rng = random.Random(22)
    pieces = ["'", '"', "`", "\\", " ", "’", "“", "«", "O'", "ZQ", "DOE JANE", "MRN 12", "x", "\n", "\r", "\x1c", "\x85",
              "\u2028"]  # (line breaks: a value holding one split the message before its last quote)
    for n in range(5000):
        value = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        value = value[:rng.randint(0, len(value))] + f"ZQ{n:04d}X" + value[rng.randint(0, len(value)):]
        quoted = rng.choice([repr(value), f"'{value}'", f'"{value}"', repr(value.encode("utf-8", "replace")),
                             f"({value!r})"])
        text = f"{rng.choice(['Invalid value', 'could not convert string to float:', 'bad'])} {quoted}" \
               f"{rng.choice(['', ' in tag (0028,0004)', ' for VR CS', '.'])}"
        assert not find_markers(scrub(text)), (text, scrub(text))


def _quoted_dicoms():
    """The small CT image with one attribute that decoding reads (the file meta's transfer syntax,
    each kept attribute whose VR has a form: UI, CS, DS, IS; a kept SH or LO text goes into the
    dicom column as it is) holding a marker with quotes: written with a placeholder of its length
    that pydicom accepts, then the bytes swapped."""
    import io
    import warnings

    from pydicom import dcmread
    from pydicom.datadict import dictionary_VR, keyword_dict

    placeholders = {"UI": "1.2.3.4.{}", "CS": "ZZPLACE{}Z", "DS": "{}.0000001", "IS": "00000000{}"}
    targets = [("file_meta", "TransferSyntaxUID", "UI")] + [
        ("dataset", k, dictionary_VR(keyword_dict[k])) for k in sorted(KEEP)
        if dictionary_VR(keyword_dict[k]) in placeholders]
    for n, (where, keyword, vr) in enumerate(targets, start=9000):
        ds = dcmread(io.BytesIO(marked_dicom(depth=0)))
        placeholder = placeholders[vr].format(n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            setattr(ds.file_meta if where == "file_meta" else ds, keyword, placeholder)
            buf = io.BytesIO()
            ds.save_as(buf, implicit_vr=False, little_endian=True)
        for value in (f"A'ZQ{n}X\"B'", f"X'Y\nZQ{n}XZ"):  # (quotes inside; a line break after the quote)
            assert len(value) == len(placeholder) == 12 and buf.getvalue().count(placeholder.encode()) == 1
            yield keyword, buf.getvalue().replace(placeholder.encode(), value.encode())


def _quoted_headers():
    """Formats whose headers are text Pillow parses (IM, PPM, FITS): a value holding quotes."""
    value = b"A'ZQ9900X\" DOE JANE"
    yield "im", b"Image type: L\r\nImage size (x*y): " + value + b"\r\n\x1a" + b"\0" * 600
    yield "ppm", b"P6\n" + value[:10] + b"\n"
    cards = [b"SIMPLE  =                    T", b"BITPIX  =                    8", b"NAXIS   =                    2",
             b"NAXIS1  = " + value, b"NAXIS2  =                    4", b"END"]
    yield "fits", b"".join(c.ljust(80) for c in cards).ljust(2880) + b"\0" * 2880


def test_values_that_decoding_quotes_hold_quotes_and_leak_no_marker(capfd):
    stages = [LoadStage(LoadConfig())]
    tried, found = _leaks(list(_quoted_dicoms()) + list(_quoted_headers()), stages, capfd)
    assert tried > 20 and not found, found[:20]
