"""Parquet tables of images: an image-bytes column plus metadata carried to the output."""

from __future__ import annotations

import io
import json
import os
import struct
import time
from pathlib import Path

import numpy as np
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


BOMBS = {  # name: (rows, Parquet writer options, footer forged, what the error says)
    # 40 rows of one 64 KiB value, stored once (the footer, truthfully, says 64 KiB)
    "dictionary-encoded": (lambda v: [v] * 40, {"use_dictionary": True}, False, r"rows expand past .* by row 40"),
    # the same rows each stored, the footer saying 1 KB: the pages' own headers say 2.6 MiB
    "forged footer": (lambda v: [v] * 40, {"use_dictionary": False}, True, r"pages expand to 3 MiB"),
    # one row of 4 MiB (compressed: a few KB), the footer saying 1 KB: refused before it is read
    "one forged row": (lambda v: [v.ljust(4 << 20, b"\0")], {"use_dictionary": False}, True, r"pages expand to 4 MiB"),
    # 5,000 empty rows in a few KB: each counted as what a row becomes downstream
    "empty rows": (lambda v: [None] * 5000, {}, False, r"the table expands to 5 MiB"),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_table_expanding_past_what_it_weighs_is_one_error_at_the_container_limit(bomb):
    """Tables of a few KB that expand past a 1 MiB decode.max_container_bytes (what their footer
    says, and what they weigh, is under it): one error, before the rows past the limit are made."""
    from imgclf_ray.containers.table import split

    rows, options, forged, said = BOMBS[bomb]
    value = png_bytes(digit_images(1)[0][1]).ljust(64 << 10, b"\0")
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": pa.array(rows(value), pa.binary())}), buf, compression="zstd", **options)
    blob = _footer_claims(buf.getvalue(), 1000) if forged else buf.getvalue()
    declared = pq.ParquetFile(io.BytesIO(blob)).metadata.row_group(0).total_byte_size
    assert declared < 1 << 20 and len(blob) < 1 << 20  # what the file says and weighs: under the limit
    source = SourceSpec(uri="/x", table={})
    with pytest.raises(DecodeError, match=said):
        split(blob, source, DecodeSpec(max_container_bytes=1 << 20))
    assert len(split(blob, source, DecodeSpec(max_container_bytes=8 << 20))) == len(rows(value))  # read whole


def test_the_footer_and_page_walk_read_what_arrow_writes_and_refuse_damaged_files():
    """The footer as read here gives Arrow's own row groups, rows, paths and offsets, and the pages'
    sizes summed from their headers (with the headers) are the column chunks' uncompressed sizes
    as Arrow's footer gives them, over codecs, page versions, dictionaries, nulls and nesting; a
    header cut short is a damaged table, one error."""
    from imgclf_ray.containers.table import _footer, _pages_expand_to

    table = pa.table({"image": pa.array([{"bytes": bytes([i % 256]) * (3000 + i), "path": f"p{i % 3}"} for i in range(300)]
                                        + [None] * 20),
                      "camera": pa.array([["front", "rear"][i % 2] for i in range(320)]).dictionary_encode(),
                      "n": pa.array(range(320))})
    for options in ({"compression": "zstd"}, {"compression": "snappy", "data_page_version": "2.0"},
                    {"compression": "none", "use_dictionary": False}, {"compression": "gzip", "data_page_size": 4096}):
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=100, **options)
        meta = pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata
        groups = _footer(buf.getvalue())
        arrow = [(meta.row_group(g).total_byte_size, meta.row_group(g).num_rows,
                  [(c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset,
                    c.total_compressed_size) for c in (meta.row_group(g).column(j) for j in range(meta.num_columns))])
                 for g in range(meta.num_row_groups)]
        assert [(g["bytes"], g["rows"], [(c["start"], c["length"]) for c in g["columns"]])
                for g in groups] == arrow, options
        expected = sum(meta.row_group(g).column(j).total_uncompressed_size
                       for g in range(meta.num_row_groups) for j in range(meta.num_columns))
        chunks = [(j, c) for g in groups for j, c in enumerate(g["columns"])]
        assert _pages_expand_to(buf.getvalue(), chunks, 1 << 30)[0] == expected, options
    blob = buf.getvalue()
    start = chunks[0][1]["start"]
    cut = blob[:start + 3] + b"\xff" * 7 + blob[start + 10:]
    with pytest.raises(DecodeError, match="not a readable Parquet table: its page headers are damaged"):
        _pages_expand_to(cut, chunks, 1 << 30)
    with pytest.raises(DecodeError, match="not a readable Parquet table: its footer is damaged"):
        _footer(blob[:-12] + b"\xff\xff\xff\xff" + blob[-8:])


def test_fuzzed_tables_are_one_error_each_and_never_end_the_process():
    """900 byte-flipped image tables (three codecs and layouts; a Hugging Face image struct and a
    carried column) through the split in this process: each is rows or one error (a damaged
    level histogram in a footer made pyarrow's per-chunk metadata abort the process), none past
    the limit."""
    import random

    from imgclf_ray.containers.table import split

    rng = random.Random(7)
    table = pa.table({"image": pa.array([{"bytes": bytes([i % 256]) * (300 + i), "path": f"p{i % 3}"} for i in range(60)]),
                      "camera": pa.array([["front", "rear"][i % 2] for i in range(60)])})
    source, decode = SourceSpec(uri="/x", table={"carry": ["camera"]}), DecodeSpec(max_container_bytes=1 << 20)
    outcomes = set()
    for options in ({"compression": "zstd"}, {"compression": "none", "use_dictionary": False},
                    {"compression": "snappy", "data_page_version": "2.0"}):
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=20, **options)
        for _ in range(300):
            blob = bytearray(buf.getvalue())
            for _ in range(rng.choice([1, 2, 4, 8])):
                blob[rng.randrange(len(blob))] = rng.randrange(256)
            try:
                parts = split(bytes(blob), source, decode)
                assert sum(len(p.data or b"") for p in parts) <= 1 << 20
                outcomes.add("rows")
            except DecodeError:
                outcomes.add("our error")
            except (pa.ArrowException, OSError, ValueError):  # Arrow's own: one error row, through the gate
                outcomes.add("arrow's error")
    assert outcomes == {"rows", "our error", "arrow's error"}


def test_tables_arrow_would_read_past_their_bound_are_refused_before_a_row_is_read():
    """A carried list column (its elements: one dictionary value any number of times, whatever its
    pages weigh) and a file that says parquet-mr before 1.2.9 wrote it (Arrow reads 100 bytes past
    each of its column chunks): one error each, naming why."""
    from imgclf_ray.containers.table import split

    image = png_bytes(digit_images(1)[0][1])
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": [image], "tags": [["a" * 1000] * 50]}), buf, store_schema=False)
    with pytest.raises(DecodeError, match=r"the table's column 'tags' holds lists or maps: source.table.carry"):
        split(buf.getvalue(), SourceSpec(uri="/x", table={"carry": ["tags"]}), DecodeSpec())
    assert len(split(buf.getvalue(), SourceSpec(uri="/x", table={}), DecodeSpec())) == 1  # (not carried: not read)
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": [image]}), buf)
    mine = b"parquet-cpp-arrow version " + pa.__version__.encode()
    old = b"parquet-mr version 1.2.8".ljust(len(mine), b" ")
    assert buf.getvalue().count(mine) == 1
    with pytest.raises(DecodeError, match="written by parquet-mr before 1.2.9 is not read"):
        split(buf.getvalue().replace(mine, old), SourceSpec(uri="/x", table={}), DecodeSpec())


def test_a_tables_rows_leave_the_decode_task_a_chunk_at_a_time_on_both_executors(ray_session, tmp_path):
    """A container file is many images: a 157 KB table of 20,000 digits made 3 GB of inputs in one
    task (a 483-byte table of 20,000 rows, 3.9 GB in the local executor's processes). Its rows leave
    the task in chunks of ``chunk_bytes`` of inputs, in order: a local decode worker sends each one
    on, and a Ray task's first rows reach the consumer before its second chunk is loaded (the
    chunk waits for that event). The chunked rows are the rows loaded whole."""
    import ray

    from imgclf_ray.imaging.conditioning import Conditioning
    from imgclf_ray.planner import plan_resources
    from imgclf_ray.runner.build import RayEngine, load_dataset
    from imgclf_ray.runner.local import DecodePool
    from imgclf_ray.stages import LoadConfig, LoadStage

    digits = digit_images(12)
    for name, rows in (("a.parquet", digits[:7]), ("b.parquet", digits[7:])):
        pq.write_table(pa.table({"image": [png_bytes(img) for _, img in rows]}), tmp_path / name)
    uris = [f"file://{tmp_path}/a.parquet", f"file://{tmp_path}/b.parquet"]
    config = LoadConfig(conditioning=Conditioning(resize=8, crop=8), source=SourceSpec(uri=str(tmp_path), table={}))
    whole = LoadStage(config)({"uri": np.asarray(uris, dtype=object)})
    assert whole["status"].tolist() == ["ok"] * 12
    stage = LoadStage(config)
    stage.chunk_bytes = 3 * 3 * 8 * 8  # three rows' inputs
    reported = []
    stage.reporter = lambda name, rows, seconds: reported.append((name, rows))
    assert [len(c["frame"]) for c in stage.chunks({"uri": np.asarray(uris[:1], dtype=object)})] == [3, 3, 1]
    # The file's read (and split) reported with the first chunk: a split run's progress counts files by it.
    assert ("read", 2) in reported and sum(rows for name, rows in reported if name == "decode") == 7
    stage.reporter = None
    with DecodePool(stage, 2) as pool:
        local = list(pool.map(pa.table({"uri": uris}), 1))
    assert [len(c["frame"]) for c in local] == [3, 3, 1, 3, 2]
    assert np.concatenate([c["uri"] for c in local]).tolist() == [uris[0]] * 7 + [uris[1]] * 5
    assert np.concatenate([c["frame"] for c in local]).tolist() == list(range(7)) + list(range(5))
    assert np.array_equal(np.concatenate([c["inputs"] for c in local]), whole["inputs"])

    flag = str(tmp_path / "first-rows-arrived")

    class Held(LoadStage):  # (pickled by value into the Ray task)
        def _load_rows(self, batch, parts, spent):
            waited = batch["frame"][0] > 0  # a chunk after the first: held until the first arrived
            deadline = time.monotonic() + 300  # (only code that does not stream waits it out)
            while waited and not os.path.exists(flag) and time.monotonic() < deadline:
                time.sleep(0.02)
            out = LoadStage._load_rows(self, batch, parts, spent)
            return {**out, "after_first": np.full(len(parts), not waited or os.path.exists(flag))}

    held = Held(config)
    held.chunk_bytes = stage.chunk_bytes
    context = ray.data.DataContext.get_current()
    size, context.target_max_block_size = context.target_max_block_size, 1  # a block a row: none waits for more
    try:
        ds = load_dataset(pa.table({"uri": uris[:1]}), plan_resources(RayEngine().resources(), light=True), held, 1)
        rows = []
        for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
            rows.append(block)
            Path(flag).touch()
    finally:
        context.target_max_block_size = size
    assert np.concatenate([r["frame"] for r in rows]).tolist() == list(range(7))
    assert np.concatenate([r["after_first"] for r in rows]).all()
    assert np.array_equal(np.concatenate([r["inputs"] for r in rows]), whole["inputs"][:7])
