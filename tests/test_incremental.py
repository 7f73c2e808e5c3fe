"""Operating at scale: nightly incremental runs against a state store, runs once per date, and a
run resumed after its driver was killed. Real local Ray; the killed driver is a real process tree."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgclf_ray.cli import main
from imgclf_ray.io import state
from imgclf_ray.io.sink import committed_files
from imgclf_ray.runner.job import run_job
from imgclf_ray.spec import parse_spec
from tests.corpus import digit_images, png_bytes
from tests.support.jobs import read_run

pytestmark = pytest.mark.ray


def _archive(root: Path, start: int, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, img in digit_images(start + n)[start:]:
        (root / f"{name}.png").write_bytes(png_bytes(img))


def _spec(root: Path, out: Path, model: str, **incremental):
    return parse_spec({"name": "nightly", "source": {"uri": str(root)}, "model": {"uri": model},
                       "sink": {"uri": str(out)}, "incremental": incremental,
                       # The selection is the executors' one code: these nights run locally (the
                       # partitioned and the inventory nights below run on Ray).
                       "resources": {"decode_batch_size": 8}, "run": {"executor": "local"}}, "<test>")


def _uris(out: Path, run_id: str) -> set[str]:
    return {Path(r["uri"]).name for r in read_run(str(out), run_id)}


def test_nightly_runs_process_only_new_and_changed_images(ray_session, tiny_model, tmp_path):
    root, out = tmp_path / "archive", tmp_path / "out"
    _archive(root, 0, 10)
    spec = _spec(root, out, tiny_model)
    assert run_job(spec, "nightly-2026-11-27", quiet=True).rows == 10

    # Nothing new: an empty run record is committed (schema only), so the night shows.
    empty = run_job(spec, "nightly-2026-11-28", quiet=True)
    assert empty.rows == 0 and empty.nothing_new.startswith("all 10 listed images were processed")
    assert read_run(str(out), "nightly-2026-11-28") == []
    summary = json.loads((out / "nightly-2026-11-28" / "_run_summary.json").read_text())
    assert summary["rows"] == 0 and summary["nothing_new"] == empty.nothing_new

    _archive(root, 10, 5)  # 5 added ...
    changed = sorted(root.glob("*.png"))[0]
    changed.write_bytes(png_bytes(digit_images(40)[39][1]))  # ... and 1 modified
    os.utime(changed, (time.time() + 60, time.time() + 60))
    result = run_job(spec, "nightly-2026-11-29", quiet=True)
    assert result.rows == 6
    assert _uris(out, "nightly-2026-11-29") == {f"digit-{i:02d}-{i % 10}.png" for i in range(10, 15)} | {changed.name}

    # A new model reprocesses everything, unless told otherwise.
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    card = (other / "model_card.json").read_text().replace('"created_at": "', '"created_at": "x')
    (other / "model_card.json").write_text(card)
    keep = _spec(root, out, str(other), on_new_model="new_only")
    kept = run_job(keep, "nightly-2026-11-30", quiet=True)
    assert kept.nothing_new and kept.summary()["incremental"]["other_model"] == 15
    relabelled = run_job(_spec(root, out, str(other)), "nightly-2026-11-30", quiet=True)
    assert relabelled.rows == 15
    assert relabelled.summary()["incremental"] == {"new": 0, "changed": 0, "model_changed": 15, "other_model": 0,
                                                   "unchanged": 0, "on_new_model": "relabel"}
    # the older spelling of the choice
    assert _spec(root, out, str(other), reprocess_on_model_change=False).incremental.on_new_model == "new_only"


def test_state_of_an_uncommitted_run_does_not_count(ray_session, tiny_model, tmp_path):
    root, out = tmp_path / "archive", tmp_path / "out"
    _archive(root, 0, 4)
    spec = _spec(root, out, tiny_model)
    run_job(spec, "r1", quiet=True)
    store = out / "_state" / "nightly"
    (record,) = store.glob("processed-r1~*.state")
    # A driver killed between recording the state and committing leaves files like these: one of
    # a run that never committed, one of another attempt of a committed run id.
    shutil.copy(record, store / "processed-r0~0123456789ab.state")
    shutil.copy(record, store / "processed-r1~0123456789ab.state")
    (store / "processed-r1~0123456789ab.state").write_bytes(b"not even parquet")
    assert set(state.load(str(store), str(out), spec.storage)) == {f"file://{p}" for p in sorted(root.glob("*.png"))}
    shutil.rmtree(out / "r1")  # the run's output is gone: its state no longer counts either
    assert state.load(str(store), str(out), spec.storage) == {}
    assert run_job(spec, "r2", quiet=True).rows == 4


def test_a_date_runs_once(ray_session, tiny_model, tmp_path):
    root, out = tmp_path / "archive", tmp_path / "out"
    _archive(root, 0, 3)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: nightly\nsource: {{uri: {root}}}\nmodel: {{uri: {tiny_model}}}\nsink: {{uri: {out}}}\n"
                   "run: {executor: ray}\n")
    first = CliRunner().invoke(main, ["run", str(job), "--date", "2026-11-29", "-q"])
    assert first.exit_code == 0 and "run nightly-2026-11-29: 3 images" in first.output
    stamp = (out / "nightly-2026-11-29" / "_SUCCESS").stat().st_mtime_ns
    again = CliRunner().invoke(main, ["run", str(job), "--date", "2026-11-29", "-q"])
    assert again.exit_code == 0 and "already committed" in again.output and "error" not in again.output
    assert (out / "nightly-2026-11-29" / "_SUCCESS").stat().st_mtime_ns == stamp  # untouched
    bad = CliRunner().invoke(main, ["run", str(job), "--date", "29/11/2026"])
    assert bad.exit_code == 2 and "expected YYYY-MM-DD" in bad.output


def test_runs_partitioned_by_date_are_found_by_every_reader(ray_session, tiny_model, tmp_path):
    """sink.layout 'date={date}/{run_id}': each run under its date's partition, committed with
    its manifest; once-per-date, the incremental state, `imgclf runs` and the report find it; a
    Hive-partitioned dataset over the sink prunes by date."""
    import pyarrow.dataset as pads

    root, out = tmp_path / "archive", tmp_path / "out"
    _archive(root, 0, 3)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: nightly\nsource: {{uri: {root}}}\nmodel: {{uri: {tiny_model}}}\n"
                   f"sink: {{uri: {out}, layout: 'date={{date}}/{{run_id}}'}}\nincremental: {{}}\nrun: {{executor: ray}}\n")
    first = CliRunner().invoke(main, ["run", str(job), "--date", "2026-11-28", "-q"])
    assert first.exit_code == 0, first.output
    folder = out / "date=2026-11-28" / "nightly-2026-11-28"
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert (folder / "_SUCCESS").exists() and manifest["run_date"] == "2026-11-28"
    assert manifest["run_path"] == "date=2026-11-28/nightly-2026-11-28" and manifest["rows"] == 3
    again = CliRunner().invoke(main, ["run", str(job), "--date", "2026-11-28", "-q"])
    assert again.exit_code == 0 and "already committed" in again.output
    _archive(root, 3, 2)
    second = CliRunner().invoke(main, ["run", str(job), "--date", "2026-11-29", "-q"])
    assert second.exit_code == 0 and "run nightly-2026-11-29: 2 images" in second.output  # state found
    assert committed_files(str(out), "nightly-2026-11-29")
    listed = CliRunner().invoke(main, ["runs", str(out)])
    assert "nightly-2026-11-28" in listed.output and "nightly-2026-11-29" in listed.output
    report = CliRunner().invoke(main, ["report", str(out), "--run", "nightly-2026-11-28", "-o", str(tmp_path / "r.html")])
    assert report.exit_code == 0 and (tmp_path / "r.html").exists()
    page = (tmp_path / "r.html").read_text()  # which engine ran it, and the network's runtime
    assert "<td>executor</td><td>ray (run.executor: ray)</td>" in page
    assert "<td>runtime</td><td>torch (auto: 3 files, fewer than 1000)</td>" in page
    dataset = pads.dataset(str(out), format="parquet", partitioning="hive", exclude_invalid_files=True)
    assert dataset.to_table(filter=pads.field("date") == "2026-11-29").num_rows == 2
    assert dataset.count_rows() == 5
