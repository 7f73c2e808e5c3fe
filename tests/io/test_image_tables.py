"""Parquet tables of images: an image-bytes column plus metadata carried to the output."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgclf_ray.io.listing import list_archive
from imgclf_ray.runner.job import execute
from imgclf_ray.imaging.limits import DecodeError
from imgclf_ray.spec import DecodeSpec, SourceSpec, parse_spec
from tests.corpus import digit_images, png_bytes
from tests.support.jobs import read_run

pytestmark = pytest.mark.ray


def test_image_table_rows_become_output_rows_with_their_metadata(ray_session, tiny_model, tmp_path):
    digits = digit_images(10)
    root = tmp_path / "tables"
    root.mkdir()
    pq.write_table(pa.table({
        "image": [png_bytes(img) for _, img in digits[:6]] + [b"not an image", None],
        "camera": ["front"] * 6 + ["rear", "rear"],
        "frame_no": list(range(8)),
    }), root / "part-0.parquet")
    # Hugging Face datasets' Image feature: a struct of bytes and path.
    pq.write_table(pa.table({
        "image": [{"bytes": png_bytes(img), "path": name} for name, img in digits[6:]],
        "camera": ["left"] * 4, "frame_no": list(range(4)),
    }), root / "part-1.parquet")
    # Tables that are not what the spec says: one error row each, naming the spec's key (never
    # the file's own column names or text: they are its bytes).
    pq.write_table(pa.table({"image": ["DOE^JANE " * 3], "camera": ["x"], "frame_no": [0]}), root / "part-2.parquet")
    pq.write_table(pa.table({"image": [png_bytes(digits[0][1])], "DOE^JANE": ["x"]}), root / "part-3.parquet")
    spec = parse_spec({"name": "tables", "source": {"uri": str(root), "table": {"carry": ["camera", "frame_no"]}},
                       "model": {"uri": tiny_model}, "sink": {"uri": str(tmp_path / "out")}}, "<test>")
    assert spec.source.extensions == [".parquet"]
    result = execute(spec, list_archive(spec.source), "t1")
    assert result.rows == 14 and result.by_status == {"ok": 10, "error": 4}
    rows = {(Path(r["uri"]).name, r["frame"]): r for r in read_run(str(tmp_path / "out"), "t1")}
    assert json.loads(rows[("part-0.parquet", 3)]["metadata"]) == {"camera": "front", "frame_no": "3"}
    assert json.loads(rows[("part-1.parquet", 2)]["metadata"]) == {"camera": "left", "frame_no": "2"}
    assert rows[("part-0.parquet", 6)]["error"].startswith("decode: not a format")
    assert rows[("part-0.parquet", 7)]["error"] == "decode: empty file (0 bytes)"
    assert rows[("part-2.parquet", 0)]["error"] == ("read: the table's column 'image' holds no image bytes "
                                                    "(binary, or a struct with a binary 'bytes' field: "
                                                    "source.table.image_column)")
    assert rows[("part-3.parquet", 0)]["error"] == "read: the table has no columns 'camera', 'frame_no' (source.table.carry)"
    assert rows[("part-1.parquet", 0)]["label"] is not None and rows[("part-1.parquet", 0)]["width"] == 8


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _footer_claims(blob: bytes, small: int) -> bytes:
    """The file with its footer's uncompressed sizes (each row group's and column chunk's) said to
    be ``small`` bytes: Thrift's compact varints, rewritten at their own length (a varint may carry
    continuation bytes of zeros)."""
    meta = pq.ParquetFile(io.BytesIO(blob)).metadata
    length = struct.unpack("<I", blob[-8:-4])[0]
    footer = blob[-8 - length:-8]
    for size in {meta.row_group(0).total_byte_size, meta.row_group(0).column(0).total_uncompressed_size}:
        was, now = _varint(size << 1), bytearray(_varint(small << 1))  # zigzag of a positive i64
        now[-1] |= 0x80
        now += b"\x80" * (len(was) - len(now) - 1) + b"\x00"
        assert len(now) == len(was) and footer.count(was) >= 1  # (the two sizes are often equal)
        footer = footer.replace(was, bytes(now))
    return blob[:-8 - length] + footer + blob[-8:]


@pytest.mark.parametrize("dictionary", [True, False])
def test_a_table_whose_rows_expand_past_its_footer_is_one_error_past_the_container_limit(dictionary):
    """40 rows of one 64 KiB value: stored once when the column is dictionary-encoded (the footer,
    truthfully, says 64 KiB), or each row stored and the footer forged to say 1 KB. Over a
    1 MiB decode.max_container_bytes either way: the file is one error, its rows read no further."""
    from imgclf_ray.containers.table import split

    value = png_bytes(digit_images(1)[0][1]).ljust(64 << 10, b"\0")
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": [value] * 40}), buf, compression="zstd", use_dictionary=dictionary)
    blob = buf.getvalue() if dictionary else _footer_claims(buf.getvalue(), 1000)
    declared = pq.ParquetFile(io.BytesIO(blob)).metadata.row_group(0).total_byte_size
    assert declared < 1 << 20 and len(blob) < 1 << 20  # what the file says and weighs: under the limit
    source, decode = SourceSpec(uri="/x", table={}), DecodeSpec(max_container_bytes=1 << 20)
    with pytest.raises(DecodeError, match=r"the table's rows expand past decode.max_container_bytes \(1 MiB\) at row 1[56]"):
        split(blob, source, decode)
    assert len(split(blob, source, DecodeSpec(max_container_bytes=4 << 20))) == 40  # the same rows, read whole
