"""source.extensions: any — extensionless DICOM series (PACS exports: IM0001, 1.2.840...) and other
files are listed as they are and read by their first bytes; what is no image is a 'skipped' row."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom.data
import pytest
from click.testing import CliRunner

from imgclf_ray.cli import main
from imgclf_ray.errors import SourceError
from imgclf_ray.io.listing import list_archive, skipped_counts
from imgclf_ray.spec import SourceSpec, parse_spec
from tests.corpus import jpeg_bytes

SERIES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"]


def _series(root: Path, sample_photo) -> Path:
    """A PACS-style folder: DICOMs named by UID or IMnnnn without extension, a JPEG without one, a
    text file, a PDF, and a README.txt that the extension filter would skip."""
    files = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    series = root / "series"
    series.mkdir(parents=True)
    for i, name in enumerate(SERIES):
        shutil.copy(files / name, series / (f"IM{i:04d}" if i % 2 else f"1.2.840.113619.2.55.3.{i}"))
    (series / "photo").write_bytes(jpeg_bytes(sample_photo))
    (series / "DICOMDIR-notes").write_text("exported by the PACS at 02:00\n")
    (series / "report").write_bytes(b"%PDF-1.7\n" + b"0" * 2000)
    return series


def test_extension_options_that_match_nothing_are_refused_with_the_option_to_use():
    for bad in ([""], [".*"], ["*"], [3], "dcm"):
        with pytest.raises(Exception, match="source.extensions: any"):
            parse_spec({"name": "t", "source": {"uri": "x", "extensions": bad}, "sink": {"uri": "y"},
                        "curate": {}}, "<test>")
    with pytest.raises(Exception, match="chosen by extension"):
        parse_spec({"name": "t", "source": {"uri": "x", "extensions": "any", "video": {}}, "sink": {"uri": "y"},
                    "curate": {}}, "<test>")


def test_listing_counts_what_the_filter_skips_and_globs_take_what_they_name(tmp_path, sample_photo):
    series = _series(tmp_path, sample_photo)
    with pytest.raises(SourceError, match="no files with extensions .* 7 other files were skipped .*any"):
        list_archive(SourceSpec(uri=str(series)))
    every = list_archive(SourceSpec(uri=str(series), extensions="any"))
    assert every.num_rows == 7 and skipped_counts(every) == {}
    (series / "scan.jpg").write_bytes(jpeg_bytes(sample_photo))
    some = list_archive(SourceSpec(uri=str(series)))
    assert some.num_rows == 1 and skipped_counts(some) == {"extension not in source.extensions": 7}
    # A glob or a URI naming one file takes what it names, whatever the extension filter says.
    assert list_archive(SourceSpec(uri=f"{series}/IM*")).num_rows == 2
    assert list_archive(SourceSpec(uri=f"{series}/IM0001")).num_rows == 1


@pytest.mark.ray
def test_an_extensionless_dicom_series_classifies_and_non_images_are_skipped(ray_session, tiny_model, tmp_path, sample_photo):
    import pyarrow.parquet as pq

    from imgclf_ray.io.sink import committed_files

    series = _series(tmp_path, sample_photo)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: pacs\nsource: {{uri: {series}, extensions: any}}\nmodel: {{uri: {tiny_model}}}\n"
                   f"sink: {{uri: {tmp_path / 'out'}}}\nrun: {{max_error_rate: 0, executor: ray}}\n")
    ran = CliRunner().invoke(main, ["run", str(job), "--run-id", "r", "-q"])
    assert ran.exit_code == 0, ran.output  # skipped rows are not errors: the budget of 0 holds
    assert "status : ok: 5, skipped: 2" in ran.output
    rows = {Path(r["uri"]).name: r for r in pq.read_table(
        [f.removeprefix("file://") for f in committed_files(str(tmp_path / "out"), "r")]).to_pylist()}
    assert {n for n, r in rows.items() if r["status"] == "ok"} == {
        "1.2.840.113619.2.55.3.0", "IM0001", "1.2.840.113619.2.55.3.2", "IM0003", "photo"}
    assert rows["IM0001"]["dicom"] is not None and rows["photo"]["label"] is not None
    for name in ("DICOMDIR-notes", "report"):
        assert rows[name]["status"] == "skipped" and rows[name]["error"].startswith("read: not an image")
        assert rows[name]["label"] is None


@pytest.mark.s3
def test_sniffing_on_s3_reads_by_content(s3, moto_server, sample_photo):
    import numpy as np

    from imgclf_ray.spec import DecodeSpec, StorageSpec
    from imgclf_ray.stages import LoadConfig, LoadStage

    files = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    s3.pipe("archive/pacs/IM0001", (files / "CT_small.dcm").read_bytes())
    s3.pipe("archive/pacs/photo", jpeg_bytes(sample_photo))
    s3.pipe("archive/pacs/big-log", b"not an image\n" * 400_000)
    storage = StorageSpec(endpoint_url=moto_server)
    source = SourceSpec(uri="s3://archive/pacs", extensions="any")
    manifest = list_archive(source, storage)
    out = LoadStage(LoadConfig(storage, DecodeSpec(), source=source))({"uri": np.asarray(manifest.column("uri").to_pylist(), dtype=object)})
    assert dict(zip([u.rsplit("/", 1)[-1] for u in manifest.column("uri").to_pylist()], out["status"].tolist())) == {
        "IM0001": "ok", "photo": "ok", "big-log": "skipped"}
