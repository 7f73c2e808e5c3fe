"""run.executor: local — the same stages and the same commit without Ray: the rows a Ray run
writes, the error rows of bad files, curation and clusters, and a decode worker killed (a driver
killed at each step: tests/test_guarantees.py, with both executors)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from imgclf_ray.errors import SpecError
from imgclf_ray.io import sink
from imgclf_ray.io.listing import list_archive
from imgclf_ray.runner.job import execute
from imgclf_ray.spec import parse_spec
from tests.support.jobs import IMGCLF, _archive, _driver, _nightly_job, _reap
from tests.support.jobs import make_spec


COMPARED = ("image_id", "uri", "frame", "status", "error", "width", "height", "label", "topk_labels",
            "cluster", "is_duplicate", "is_near_duplicate", "is_dark", "is_blurry")


def _rows(sink_uri: str, run_id: str) -> dict[str, dict]:
    t = sink.read_rows(sink.resolve_run(sink_uri, run_id))
    return {r["image_id"]: r for r in t.to_pylist()}


@pytest.mark.ray
@pytest.mark.slow
def test_a_local_run_writes_the_rows_a_ray_run_writes(ray_session, mixed_archive, tiny_model, tmp_path):
    """Bad files, curation (row and archive-wide checks) and a clusterer fitted on a sample: the
    same rows either way, scores equal to float rounding. Both predictors take two batches at once
    (resources.calls_per_actor, a GPU's default: Ray's threaded actor, the local executor's threads)."""
    extra = {"curate": {"checks": ["duplicate", "near_duplicate", "dark", "blurry"]},
             "cluster": {"algorithm": "kmeans", "params": {"n_clusters": 2}, "sample": 64},
             "resources": {"calls_per_actor": 2, "batch_size": 3}}
    runs, curation = {}, {}
    for executor in ("ray", "local"):
        spec = make_spec(str(mixed_archive), str(tmp_path / executor), tiny_model, run={"executor": executor},
                         **extra)
        result = execute(spec, list_archive(spec.source), "r")
        assert result.by_status.get("ok") and result.by_status.get("error")
        runs[executor], curation[executor] = _rows(spec.sink.uri, "r"), result.curation
    ray_rows, local_rows = runs["ray"], runs["local"]
    assert sorted(ray_rows) == sorted(local_rows)
    for image_id, a in ray_rows.items():
        b = local_rows[image_id]
        assert {c: a[c] for c in COMPARED} == {c: b[c] for c in COMPARED}, image_id
        if a["score"] is not None:
            np.testing.assert_allclose(a["class_scores"], b["class_scores"], atol=1e-5)
    assert curation["local"] and curation["local"] == curation["ray"]  # the archive-wide pass ran
    # One writer: the run's files are whole Parquet files, in the manifest's order.
    files = sink.committed_files(str(tmp_path / "local"), "r")
    assert len(files) == 1 and pq.read_metadata(files[0].removeprefix("file://")).num_rows == len(local_rows)
    listed = list_archive(spec.source).column("uri").to_pylist()
    written = pq.read_table(files[0].removeprefix("file://"), columns=["uri"]).column("uri").to_pylist()
    assert written == listed and len(listed) > 2 * 4  # more decoded batches than two at once, in order


@pytest.mark.slow
def test_a_decode_worker_killed_fails_the_run_with_one_line_and_commits_nothing(tiny_model, tmp_path):
    out = tmp_path / "out"
    _archive(tmp_path / "archive", 0, 6)
    job = _nightly_job(tmp_path, tiny_model, str(out), executor="local")
    proc = _driver(job, "n1", IMGCLF_KILL_AT="decode_worker")
    try:
        text = proc.communicate(timeout=300)[0].decode()
    finally:
        _reap(proc)
    assert proc.returncode == 1, text[-2000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "decode worker process died" in errors[0] and "Traceback" not in text
    assert not sink.list_runs(str(out)) and not (out / "_staging").exists() and not (out / "_locks").exists()
    rerun = subprocess.run([IMGCLF, "run", str(job), "--run-id", "n1", "-q"],
                           capture_output=True, env={k: v for k, v in os.environ.items() if k != "IMGCLF_KILL_AT"})
    assert rerun.returncode == 0, rerun.stdout.decode()[-2000:]
    assert [r["run_id"] for r in sink.list_runs(str(out))] == ["n1"]


@pytest.mark.parametrize("extra, key", [
    ({"run": {"executor": "local", "ray_address": "auto"}}, "run.ray_address"),
    ({"run": {"executor": "local"}, "source": {"uri": "s3://b/p", "inventory": "s3://inv/b/cfg/2026-01-01T01-00Z/manifest.json"}}, "source.inventory"),
])
def test_what_a_local_run_cannot_do_is_refused_before_it_starts(extra, key, tmp_path):
    data = {"name": "t", "source": {"uri": str(tmp_path)}, "model": {"uri": str(tmp_path)}, "sink": {"uri": str(tmp_path)}}
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        parse_spec(data, "<test>")


def test_the_local_writer_rolls_files_at_max_rows_and_keeps_the_order(tmp_path, monkeypatch):
    import fsspec
    import pyarrow as pa

    from imgclf_ray.runner import local

    monkeypatch.setattr(local, "ROW_GROUP_ROWS", 4)
    schema = pa.schema([pa.field("x", pa.int64())]).with_metadata({"imgclf.run_id": "r"})
    writer = local.StagedWriter(fsspec.filesystem("file"), str(tmp_path), schema, max_rows=10)
    for start in range(0, 23, 3):
        writer.write(pa.table({"x": list(range(start, min(start + 3, 23)))}, schema=schema))
    writer.close()
    files = sorted(tmp_path.iterdir())
    assert all(f.name.endswith(sink.STAGED_SUFFIX) for f in files)
    assert [pq.read_metadata(f).num_rows for f in files] == [10, 10, 3]
    first = pq.read_metadata(files[0])  # a row group once 4 rows are buffered (batches of 3)
    assert [first.row_group(i).num_rows for i in range(first.num_row_groups)] == [6, 4]
    assert [x for f in files for x in pq.read_table(f).column("x").to_pylist()] == list(range(23))
    assert pq.read_schema(files[0]).metadata == {b"imgclf.run_id": b"r"}


def test_a_worker_failure_that_does_not_unpickle_fails_the_pool_and_does_not_hang_it():
    """An exception raised in a decode worker comes back with its batch; one that pickles and does
    not unpickle (its arguments are not its constructor's) killed the thread receiving it, and the
    run waited for its batch for ever. It is a RuntimeError naming what could not be read."""
    import pyarrow as pa

    from imgclf_ray.runner.local import DecodePool
    from tests.support.stages import FailingStage

    got = []
    with pytest.raises(RuntimeError, match=r"^a decode worker's result could not be read \(TypeError"):
        with DecodePool(FailingStage(), 2) as pool:
            for out in pool.map(pa.table({"uri": ["a", "b", "c"]}), 1):
                got.extend(out["uri"].tolist())
    assert got == ["a"]


def test_decode_workers_start_deaf_to_a_group_s_sigint_and_sigterm():
    """The driver decides how a run stops (imgclf_ray.interrupts): its decode workers start with
    SIGINT and SIGTERM blocked. The first queue a process makes starts multiprocessing's resource
    tracker, which unblocks both in the thread that starts it: workers started after it died of a
    process group's SIGTERM (systemd's stop, Slurm's scancel). In a fresh process, as a run's driver."""
    code = ("import re, signal, pyarrow as pa\n"
            "from imgclf_ray.runner.local import DecodePool\n"
            "from tests.support.stages import EchoStage\n"
            "if __name__ == '__main__':\n"
            "    with DecodePool(EchoStage(), 2) as pool:\n"
            "        batches = pool.map(pa.table({'uri': ['a', 'b']}), 1)\n"
            "        for process, _, _ in pool.workers:\n"
            "            status = open(f'/proc/{process.pid}/status').read()\n"
            "            print(int(re.search(r'SigBlk:\\s*([0-9a-f]+)', status).group(1), 16))\n"
            "        list(batches)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    masks = [int(line) for line in done.stdout.split()]
    held = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    assert len(masks) == 2 and all(mask & held == held for mask in masks), [hex(m) for m in masks]


def test_the_local_writer_closes_its_open_file_when_the_run_fails(tmp_path):
    """A failure mid-write: the open staged file is closed before the run discards the staging
    folder (an S3 upload left open would complete whenever the handle is collected, after it)."""
    import fsspec
    import pyarrow as pa

    from imgclf_ray.runner import local

    schema = pa.schema([pa.field("x", pa.int64())])
    with pytest.raises(RuntimeError, match="decode worker died"):
        with local.StagedWriter(fsspec.filesystem("file"), str(tmp_path), schema, max_rows=10_000) as writer:
            writer.write(pa.table({"x": list(range(5000))}, schema=schema))  # a row group: the file is open
            handle = writer.handle
            assert handle is not None and not handle.closed
            raise RuntimeError("decode worker died")
    assert handle.closed and writer.handle is None and writer.writer is None


def test_a_quiet_run_prints_only_its_own_lines_and_libraries_go_to_its_log(tiny_model, tmp_path):
    """Under -q (cron mails what is printed), what C libraries print while decoding (libtiff here:
    a TIFF claiming WebP compression) goes to the run's log file, not the terminal; the row has
    the cause."""
    import io
    import re
    import struct

    from PIL import Image

    _archive(tmp_path / "archive", 0, 2)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buf, "TIFF", compression="tiff_adobe_deflate")
    data = bytearray(buf.getvalue())
    struct.pack_into("<H", data, data.index(b"\x03\x01\x03\x00\x01\x00\x00\x00") + 8, 50001)  # Compression: WebP
    (tmp_path / "archive" / "webp-in-tiff.tif").write_bytes(bytes(data))
    job = tmp_path / "job.yaml"
    job.write_text(f"name: quiet\nsource: {{uri: {tmp_path / 'archive'}}}\nmodel: {{uri: {tiny_model}}}\n"
                   f"sink: {{uri: {tmp_path / 'out'}}}\nrun: {{executor: local}}\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ran = subprocess.run([IMGCLF, "run", str(job), "--run-id", "q", "-q"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "WEBP" not in ran.stdout + ran.stderr and "Warning" not in ran.stderr, ran.stderr
    log = re.search(r"^  log    : (\S+)$", ran.stdout, re.M).group(1)
    assert "WEBP compression support is not configured" in open(log).read()
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in pq.read_table(sink.committed_files(str(tmp_path / "out"), "q")[0]
                                                                   .removeprefix("file://")).to_pylist()}
    assert rows["webp-in-tiff.tif"]["status"] == "error" and rows["webp-in-tiff.tif"]["error"].startswith("decode:")


def test_predictors_take_batches_at_once_dealt_in_turn_and_written_in_order():
    """The local executor's predictors (one per GPU, plan.calls_per_actor batches each at once):
    two calls of one predictor are inside it together (a barrier only they can pass), the batches
    go to the predictors in turn, the rows are written in the archive's order; a failing batch
    fails the run and the batches not started are never predicted."""
    import threading

    import pyarrow as pa

    from imgclf_ray.runner.local import _predict_all

    class Fake:
        def __init__(self, name: str, together: threading.Barrier):
            self.name, self.together, self.seen = name, together, []

        def __call__(self, batch):
            self.seen.append(int(batch["status"][0]))
            if len(self.seen) <= self.together.parties:  # its first calls: broken (a failure) unless all are inside
                self.together.wait(timeout=60)
            if batch["status"][0] == 13:
                raise RuntimeError("batch 13")
            return pa.table({"i": batch["status"]})

    batches = [{"status": np.array([k])} for k in range(12)]
    a, b = Fake("a", threading.Barrier(2)), Fake("b", threading.Barrier(2))
    written: list = []
    _predict_all(lambda t: written.extend(t.column("i").to_pylist()), [a, b], 2, iter(batches), 8)
    assert written == list(range(12))
    assert sorted(a.seen) == [0, 2, 4, 6, 8, 10] and sorted(b.seen) == [1, 3, 5, 7, 9, 11]
    failing = Fake("c", threading.Barrier(1))
    with pytest.raises(RuntimeError, match="batch 13"):
        _predict_all(lambda t: None, [failing], 2, iter([{"status": np.array([k])} for k in range(12, 40)]), 8)
    assert max(failing.seen) < 20  # the window stops at the failure
