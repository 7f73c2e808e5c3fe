"""The README's "Guarantees", each proved by injecting the fault: hostile identifiers for every
command, replaced runs next to files that are not theirs, drivers killed at each step boundary,
two real attempts of one run id at once (local and S3), a glob reader polling during a replace, a
scripted model, crafted DICOMs, frame / page / member / YAML bombs, and the failures a user meets."""

from __future__ import annotations

import base64
import glob
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from imgclf_ray.cli import main
from imgclf_ray.errors import UserError
from imgclf_ray.io import sink
from imgclf_ray.io.lock import RunLock, RunLocked
from imgclf_ray.spec import DecodeSpec, SourceSpec, StorageSpec, load_spec
from tests.corpus import png_bytes, png_header_only
from tests.support.jobs import _archive, _driver, _nightly_job, _reap
from tests.support.hostile import dicom_variants, find_markers, image_variants, marked_dicom, marked_images

NAME, PID, BIRTH = "DOE^JANE^SECRET", "PID-778899", "19580423"


def one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _job(tmp_path: Path, model: str = "/nonexistent/model", **extra) -> Path:
    job = tmp_path / "job.yaml"
    body = {"name": "g", "source": {"uri": str(tmp_path / "archive")}, "model": {"uri": model},
            "sink": {"uri": str(tmp_path / "out")}, "run": {"executor": "ray"}, **extra}
    job.write_text(json.dumps(body))
    return job


# -- 1. identifiers: plain path segments, for every command -----------------------------------

@pytest.mark.parametrize("args", [
    ["run", "{job}", "--run-id", "../../somewhere"],
    ["run", "{job}", "--run-id", "date=2026-01-01"],
    ["run", "{job}", "--run-id", "ts #1"],
    ["curate", "{job}", "--run-id", "_state"],
    ["evaluate", "{job}", "--run-id", "a/b"],
    ["submit", "{job}", "--run-id", "../../x"],
    ["status", "../x"],
    ["logs", "/etc"],
    ["stop", ".."],
    ["report", "{out}", "--run", "../x"],
])
def test_hostile_identifiers_are_refused_before_anything_starts(args, tmp_path):
    job = _job(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(main, [a.format(job=job, out=tmp_path / "out") for a in args])
    line = one_error_line(result, 2)
    assert "is not a plain name" in line or "empty" in line
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing deleted


def test_run_ids_and_dates_from_the_command_line_are_strings_never_yaml(tmp_path):
    job = _job(tmp_path)
    for value in ("2026-11-29", "null", "1e3", "true", "0x10"):
        spec = load_spec(job, [], values={"sink.run_id": value})
        assert spec.sink.run_id == value
    assert str(load_spec(job, [], values={"sink.run_date": "2026-11-29"}).sink.run_date) == "2026-11-29"
    bad = CliRunner().invoke(main, ["run", str(job), "--date", "2026-1-1"])
    assert "expected YYYY-MM-DD" in one_error_line(bad, 2)


def test_hostile_manifests_and_tree_cards_are_refused(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from imgclf_ray.models.hierarchy import TreeNode

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    (out / "evil").mkdir(parents=True)
    (out / "evil" / "_SUCCESS").write_bytes(b"")
    (out / "evil" / "_manifest.json").write_text(json.dumps({"run_id": "../../evil", "files": []}))
    line = one_error_line(CliRunner().invoke(main, ["report", str(out / "evil")]), 1)
    assert "not an imgclf manifest" in line and not list(tmp_path.rglob("*.html"))
    (out / "evil" / "_manifest.json").write_text(json.dumps({"run_id": "evil", "files": [{"path": "../../../etc/passwd"}]}))
    listed = CliRunner().invoke(main, ["runs", str(out)])  # listed as damaged, never read (docs/nightly.md)
    assert listed.exit_code == 0 and "evil" in listed.output and "DAMAGED" in listed.output
    assert "it was not written by imgclf" in listed.output
    assert "it was not written by imgclf" in one_error_line(CliRunner().invoke(main, ["report", str(out)]), 1)
    with pytest.raises(ValidationError, match="must stay inside the artifact folder"):
        TreeNode(model="../other-model")


# -- 2. delete only what you wrote ----------------------------------------------------------------

def _stage(sink_uri: str, run_id: str, ids: list[str], run_path: str | None = None, files: int = 1,
           format: str = "parquet") -> sink.Staging:
    """An attempt with its staged files written as the pipeline writes them (image_id and run_id)."""
    staging = sink.Staging.new(sink_uri, run_id, run_path=run_path, format=format)
    os.makedirs(staging.uri, exist_ok=True)
    for i, chunk in enumerate(np.array_split(np.asarray(ids, dtype=object), files)):
        pq.write_table(pa.table({"image_id": list(chunk), "run_id": [run_id] * len(chunk)}),
                       f"{staging.uri}/f{i}{sink.STAGED_SUFFIX}")
    return staging


def _commit(sink_uri: str, run_id: str, ids: list[str], run_path: str | None = None, files: int = 1,
            format: str = "parquet") -> dict:
    staging = _stage(sink_uri, run_id, ids, run_path, files, format)
    with RunLock(sink_uri, run_id, staging.attempt):
        return sink.commit(staging, {"job": "g"}, {sink.SUMMARY_FILE: b"{}"})


def _visible_ids(root: Path) -> list[str]:
    files = glob.glob(str(root / "**" / "*.parquet"), recursive=True)
    return sorted(pq.read_table(files).column("image_id").to_pylist()) if files else []


def test_replacing_a_run_deletes_exactly_the_files_its_manifest_listed(tmp_path):
    out = tmp_path / "out"
    ids = [f"img{i}" for i in range(6)]
    _commit(str(out), "r", ids, "date=2026-01-01/r", files=3)
    _commit(str(out), "other", ["o1", "o2"], "date=2026-01-01/other")
    (out / "date=2026-01-01" / "r" / "notes.txt").write_text("the user's own file")
    for keep in ("_state/g/processed-x~abc.state", "_clusterers/g/clusterer.json"):
        (out / keep).parent.mkdir(parents=True, exist_ok=True)
        (out / keep).write_text("not the run's")
    # The same run id on another date: it replaces the first, wherever that was.
    _commit(str(out), "r", ids, "date=2026-01-02/r", files=2)
    assert sink.committed_runs(str(out), run_id="r", every=True) == [f"file://{out}/date=2026-01-02/r"]
    assert sorted(os.listdir(out / "date=2026-01-01" / "r")) == ["notes.txt"]
    assert sorted(os.listdir(out / "date=2026-01-01" / "other"))[:2] == ["_SUCCESS", "_manifest.json"]
    assert (out / "_state/g/processed-x~abc.state").exists() and (out / "_clusterers/g/clusterer.json").exists()
    assert _visible_ids(out) == sorted(ids + ["o1", "o2"])  # every image once, for a plain glob
    # And again in the same folder: only the listed files go.
    _commit(str(out), "r", ids[:2], "date=2026-01-02/r")
    assert _visible_ids(out) == sorted(ids[:2] + ["o1", "o2"])


def _observed_at_every_commit_step(monkeypatch, look) -> list:
    """What ``look()`` sees at every step of the commits that follow (each file moved, the moves
    done, the manifest, _SUCCESS): a reader at each point where one could read, deterministically."""
    from imgclf_ray import faults

    seen: list = []
    monkeypatch.setattr(faults, "point", lambda name: seen.append(look()))
    return seen


def test_a_glob_reader_during_a_replace_always_sees_one_whole_set(tmp_path, monkeypatch):
    out = tmp_path / "out"
    ids = [f"img{i}" for i in range(60)]
    first = _commit(str(out), "r", ids, files=30)
    old = {f["path"] for f in first["files"]}
    seen = _observed_at_every_commit_step(monkeypatch, lambda: {
        os.path.basename(p) for p in glob.glob(str(out / "**" / "*.parquet"), recursive=True)})
    second = _commit(str(out), "r", ids, files=30)
    new = {f["path"] for f in second["files"]}
    assert len(seen) == 30 + 3 and not old & new  # each of the 30 files moved, moved, manifest, _SUCCESS
    # Never fewer than one whole set: the old files until the new manifest, then both, then the new.
    assert all(old <= s or new <= s for s in seen)
    assert {os.path.basename(p) for p in glob.glob(str(out / "**" / "*.parquet"), recursive=True)} == new


KILL_COMMIT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from tests.test_guarantees import _commit
    os.environ["IMGCLF_KILL_AT"] = {point!r}
    _commit({out!r}, "r", ["a", "b", "c", "d"], files=2)
""")


@pytest.mark.parametrize("point", ["commit_moved", "commit_manifest", "commit_success"])
def test_a_replace_killed_mid_commit_is_undone_or_finished_by_the_next_attempt(point, tmp_path):
    out = tmp_path / "out"
    _commit(str(out), "r", ["a", "b", "c", "d"], files=2)
    code = KILL_COMMIT.format(root=str(Path(__file__).parents[1]), point=point, out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with RunLock(str(out), "r", "next") as _:  # the dead attempt's lock went with its process
        sink.recover(str(out), "r")
    assert _visible_ids(out) == ["a", "b", "c", "d"]  # one whole set, whichever commit won
    assert sorted(f.rsplit("/", 1)[-1] for f in sink.committed_files(str(out), "r")) == \
        sorted(n for n in os.listdir(out / "r") if n.endswith(".parquet"))
    assert not (out / "_staging").exists()


def test_a_commit_killed_before_its_manifest_is_undone_by_the_next_run_of_any_run_id(tmp_path):
    out = tmp_path / "out"
    _commit(str(out), "other", ["o1"])
    code = KILL_COMMIT.format(root=str(Path(__file__).parents[1]), point="commit_moved", out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert _visible_ids(out) == ["a", "b", "c", "d", "o1"]  # r's files moved in, no manifest yet
    with RunLock(str(out), "next", "next") as _:  # what every run does once it holds its own lock
        sink.recover_others(str(out), skip="next")
    assert _visible_ids(out) == ["o1"] and not (out / "_staging").exists()


# -- 2b. the same for a Delta sink: one transaction per run, replacing only its run id's rows ---------

def _table_ids(out: Path, run_id: str | None = None) -> list[str]:
    """What a reader of the Delta table sees (deltalake, as Spark, DuckDB and polars would)."""
    import pyarrow.dataset as pads
    from deltalake import DeltaTable

    where = None if run_id is None else pads.field("run_id") == run_id
    return sorted(DeltaTable(str(out)).to_pyarrow_dataset().to_table(filter=where).column("image_id").to_pylist())


def test_a_delta_sink_replaces_exactly_its_run_ids_rows_and_deletes_no_file(tmp_path):
    out = tmp_path / "out"
    _commit(str(out), "r", ["a1", "a2", "a3"], format="delta")
    _commit(str(out), "other", ["o1"], format="delta")
    for keep in ("notes.txt", "_state/g/processed-x~abc.state", "_clusterers/g/clusterer.json"):
        (out / keep).parent.mkdir(parents=True, exist_ok=True)
        (out / keep).write_text("not the run's")
    files_before = {p for p in out.rglob("*.parquet")}
    second = _commit(str(out), "r", ["b1", "b2"], format="delta")
    assert _table_ids(out) == ["b1", "b2", "o1"] and _table_ids(out, "r") == ["b1", "b2"]
    assert files_before <= set(out.rglob("*.parquet"))  # Delta removes logically; VACUUM is the user's
    assert all((out / keep).exists() for keep in ("notes.txt", "_state/g/processed-x~abc.state",
                                                  "_clusterers/g/clusterer.json"))
    assert sorted(os.listdir(out / "_runs" / "r")) == ["_SUCCESS", "_manifest.json", "_run_summary.json"]
    assert second["format"] == "delta" and second["files"] == [] and second["rows"] == 2
    assert [r["run_id"] for r in sink.list_runs(str(out))] == ["other", "r"]
    assert sorted(sink.read_rows(sink.resolve_run(str(out), "r")).column("image_id").to_pylist()) == ["b1", "b2"]
    # One sink, one format: a Parquet run is refused on a Delta table and the other way round.
    with pytest.raises(UserError, match="is a Delta table"):
        sink.check_format(str(out), "parquet")
    _commit(str(tmp_path / "pq"), "p", ["x"])
    with pytest.raises(UserError, match="holds Parquet runs"):
        sink.check_format(str(tmp_path / "pq"), "delta")


def test_a_delta_reader_during_replaces_sees_one_whole_run(tmp_path, monkeypatch):
    out = tmp_path / "out"
    sets = [[f"v{v}-{i}" for i in range(20)] for v in range(4)]
    _commit(str(out), "r", sets[0], files=5, format="delta")
    _commit(str(out), "other", ["o1", "o2"], format="delta")
    seen = _observed_at_every_commit_step(monkeypatch, lambda: _table_ids(out))
    for ids in sets[1:]:
        _commit(str(out), "r", ids, files=5, format="delta")
    wholes = [sorted(ids + ["o1", "o2"]) for ids in sets]
    assert len(seen) == 3 * 3  # each replace: table written, manifest, _SUCCESS
    assert all(s in wholes for s in seen)  # never a mix, never the other run missing
    assert _table_ids(out) == wholes[-1]


@pytest.mark.parametrize("point", ["commit_moved", "commit_manifest", "commit_success"])
def test_a_delta_replace_killed_mid_commit_is_finished_by_the_next_attempt(point, tmp_path):
    out = tmp_path / "out"
    _commit(str(out), "r", ["a", "b"], format="delta")
    code = KILL_COMMIT.format(root=str(Path(__file__).parents[1]), point=point, out=str(out)).replace(
        "files=2)", "files=2, format='delta')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    # Its Delta commit happened (the kill came after it): the table already has the new rows;
    # the next attempt of any run id writes the run record that goes with them.
    assert _table_ids(out, "r") == ["a", "b", "c", "d"]
    with RunLock(str(out), "next", "next") as _:
        sink.recover_others(str(out), skip="next")
    manifest = sink.read_manifest(sink.resolve_run(str(out), "r"))
    assert manifest["rows"] == 4 and manifest["table_version"] == 1
    assert sorted(sink.read_rows(sink.resolve_run(str(out), "r")).column("image_id").to_pylist()) == ["a", "b", "c", "d"]
    assert not (out / "_staging").exists()


# -- 3. exactly once: drivers killed at each step, two attempts at once -----------------------------

@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("point, executor", [
    # Every step on one executor at least, the first on both: the commit after the write is the
    # same code under either (runner.job), only the process tree differs (a Ray driver costs ~25 s).
    ("after_write", "ray"),
    ("after_write", "local"), ("after_commit", "local"), ("after_state", "local"), ("commit_manifest", "local"),
])
def test_a_driver_killed_at_each_step_loses_and_duplicates_no_image(point, executor, ray_session, tiny_model,
                                                                    tmp_path):
    from imgclf_ray.runner.job import run_job

    out = tmp_path / "out"
    _archive(tmp_path / "archive", 0, 3)
    job = _nightly_job(tmp_path, tiny_model, str(out), executor=executor)
    spec = load_spec(job)
    assert run_job(spec, "n1", quiet=True).rows == 3
    _archive(tmp_path / "archive", 3, 2)
    proc = _driver(job, "n2", IMGCLF_KILL_AT=point)
    try:
        proc.wait(timeout=300)
    finally:
        _reap(proc)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-2000:]
    _archive(tmp_path / "archive", 5, 1)
    # The README's resume: the same run id again. Every image since n1 is in n2, once.
    assert run_job(spec, "n2", quiet=True).rows == 3
    assert run_job(spec, "n3", quiet=True).nothing_new  # committed as an empty run record
    uris = [Path(u).name for u in pq.read_table(glob.glob(f"{out}/**/*.parquet", recursive=True)).column("uri").to_pylist()]
    assert len(uris) == 6 and len(set(uris)) == 6
    assert not (out / "_staging").exists() and not (out / "_locks").exists()
    assert len(list((out / "_state" / "nightly").iterdir())) == 3  # one record per committed run


@pytest.mark.slow
@pytest.mark.ray
def test_a_delta_night_killed_after_its_table_commit_is_finished_by_the_next_night(ray_session, tiny_model, tmp_path):
    """The Delta-only case: the table has the night's rows, its run record is missing. The next
    night (another run id) writes that record first, so it neither loses nor redoes those images."""
    from imgclf_ray.runner.job import run_job

    out = tmp_path / "out"
    _archive(tmp_path / "archive", 0, 3)
    job = _nightly_job(tmp_path, tiny_model, str(out))
    job.write_text(job.read_text().replace(f"sink: {{uri: {out}}}", f"sink: {{uri: {out}, format: delta}}")
                   .replace("executor: ray", "executor: local"))  # the Delta commit is the executors' one code
    spec = load_spec(job)
    assert run_job(spec, "n1", quiet=True).rows == 3
    _archive(tmp_path / "archive", 3, 2)
    proc = _driver(job, "n2", IMGCLF_KILL_AT="commit_moved")
    try:
        proc.wait(timeout=300)
    finally:
        _reap(proc)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-2000:]
    assert [r["run_id"] for r in sink.list_runs(str(out))] == ["n1"]  # n2's rows are in, its record is not
    _archive(tmp_path / "archive", 5, 1)
    assert run_job(spec, "n3", quiet=True).rows == 1
    assert [r["run_id"] for r in sink.list_runs(str(out))] == ["n1", "n2", "n3"]
    from deltalake import DeltaTable

    uris = DeltaTable(str(out)).to_pyarrow_table(columns=["uri"]).column("uri").to_pylist()
    assert len(uris) == 6 and len(set(uris)) == 6
    assert not (out / "_staging").exists() and not (out / "_locks").exists()


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("where, executor", [("local", "local"), ("s3", "ray")])
def test_two_attempts_of_one_run_id_at_once_one_commits(where, executor, request, tiny_model, tmp_path):
    _archive(tmp_path / "archive", 0, 4)
    if where == "s3":
        s3, endpoint = request.getfixturevalue("s3"), request.getfixturevalue("moto_server")
        sink_uri, storage = "s3://output/nightly", f"storage: {{endpoint_url: '{endpoint}'}}\n"
        lock_exists = lambda: s3.exists("output/nightly/_locks/n1.lock")  # noqa: E731
    else:
        sink_uri, storage = str(tmp_path / "out"), ""
        lock_exists = (tmp_path / "out" / "_locks" / "n1.lock").exists
    job = _nightly_job(tmp_path, tiny_model, sink_uri, storage)
    job.write_text(job.read_text().replace("executor: ray", f"executor: {executor}"))
    flag = str(tmp_path / "block")  # the first holds its lock at a fault point until the second is done
    first = _driver(job, "n1", IMGCLF_BLOCK_AT="after_write", IMGCLF_BLOCK_FILE=flag)
    try:
        deadline = time.monotonic() + 240
        while not os.path.exists(flag + ".reached"):
            assert first.poll() is None and time.monotonic() < deadline, "the first never reached its commit"
            time.sleep(0.1)
        assert lock_exists()
        second = _driver(job, "n1")
        try:
            out2, _ = second.communicate(timeout=120)
        finally:
            _reap(second)
        Path(flag + ".release").touch()
        out1, _ = first.communicate(timeout=300)
    finally:
        _reap(first)
    assert first.returncode == 0, out1.decode()[-2000:]
    # Quiet (cron) output: our own lines only; Ray's warnings and worker lines went to a log file.
    text = out1.decode()
    assert "Token authentication" not in text and "(raylet)" not in text and "WARNING" not in text, text[-2000:]
    log = re.search(r"^  log    : (\S+imgclf-ray-\d+\.log)$", text, re.M)
    assert log and Path(log.group(1)).parent == Path(os.environ["IMGCLF_LOG_DIR"]), text[-2000:]  # (the session's)
    assert Path(log.group(1)).is_file()
    assert second.returncode == 1 and "being run by another attempt" in out2.decode(), out2.decode()[-2000:]
    files = sink.committed_files(sink_uri, "n1", StorageSpec(endpoint_url=endpoint) if where == "s3" else StorageSpec())
    assert len(files) == 1


def test_an_s3_lease_is_held_renewed_taken_over_only_when_abandoned(s3, moto_server):
    storage = StorageSpec(endpoint_url=moto_server)
    a = RunLock("s3://output/sink", "r", "attempt-a", storage).acquire()
    try:
        with pytest.raises(RunLocked, match="being run by another attempt \\(attempt-a"):
            RunLock("s3://output/sink", "r", "attempt-b", storage).acquire()
        a.verify()
        # attempt-a stops renewing (a hung or partitioned driver): after the expiry it is abandoned.
        holder = json.loads(s3.cat_file("output/sink/_locks/r.lock"))
        s3.pipe_file("output/sink/_locks/r.lock", json.dumps({**holder, "renewed_at": time.time() - 3600}).encode())
        b = RunLock("s3://output/sink", "r", "attempt-b", storage).acquire()
        with pytest.raises(RunLocked, match="lost its lease to attempt-b"):
            a.verify()
        b.release()
        assert not s3.exists("output/sink/_locks/r.lock")
    finally:
        a._stop.set()
    # A holder on this host whose process is gone stops blocking at once.
    dead = {"attempt": "gone", "host": __import__("socket").gethostname(), "pid": 2 ** 22 - 1,
            "pid_started": 0.0, "renewed_at": time.time()}
    s3.pipe_file("output/sink/_locks/r.lock", json.dumps(dead).encode())
    RunLock("s3://output/sink", "r", "attempt-c", storage).acquire().release()


# -- 4. no code from artifacts --------------------------------------------------------------------

def test_a_scripted_model_is_refused_before_anything_runs(tiny_model, tmp_path):
    import hashlib

    import torch

    from imgclf_ray.models.artifact import CARD_FILE
    from imgclf_ray.models.torch_classifier import TorchClassifier

    net = TorchClassifier(tiny_model, threads=1).net.float().to(memory_format=torch.contiguous_format)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buf)
    model = tmp_path / "scripted"
    model.mkdir()
    (model / "model.ts").write_bytes(buf.getvalue())
    card = json.loads((Path(tiny_model) / CARD_FILE).read_text())
    card["weights"] = {"file": "model.ts", "format": "torchscript", "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
    (model / CARD_FILE).write_text(json.dumps(card))
    _archive(tmp_path / "archive", 0, 2)
    line = one_error_line(CliRunner().invoke(main, ["run", str(_job(tmp_path, str(model)))]), 1)
    assert "TorchScript runs code stored in the file" in line and "model.trusted: true" in line
    assert not (tmp_path / "out").exists()


# -- 5. no patient identifiers --------------------------------------------------------------------

def crafted_dicom(frames: int = 1, swallow: bool = False, declared: int | None = None) -> bytes:
    """A small DICOM with identifying attributes; ``swallow``: SOPInstanceUID's length is patched
    so that its value swallows the elements up to and with PatientID (a malformed length)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = meta_sop = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyDate, ds.Modality = meta_sop, "1.2.3.4", "20200101", "OT"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, PID, BIRTH
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 8, 8, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if declared or frames > 1:
        ds.NumberOfFrames = declared or frames
    ds.PixelData = (np.arange(64 * frames) % 256).astype(np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = bytearray(buf.getvalue())
    if swallow:
        at = data.index(struct.pack("<HH", 0x0008, 0x0018) + b"UI", 132)
        struct.pack_into("<H", data, at + 6, data.index(PID.encode()) + len(PID) - (at + 8))
    return bytes(data)


@pytest.mark.parametrize("keyword", ["OriginalAttributesSequence", "IssuerOfPatientID", "MedicalRecordLocator",
                                     "ConsultingPhysicianName", "CurrentPatientLocation", "AdmissionID",
                                     "StudyDate", "PatientName", "PatientSex"])
def test_identifying_or_nested_dicom_keywords_are_refused(keyword, tmp_path):
    job = _job(tmp_path, decode={"dicom_attributes": ["Modality", keyword]})
    line = one_error_line(CliRunner().invoke(main, ["validate", str(job)]), 2)
    assert "decode.dicom_attributes" in line and keyword in line


@pytest.mark.ray
def test_crafted_dicoms_leak_no_identifier_anywhere(ray_session, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "plain.dcm").write_bytes(crafted_dicom())
    (archive / "swallowed.dcm").write_bytes(crafted_dicom(swallow=True))
    (archive / "cut.dcm").write_bytes(crafted_dicom()[:300])
    (archive / "declares-a-million.dcm").write_bytes(crafted_dicom(declared=1_000_000))
    # 32 fuzzed files: every metadata field a marker (tests/support/hostile.py), mutated.
    base = marked_dicom(depth=2)
    for i, (kind, data) in enumerate(dicom_variants(base, 400, seed=22)):
        if i % 90 == 0:
            (archive / f"fuzz-{i}-{kind}.dcm").write_bytes(data)
    for fmt, data in marked_images().items():
        for i, (kind, variant) in enumerate(image_variants(data, 4, seed=23)):
            (archive / f"fuzz-{i}-{kind}.{fmt}").write_bytes(variant)
    assert len(list(archive.glob("fuzz-*"))) >= 30
    attrs = ["SOPInstanceUID", "StudyInstanceUID", "Modality", "Rows", "PatientPosition"]
    job = _job(tmp_path, tiny_model, decode={"dicom_attributes": attrs, "frames": "all"})
    ran = CliRunner().invoke(main, ["run", str(job), "--run-id", "phi", "-q"])
    assert ran.exit_code == 0, ran.output
    report = CliRunner().invoke(main, ["report", str(tmp_path / "out")])
    assert report.exit_code == 0, report.output
    rows = {Path(r["uri"]).name: r for r in pq.read_table([f.removeprefix("file://") for f in sink.committed_files(str(tmp_path / "out"), "phi")]).to_pylist()}
    assert rows["plain.dcm"]["status"] == "ok" and json.loads(rows["plain.dcm"]["dicom"])["SOPInstanceUID"] == "1.2.3.4"
    assert rows["swallowed.dcm"]["status"] == "ok" and json.loads(rows["swallowed.dcm"]["dicom"])["SOPInstanceUID"] is None
    assert rows["cut.dcm"]["status"] == "error"
    assert "declares 1,000,000 frames" in rows["declares-a-million.dcm"]["error"]
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())  # the workers' and drivers' logs
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "archive" not in p.parts and p.suffix != ".yaml"]
    everything = [ran.output, report.output] + [p.read_bytes().decode("latin-1") for p in written + [
        p for p in logs.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]]
    # and what the report inlines: its thumbnails and charts, base64 (a JPEG's comment went there whole)
    inlined = [base64.b64decode(m).decode("latin-1") for text in everything
               for m in re.findall(r"data:image/[a-z]+;base64,([A-Za-z0-9+/=]+)", text)]
    assert len(inlined) > 10
    everything += inlined
    for secret in (NAME, "SECRET", PID, BIRTH):
        assert not [text[:80] for text in everything if secret in text], secret
    assert not [find_markers(text)[:5] for text in everything if find_markers(text)]


# -- 6. bounds ------------------------------------------------------------------------------------

def _load(tmp_path: Path, files: dict[str, bytes], decode: DecodeSpec, source: SourceSpec | None = None,
          chunk_bytes: int | None = None):
    from imgclf_ray.stages import LoadConfig, LoadStage

    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    stage = LoadStage(LoadConfig(StorageSpec(), decode, source=source))
    stage.chunk_bytes = chunk_bytes or stage.chunk_bytes
    out = stage({"uri": np.array([f"file://{tmp_path}/{n}" for n in files], dtype=object)})
    return list(zip(out["frame"].tolist(), out["status"].tolist(), out["error"].tolist()))


def test_the_frames_of_one_file_are_decoded_for_at_most_decode_max_seconds(tmp_path):
    """A GIF of 200 one-pixel frames on a 9000x9000 screen (4.6 KB) took 101 s of CPU with
    frames: all (each frame a full composite). Past decode.max_seconds of CPU on one file's frames,
    the rest are error rows saying why, and the next file starts afresh."""
    frames = [Image.new("RGB", (40, 30), (50 * i, 0, 0)) for i in range(5)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    rows = _load(tmp_path, {"a.gif": buf.getvalue(), "b.gif": buf.getvalue()},
                 DecodeSpec(frames="all", max_seconds=1e-9))
    why = "decode: the file's frames took more than decode.max_seconds (1e-09 s of CPU): this one was not decoded"
    assert rows == [(0, "ok", None)] + [(i, "error", why) for i in range(1, 5)] + \
        [(0, "ok", None)] + [(i, "error", why) for i in range(1, 5)]
    # A file's frames leave the task in chunks (LoadStage.chunks): its clock runs on across them.
    assert _load(tmp_path, {"a.gif": buf.getvalue()}, DecodeSpec(frames="all", max_seconds=1e-9), chunk_bytes=1) \
        == rows[:5]
    assert [r[1] for r in _load(tmp_path, {"c.gif": buf.getvalue()}, DecodeSpec(frames="all"))] == ["ok"] * 5
    # The limit is the frames' decoding: the samples of a shard (one file's rows too) are not frames.
    shard = io.BytesIO()
    with tarfile.open(fileobj=shard, mode="w") as tar:
        for i in range(5):
            member = tarfile.TarInfo(f"s{i}.gif")
            member.size = len(buf.getvalue())
            tar.addfile(member, io.BytesIO(buf.getvalue()))
    rows = _load(tmp_path, {"s.tar": shard.getvalue()}, DecodeSpec(max_seconds=1e-9),
                 SourceSpec(uri=str(tmp_path), webdataset={"image_extensions": ["gif"]}))
    assert [r[1] for r in rows] == ["ok"] * 5, rows


def test_frame_page_and_member_bombs_end_in_one_error_row(tmp_path):
    # A 1 KB DICOM declaring a million frames: one error row, before any frame row is made.
    rows = _load(tmp_path, {"bomb.dcm": crafted_dicom(declared=1_000_000)}, DecodeSpec(frames="all"))
    assert rows == [(0, "error", "decode: declares 1,000,000 frames of 8x8 but its pixel data holds 1")]
    # 1,500 TIFF pages: decoded one after the other from one opened file, the first 1,000 kept.
    pages = [Image.new("L", (4, 4), i % 256) for i in range(1500)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    rows = _load(tmp_path, {"pages.tif": buf.getvalue()}, DecodeSpec(frames="all"))
    assert len(rows) == 1001 and all(r[1] == "ok" for r in rows[:1000]) and rows[999][0] == 999
    assert rows[1000] == (1000, "error", "decode: the file has 1,500 frames, over decode.max_frames (1,000): "
                                         "the first 1,000 were classified")
    # A gzip shard with a junk member over the member limit: that sample is an error row, unread.
    shard = io.BytesIO()
    with tarfile.open(fileobj=shard, mode="w:gz") as tar:
        for key, data in (("a", png_bytes(Image.new("RGB", (8, 8)))), ("junk", os.urandom(200_000))):
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rows = _load(tmp_path, {"s.tar.gz": shard.getvalue()}, DecodeSpec(max_member_bytes=100_000),
                 SourceSpec(uri=str(tmp_path), webdataset={}))
    assert rows[0][1] == "ok" and rows[1][1] == "error" and "over decode.max_member_bytes" in rows[1][2]
    # An ICNS whose sub-image declares 50000 x 50000: refused by the bomb check, not decoded.
    png = png_header_only(50_000, 50_000)
    entry = b"ic10" + struct.pack(">I", 8 + len(png)) + png
    rows = _load(tmp_path, {"icon.icns": b"icns" + struct.pack(">I", 8 + len(entry)) + entry}, DecodeSpec())
    assert rows[0][1] == "error" and "decompression-bomb limit" in rows[0][2]


def test_a_yaml_alias_bomb_is_refused(tmp_path):
    lines = ["name: g", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert "alias bomb" in one_error_line(CliRunner().invoke(main, ["validate", str(bomb)]), 2)


# -- 7. one line for every failure a user can cause or meet ---------------------------------------

def test_failures_a_user_meets_are_one_error_line(tmp_path):
    png = tmp_path / "photo.png"
    png.write_bytes(png_bytes(Image.new("RGB", (4, 4))))
    assert "not UTF-8 text" in one_error_line(CliRunner().invoke(main, ["run", str(png)]), 2)
    blocker = tmp_path / "plain-file"
    blocker.write_text("a file where the sink's folder should be")
    _archive(tmp_path / "archive", 0, 1)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: g\nsource: {{uri: {tmp_path / 'archive'}}}\ncurate: {{}}\nsink: {{uri: {blocker}/out}}\n")
    assert "a file stands where a folder is needed" in one_error_line(CliRunner().invoke(main, ["run", str(job)]), 1)
    only = tmp_path / "only-success" / "r"
    only.mkdir(parents=True)
    (only / "_SUCCESS").write_bytes(b"")
    assert "has _SUCCESS but no _manifest.json" in one_error_line(CliRunner().invoke(main, ["report", str(only.parent)]), 1)
    assert "has _SUCCESS but no _manifest.json" in CliRunner().invoke(main, ["runs", str(only.parent)]).output  # DAMAGED
    (only / "_manifest.json").write_text("{ not json")
    assert "is corrupt (not JSON)" in one_error_line(CliRunner().invoke(main, ["export", str(only.parent), "--to", "csv"]), 1)
    closed = CliRunner().invoke(main, ["runs", "s3://bucket/sink", "--endpoint-url", "http://127.0.0.1:9"])
    assert ("object storage could not be reached at http://127.0.0.1:9 (EndpointConnectionError)"
            in one_error_line(closed, 1))  # (the endpoint named: it was "<value>")


def test_a_local_lock_whose_file_went_under_the_run_is_not_trusted_and_spares_the_next_attempts(tmp_path):
    """The sink's folder deleted while a run holds its lock (by hand, or by a script's spawned
    copy): a second attempt can take the run id, so the first may not commit (verify refuses);
    its release removes nothing of the second's, which still holds the run id against a third."""
    import shutil

    first = RunLock(str(tmp_path / "out"), "r", "first").acquire()
    shutil.rmtree(tmp_path / "out")
    with RunLock(str(tmp_path / "out"), "r", "second") as second:
        with pytest.raises(RunLocked, match="lock file .* was deleted while it ran"):
            first.verify()
        first.release()
        second.verify()
        with pytest.raises(RunLocked, match="being run by another attempt"):
            RunLock(str(tmp_path / "out"), "r", "third").acquire()
