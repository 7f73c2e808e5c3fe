"""Sinks written before the ``Sink`` object (tests/fixtures/sink-2026-12: three incremental nights,
the third with nothing new, written by main as of 2026-12-06 with ``tests/support/make_sink_fixture.py``;
a Parquet sink with a dated layout and a Delta table) still list, read, export — and take new
nights and replacements from today's code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import imgclf_ray
from imgclf_ray.cli import main
from imgclf_ray.io.sink import Sink
from imgclf_ray.runner.job import run_job
from imgclf_ray.spec import load_spec
from tests.conftest import REPO
from tests.support.jobs import digits_subset

FIXTURE = REPO / "tests" / "fixtures" / "sink-2026-12"


@pytest.fixture(params=["parquet", "delta"])
def old_sink(request, tmp_path) -> tuple[str, Path]:
    where = tmp_path / request.param
    shutil.copytree(FIXTURE / request.param, where)
    return request.param, where


def _ids_in_files(where: Path) -> list[str]:
    """Every image id in the data files, read without imgclf (the reference)."""
    files = [p for p in where.rglob("*.parquet") if not any(part.startswith("_") for part in p.parts[-3:-1])]
    return sorted(i for f in files for i in pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist())


def test_an_old_sink_lists_reads_and_exports(old_sink):
    fmt, where = old_sink
    runs = Sink(str(where), format=fmt).list_runs()
    assert [r["run_id"] for r in runs] == ["night-1", "night-2", "night-3"]
    assert [r["rows"] for r in runs] == [6, 4, 0] and runs[2]["nothing_new"]
    rows = {n: imgclf_ray.read_run(str(where), n).column("image_id").to_pylist() for n in ("night-1", "night-2")}
    assert len(rows["night-1"]) == 6 and len(rows["night-2"]) == 4 and not set(rows["night-1"]) & set(rows["night-2"])
    if fmt == "parquet":
        assert sorted(rows["night-1"] + rows["night-2"]) == _ids_in_files(where)
    # The latest night with images, as a user reads "the sink".
    assert imgclf_ray.read_run(str(where)).column("image_id").to_pylist() == rows["night-2"]
    listed = CliRunner().invoke(main, ["runs", str(where)])
    assert listed.exit_code == 0 and "night-3" in listed.output, listed.output
    exported = CliRunner().invoke(main, ["export", str(where), "--run", "night-1", "--to", "jsonl"])
    assert exported.exit_code == 0, exported.output
    assert sorted(json.loads(line)["image_id"] for line in exported.output.splitlines()) == sorted(rows["night-1"])


@pytest.mark.parametrize("executor", ["local"])
def test_an_old_sink_takes_a_new_night_and_a_replacement(old_sink, executor, tiny_model, digits_archive, tmp_path):
    fmt, where = old_sink
    archive = tmp_path / "archive"
    digits_subset(digits_archive, archive, 300, start=1)
    n = sum(1 for _ in archive.rglob("*.png"))
    job = tmp_path / "job.yaml"
    layout = ", layout: 'date={date}/{run_id}'" if fmt == "parquet" else ""
    job.write_text(f"name: fixture\nsource: {{uri: {archive}}}\nmodel: {{uri: {tiny_model}}}\n"
                   f"sink: {{uri: {where}, format: {fmt}{layout}}}\nincremental: {{}}\nrun: {{executor: {executor}}}\n")
    before = imgclf_ray.read_run(str(where), "night-2").column("image_id").to_pylist()
    assert run_job(load_spec(job, ["sink.run_date=2026-12-04"]), "night-4", quiet=True).rows == n
    # night-2 again (the README's replace): its rows are this archive's now, its old files gone.
    assert run_job(load_spec(job, ["sink.run_date=2026-12-02", "incremental=null"]), "night-2", quiet=True).rows == n
    runs = Sink(str(where), format=fmt).list_runs()
    assert [r["run_id"] for r in runs] == ["night-1", "night-3", "night-4", "night-2"]
    again = imgclf_ray.read_run(str(where), "night-2").column("image_id").to_pylist()
    assert len(again) == n and not set(again) & set(before)
    if fmt == "parquet":
        assert len(_ids_in_files(where)) == 6 + n + n  # night-1, night-4, the new night-2: nothing left over
        assert not (where / "_staging").exists()
