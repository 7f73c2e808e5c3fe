"""Every tool people read Parquet with sees each committed image once, with no options: a sink
holding two dated incremental nights (curation, clustering, a clusterer artifact, the state store)
and a "nothing new" night, read with pandas, pyarrow, Ray, polars, DuckDB and Hugging Face
datasets — and through the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import imgclf_ray
from tests.corpus import digit_images, png_bytes

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _archive(root: Path, start: int, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, img in digit_images(start + n)[start:]:
        (root / f"{name}.png").write_bytes(png_bytes(img))


@pytest.fixture(scope="module")
def sink(ray_session, tmp_path_factory, tiny_model):
    """Night 1: 12 images; night 2: 6 new ones; night 3: nothing new (an empty run record)."""
    root = tmp_path_factory.mktemp("readers")
    archive, out = root / "archive", root / "out"
    job = {"name": "nightly", "source": {"uri": str(archive)}, "model": {"uri": tiny_model, "topk": 3},
           "sink": {"uri": str(out), "layout": "date={date}/{run_id}"}, "incremental": {},
           "cluster": {"algorithm": "kmeans", "params": {"n_clusters": 2}},
           "curate": {"checks": ["dark", "duplicate", "outlier"]},
           "resources": {"decode_batch_size": 8}, "run": {"executor": "local"}}  # the readers are the point
    _archive(archive, 0, 12)
    first = imgclf_ray.run(job, {"sink.run_date": "2026-11-28"}, run_id="n-2026-11-28")
    _archive(archive, 12, 6)
    second = imgclf_ray.run(job, {"sink.run_date": "2026-11-29"}, run_id="n-2026-11-29")
    third = imgclf_ray.run(job, {"sink.run_date": "2026-11-30"}, run_id="n-2026-11-30")
    assert (first.rows, second.rows, third.rows) == (12, 6, 0) and third.nothing_new
    assert list((out / "_state").rglob("*")) and list((out / "_clusterers").rglob("*.json"))
    return out


EXPECTED = 18  # one row per (run, image): 12 + 6 + 0


def _once(uris) -> None:
    uris = list(uris)
    assert len(uris) == EXPECTED and len(set(uris)) == EXPECTED


def test_folder_readers_see_a_run_and_the_sink(sink):
    import pandas as pd
    import pyarrow.dataset as pads

    run = next(sink.glob("date=2026-11-28/n-2026-11-28"))
    assert len(pd.read_parquet(run)) == 12 and pq.read_table(run).num_rows == 12
    _once(pd.read_parquet(sink)["uri"])
    _once(pads.dataset(sink, format="parquet").to_table().column("uri").to_pylist())
    _once(pq.read_table(sink).column("uri").to_pylist())


def test_ray_reads_the_sink(sink):
    import ray.data

    _once(r["uri"] for r in ray.data.read_parquet(str(sink)).select_columns(["uri"]).take_all())


def test_glob_readers_see_committed_files_only(sink):
    import duckdb
    import polars as pl

    glob = f"{sink}/**/*.parquet"
    _once(pl.read_parquet(glob)["uri"].to_list())
    _once(r[0] for r in duckdb.sql(f"SELECT uri FROM read_parquet('{glob}')").fetchall())


def test_hugging_face_datasets_loads_the_sink(sink, tmp_path):
    import datasets

    ds = datasets.load_dataset("parquet", data_files=f"{sink}/**/*.parquet", split="train",
                               cache_dir=str(tmp_path / "hf"))
    _once(ds["uri"])
    row = ds[0]
    assert isinstance(row["class_scores"], list) and row["dicom"] is None


def test_each_file_carries_the_run_facts(sink):
    from imgclf_ray.io.schema import SCHEMA_VERSION

    for path in sink.rglob("part-*.parquet"):
        meta = pq.read_schema(path).metadata
        assert meta[b"imgclf.schema_version"] == str(SCHEMA_VERSION).encode()
        assert meta[b"imgclf.run_id"].decode() in str(path)
        assert json.loads(meta[b"imgclf.labels"]) == [f"class{i}" for i in range(10)]
        assert meta[b"imgclf.model_id"].startswith(b"sha256:")


def test_python_api_reads_runs(sink):
    # The latest night with images (night 3 had nothing new: an empty run record, read by its id).
    latest = imgclf_ray.read_run(str(sink))
    assert latest.num_rows == 6 and set(latest.column("run_id").to_pylist()) == {"n-2026-11-29"}
    empty = imgclf_ray.read_run(str(sink), "n-2026-11-30")
    assert empty.num_rows == 0 and "class_scores" in empty.schema.names
    night = imgclf_ray.read_run(str(sink), "n-2026-11-29")
    assert night.num_rows == 6 and set(night.column("run_id").to_pylist()) == {"n-2026-11-29"}
    assert imgclf_ray.read_run_dataset(str(sink), "n-2026-11-28").count() == 12


def test_python_api_refuses_a_bad_spec_before_ray(tmp_path):
    from imgclf_ray.errors import SpecError

    with pytest.raises(SpecError, match="model.topk"):
        imgclf_ray.run({"name": "j", "source": {"uri": str(tmp_path)}, "sink": {"uri": str(tmp_path / "o")},
                        "model": {"uri": "m"}}, {"model.topk": 0})
    with pytest.raises(SpecError, match="run_id"):
        imgclf_ray.run({"name": "j", "source": {"uri": str(tmp_path)}, "sink": {"uri": str(tmp_path / "o")},
                        "model": {"uri": "m"}}, run_id="../escape")


# -- sink.format: delta: the same nights as one Delta table -----------------------------------------

@pytest.fixture(scope="module")
def delta_sink(ray_session, tmp_path_factory, tiny_model):
    """Night 1: 12 images; night 2: 6 new ones; night 3: nothing new — into a Delta table."""
    root = tmp_path_factory.mktemp("delta")
    archive, out = root / "archive", root / "out"
    job = {"name": "nightly", "source": {"uri": str(archive)}, "model": {"uri": tiny_model},
           "sink": {"uri": str(out), "format": "delta"}, "incremental": {},
           "cluster": {"algorithm": "kmeans", "params": {"n_clusters": 2}}, "resources": {"decode_batch_size": 8},
           "run": {"executor": "local"}}
    _archive(archive, 0, 12)
    imgclf_ray.run(job, run_id="n1")
    _archive(archive, 12, 6)
    assert imgclf_ray.run(job, run_id="n2").rows == 6
    assert imgclf_ray.run(job, run_id="n3").nothing_new
    return out


def test_delta_readers_see_each_image_once(delta_sink):
    import polars as pl
    import ray.data
    from deltalake import DeltaTable

    table = DeltaTable(str(delta_sink))
    assert [h.get("imgclf.run_id") for h in table.history()] == ["n3", "n2", "n1"]  # one commit a night
    _once(table.to_pandas(columns=["uri"])["uri"])
    _once(pl.read_delta(str(delta_sink))["uri"].to_list())
    _once(r["uri"] for r in ray.data.read_delta(str(delta_sink), columns=["uri"]).take_all())
    night = pl.read_delta(str(delta_sink)).filter(pl.col("run_id") == "n2")
    assert night.height == 6 and night["class_scores"].dtype == pl.List(pl.Float32)


def test_delta_runs_read_through_imgclf(delta_sink):
    from click.testing import CliRunner

    from imgclf_ray.cli import main

    assert imgclf_ray.read_run(str(delta_sink), "n3").num_rows == 0  # night 3, empty
    assert imgclf_ray.read_run(str(delta_sink)).column("run_id").unique().to_pylist() == ["n2"]  # the latest with images
    night = imgclf_ray.read_run(str(delta_sink), "n1")
    assert night.num_rows == 12 and night.schema.names[:2] == ["image_id", "uri"]
    assert set(night.column("run_id").to_pylist()) == {"n1"}
    assert imgclf_ray.read_run_dataset(str(delta_sink), "n2").count() == 6
    runs = CliRunner().invoke(main, ["runs", str(delta_sink), "--json"])
    assert [r["run_id"] for r in json.loads(runs.output)] == ["n1", "n2", "n3"], runs.output
    exported = CliRunner().invoke(main, ["export", str(delta_sink), "--run", "n2", "--to", "jsonl"])
    assert exported.exit_code == 0 and len(exported.output.splitlines()) == 6
    # The run's rows as deltalake itself reads them (the reference; imgclf reads the run's files by path).
    from deltalake import DeltaTable

    theirs = DeltaTable(str(delta_sink), version=1).to_pandas(filters=[("run_id", "=", "n2")])
    ours = imgclf_ray.read_run(str(delta_sink), "n2").to_pandas()
    assert sorted(ours.columns) == sorted(theirs.columns)
    key = ["uri", "label", "score", "cluster", "status"]
    assert sorted(map(tuple, ours[key].values.tolist())) == sorted(map(tuple, theirs[key].values.tolist()))


def test_reading_a_delta_run_does_not_go_through_deltalakes_arrow_filesystem(delta_sink, monkeypatch):
    """Arrow reading through deltalake's own filesystem (``to_pyarrow_dataset``, also under
    ``to_pyarrow_table``) ended processes at exit with ``terminate called without an active
    exception`` (exit 134; 3 in 8 reading three nights of 1,797 images) after the rows were
    printed: a nightly export failed its cron job. imgclf reads a run's files by path; deltalake's
    dataset made to fail here, every imgclf reader still reads."""
    from click.testing import CliRunner
    from deltalake import DeltaTable

    from imgclf_ray.cli import main

    def refused(*args, **kwargs):
        raise AssertionError("deltalake's Arrow dataset")

    before = imgclf_ray.read_run(str(delta_sink), "n1")
    monkeypatch.setattr(DeltaTable, "to_pyarrow_dataset", refused)
    assert imgclf_ray.read_run(str(delta_sink), "n1").equals(before) and before.num_rows == 12
    exported = CliRunner().invoke(main, ["export", str(delta_sink), "--run", "n2", "--to", "csv"])
    assert exported.exit_code == 0 and len(exported.output.splitlines()) == 7, exported.output[-2000:]


def test_a_delta_table_another_engine_upgraded_is_read_by_deltalakes_own_reader(delta_sink, tmp_path, monkeypatch):
    """Deletion vectors or column mapping (another engine's writes: a Spark DELETE) make a table
    that its files alone are not: at a table version whose protocol asks readers for more than
    version 1, imgclf reads through deltalake's reader, as it did before, not the files by path —
    which here refuses deletion vectors, one line, rather than rows coming back that a DELETE took
    away. (A run read at the version its manifest records sees no later write: read by path.)"""
    import shutil

    from deltalake import DeltaTable, TableFeatures

    from imgclf_ray.io.delta import read_rows

    copy = tmp_path / "sink"
    shutil.copytree(delta_sink, copy)
    by_path = read_rows(str(copy), "n2", None)
    DeltaTable(str(copy)).alter.add_feature(TableFeatures.DeletionVectors, allow_protocol_versions_increase=True)
    assert DeltaTable(str(copy)).protocol().min_reader_version > 1
    calls, real = [], DeltaTable.to_pyarrow_dataset
    monkeypatch.setattr(DeltaTable, "to_pyarrow_dataset", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    assert imgclf_ray.read_run(str(copy), "n2").sort_by("uri").equals(by_path.sort_by("uri")) and not calls
    from imgclf_ray.errors import UserError

    with pytest.raises(UserError, match="the Delta table at version 3 cannot be read here: it asks readers for version 3 "
                                        r"\(features: deletionVectors; DeltaProtocolError"):
        read_rows(str(copy), "n2", None)  # (deltalake reads no deletion vectors yet: refused, not rows come back)
    assert calls
