"""Archive, model and output on S3 (a moto server on 127.0.0.1), through the real pipeline."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as pads
import pytest

from imgclf_ray.io.listing import list_archive
from imgclf_ray.io.sink import committed_files
from imgclf_ray.runner.job import execute
from tests.corpus import bad_files, good_files
from tests.support.jobs import make_spec

pytestmark = [pytest.mark.ray, pytest.mark.s3]


def test_s3_archive_to_s3_output(ray_session, s3, moto_server, tiny_model, sample_photo):
    for rel, data in good_files(sample_photo, n_digits=4).items():
        s3.pipe(f"archive/cams/{rel}", data)
    s3.pipe("archive/cams/bad/page.jpg", bad_files(sample_photo)["bad/page.jpg"][0])
    for f in Path(tiny_model).iterdir():
        s3.pipe(f"archive/models/tiny/{f.name}", f.read_bytes())

    spec = make_spec("s3://archive/cams", "s3://output/labels", "s3://archive/models/tiny",
                     storage={"endpoint_url": moto_server})
    manifest = list_archive(spec.source, spec.storage)
    assert manifest.num_rows == 8
    result = execute(spec, manifest, "night-1")
    assert result.by_status == {"ok": 7, "error": 1}

    files = committed_files("s3://output/labels", "night-1", spec.storage)
    assert files and all(f.startswith("s3://output/labels/night-1/part-") for f in files)
    assert s3.exists("output/labels/night-1/_SUCCESS")
    assert not s3.exists("output/labels/_staging/night-1")
    table = pads.dataset([f.removeprefix("s3://") for f in files], filesystem=s3, format="parquet").to_table()
    rows = {r["uri"]: r for r in table.to_pylist()}
    assert set(rows) == set(manifest.column("uri").to_pylist())
    assert rows["s3://archive/cams/bad/page.jpg"]["error"].startswith("decode: looks like HTML")
    assert all(len(r["etag"]) == 32 for r in rows.values())
    # Readers globbing for Parquet see the committed files only.
    assert sorted(s3.glob("output/labels/**/*.parquet")) == sorted(f.removeprefix("s3://") for f in files)
    # The report reads the run and the source images from S3, and can be written there too.
    from imgclf_ray.report.html import write_report

    where = write_report("s3://output/labels", out="s3://output/reports/night-1.html", storage=spec.storage)
    page = s3.cat("output/reports/night-1.html").decode()
    assert where == "s3://output/reports/night-1.html"
    assert page.count('<img class="thumb" src="data:image/jpeg;base64,') >= 7
    assert "Errors (1)" in page and "s3://archive/cams/bad/page.jpg" in page


def test_s3_clustering_and_curation(ray_session, s3, moto_server):
    """The clusterer artifact, the staged files the archive pass rewrites, and the output: all on S3."""
    import io

    from PIL import Image

    from imgclf_ray.spec import parse_spec
    from tests.corpus import jpeg_bytes, png_bytes
    from tests.curation.photos import photos

    for name, img in photos().items():
        data = jpeg_bytes(img)
        s3.pipe(f"archive/album/{name}.jpg", data)
        if name in ("coffee", "rocket"):
            s3.pipe(f"archive/album/{name}-copy.png", png_bytes(Image.open(io.BytesIO(data))))
    spec = parse_spec({"name": "album", "source": {"uri": "s3://archive/album"},
                       "sink": {"uri": "s3://output/curated"}, "storage": {"endpoint_url": moto_server},
                       "cluster": {"algorithm": "kmeans", "params": {"n_clusters": 2}},
                       "curate": {"checks": ["duplicate", "dark", "outlier"]}}, "<test>")
    manifest = list_archive(spec.source, spec.storage)
    result = execute(spec, manifest, "c1")
    assert result.curation_flags["duplicate"] == 4 and sum(result.by_cluster.values()) == 9
    assert s3.exists("output/curated/_clusterers/album/clusterer_card.json")
    assert s3.exists("output/curated/c1/_clusters.json") and not s3.exists("output/curated/_staging/c1")
    files = committed_files("s3://output/curated", "c1", spec.storage)
    rows = pads.dataset([f.removeprefix("s3://") for f in files], filesystem=s3, format="parquet").to_table().to_pylist()
    copies = {r["uri"].rsplit("/", 1)[-1]: r for r in rows if r["duplicate_group"]}
    assert set(copies) == {"coffee.jpg", "coffee-copy.png", "rocket.jpg", "rocket-copy.png"}
    # The group is named after its first image by uri ("coffee-copy.png" < "coffee.jpg").
    assert copies["coffee.jpg"]["duplicate_group"] == copies["coffee-copy.png"]["image_id"]
    assert copies["coffee.jpg"]["is_duplicate"] and copies["coffee-copy.png"]["is_duplicate"]  # every member
    assert all(r["is_near_duplicate"] is None for r in rows)  # not asked for


def test_a_delta_sink_on_s3(s3, moto_server):
    """The Delta commit path against a real S3 API: two runs, one replaced, read back by run id."""
    import io
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgclf_ray.io import sink
    from imgclf_ray.io.lock import RunLock
    from imgclf_ray.spec import StorageSpec

    storage = StorageSpec(endpoint_url=moto_server)

    def commit(run_id, ids):
        staging = sink.Staging.new("s3://output/table", run_id, storage, format="delta")
        buf = io.BytesIO()
        pq.write_table(pa.table({"image_id": ids, "run_id": [run_id] * len(ids)}), buf)
        s3.pipe(f"{staging.uri.removeprefix('s3://')}/{uuid.uuid4().hex}{sink.STAGED_SUFFIX}", buf.getvalue())
        with RunLock("s3://output/table", run_id, staging.attempt, storage):
            return sink.commit(staging, {"job": "g"}, {sink.SUMMARY_FILE: b"{}"})

    commit("a", ["1", "2"])
    commit("b", ["3"])
    assert commit("a", ["4"])["table_version"] == 2
    read = lambda run_id: sink.read_rows(sink.resolve_run("s3://output/table", run_id, storage), None, storage)  # noqa: E731
    assert read("a").column("image_id").to_pylist() == ["4"] and read("b").num_rows == 1
    assert [r["run_id"] for r in sink.list_runs("s3://output/table", storage)] == ["b", "a"]
    assert not s3.exists("output/table/_staging") and not s3.exists("output/table/_locks/_delta.lock")


def test_an_example_archive_interrupted_on_s3_is_written_again(s3, moto_server, monkeypatch):
    """S3 has no rename: an example write stopped half way (Ctrl-C in `make demo` with source.uri on
    S3) leaves a marker, and the next run writes the whole data set again instead of taking the
    half archive as the example."""
    from imgclf_ray.spec import SourceSpec, StorageSpec
    from imgclf_ray.training import bundled

    real, storage = bundled.WRITERS["faces"], StorageSpec(endpoint_url=moto_server)

    def half_then_fail(uri, storage):
        s3.pipe_file("archive/faces/face/face-000.png", b"")  # (one image of 200 written)
        raise KeyboardInterrupt  # (as Ctrl-C would)

    monkeypatch.setitem(bundled.WRITERS, "faces", half_then_fail)
    source = SourceSpec(uri="s3://archive/faces")
    with pytest.raises(KeyboardInterrupt):
        bundled.ensure_example_archive("faces", source, storage)
    monkeypatch.setitem(bundled.WRITERS, "faces", real)
    assert bundled.ensure_example_archive("faces", source, storage) == 200
    assert len(s3.find("archive/faces")) == 200  # (the marker gone; the half image written whole)
    assert bundled.ensure_example_archive("faces", source, storage) == 0
    assert len(list_archive(source, storage)) == 200
