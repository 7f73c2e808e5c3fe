"""Archive, model and output on S3 (a moto server on 127.0.0.1), through the real pipeline."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as pads
import pytest

from imgclf_ray.io.listing import list_archive
from imgclf_ray.io.sink import committed_files
from imgclf_ray.pipeline import execute
from tests.corpus import bad_files, good_files
from tests.test_pipeline import make_spec

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
