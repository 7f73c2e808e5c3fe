"""Parquet tables of images: an image-bytes column plus metadata carried to the output."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgclf_ray.io.listing import list_archive
from imgclf_ray.runner.job import execute
from imgclf_ray.spec import parse_spec
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
