"""Two nights of one incremental job at once (a night that runs past the next cron start): they
never both select the same new images. Real drivers (local executor: no Ray start-up), the first
held at a blocking fault point before its commit, so the overlap is certain, not timed."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support.jobs import IMGCLF, _archive

pytestmark = pytest.mark.slow


def _job(tmp_path: Path, model: str, sink: str, overlap: str = "refuse", storage: str = "") -> Path:
    job = tmp_path / "nightly.yaml"
    job.write_text(f"name: nightly\nsource: {{uri: {tmp_path / 'archive'}}}\nmodel: {{uri: {model}}}\n"
                   f"sink: {{uri: {sink}}}\nincremental: {{overlap: {overlap}, overlap_wait: 600}}\n"
                   f"run: {{executor: local}}\nresources: {{decode_batch_size: 4, batch_size: 4}}\n{storage}")
    return job


def _night(job: Path, date: str, **env: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env
    return subprocess.Popen([IMGCLF, "run", str(job), "--date", date, "-q"], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _held(job: Path, date: str, flag: str, **env: str) -> subprocess.Popen:
    """A night held before its commit (everything staged, the job's lock held)."""
    night = _night(job, date, IMGCLF_BLOCK_AT="after_write", IMGCLF_BLOCK_FILE=flag, **env)
    deadline = time.monotonic() + 240
    while not os.path.exists(flag + ".reached"):
        assert night.poll() is None, night.communicate()
        assert time.monotonic() < deadline, "the first night never reached its commit"
        time.sleep(0.1)
    return night


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _uris_by_run(read_paths: list[str], open_file=open) -> dict[str, list[str]]:
    runs: dict[str, list[str]] = {}
    for path in read_paths:
        with open_file(path, "rb") as fh:
            t = pq.read_table(fh, columns=["uri", "run_id"])
        for uri, run in zip(t.column("uri").to_pylist(), t.column("run_id").to_pylist()):
            runs.setdefault(run, []).append(uri.rsplit("/", 1)[-1])
    return runs


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_night_while_the_first_runs_is_refused_and_every_image_lands_once(where, request, tiny_model,
                                                                                  tmp_path):
    storage, sink, fs = "", str(tmp_path / "out"), None
    if where == "s3":
        fs, endpoint = request.getfixturevalue("s3"), request.getfixturevalue("moto_server")
        storage, sink = f"storage: {{endpoint_url: '{endpoint}'}}\n", "s3://output/nightly"
    _archive(tmp_path / "archive", 0, 4)
    job = _job(tmp_path, tiny_model, sink, storage=storage)
    flag = str(tmp_path / "block")
    first = _held(job, "2026-12-01", flag)
    _archive(tmp_path / "archive", 4, 2)  # new images arrive while the first night is still running
    code, _, err = _finish(_night(job, "2026-12-02"))
    assert code == 75, err  # EX_TEMPFAIL: cron and schedulers try again later
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: job nightly: night nightly-2026-12-01 is still running") and "started" in line, err
    Path(flag + ".release").touch()
    assert _finish(first)[0] == 0
    code, _, err = _finish(_night(job, "2026-12-02"))  # the next try, once the first has committed
    assert code == 0, err
    if fs is None:
        files = glob.glob(f"{sink}/**/*.parquet", recursive=True)
        runs = _uris_by_run(files)
    else:
        fs.invalidate_cache()
        runs = _uris_by_run([p for p in fs.find("output/nightly") if p.endswith(".parquet")], fs.open)
    assert sorted(len(v) for v in runs.values()) == [2, 4]  # the first night's 4, the second's 2 new
    every = [u for v in runs.values() for u in v]
    assert len(every) == len(set(every)) == 6


def test_with_overlap_wait_the_second_night_waits_then_takes_only_what_is_new(tiny_model, tmp_path):
    _archive(tmp_path / "archive", 0, 4)
    job = _job(tmp_path, tiny_model, str(tmp_path / "out"), overlap="wait")
    flag = str(tmp_path / "block")
    first = _held(job, "2026-12-01", flag)
    _archive(tmp_path / "archive", 4, 2)
    second = _night(job, "2026-12-02")
    waiting = second.stderr.readline()  # said once, when it finds the job's lock held
    assert waiting.startswith("waiting up to 600 s (incremental.overlap: wait): job nightly: night "
                              "nightly-2026-12-01 is still running"), waiting
    Path(flag + ".release").touch()
    assert _finish(first)[0] == 0
    code, out, err = _finish(second)
    assert code == 0, err
    runs = _uris_by_run(glob.glob(f"{tmp_path / 'out'}/**/*.parquet", recursive=True))
    assert {run: len(v) for run, v in runs.items()} == {"nightly-2026-12-01": 4, "nightly-2026-12-02": 2}


def test_a_killed_night_is_taken_over_and_its_images_land_once(s3, moto_server, tiny_model, tmp_path):
    """On an object store the job's lock is a lease: a holder whose process is gone (here: on this
    host) is abandoned at once, its staged files undone by the next night's recovery."""
    _archive(tmp_path / "archive", 0, 4)
    job = _job(tmp_path, tiny_model, "s3://output/nightly", storage=f"storage: {{endpoint_url: '{moto_server}'}}\n")
    flag = str(tmp_path / "block")
    first = _held(job, "2026-12-01", flag)
    os.killpg(first.pid, signal.SIGKILL)  # the driver dies holding the job's lock
    first.wait()
    code, _, err = _finish(_night(job, "2026-12-02"))
    assert code == 0, err
    s3.invalidate_cache()
    runs = _uris_by_run([p for p in s3.find("output/nightly") if p.endswith(".parquet")], s3.open)
    assert list(runs) == ["nightly-2026-12-02"] and len(runs["nightly-2026-12-02"]) == len(set(runs["nightly-2026-12-02"])) == 4
    assert not [p for p in s3.find("output/nightly") if p.endswith("/_locks/_job.nightly.lock")]


def test_the_same_night_twice_is_the_run_ids_refusal_not_the_jobs(tmp_path):
    from imgclf_ray.io.lock import JobLock, JobLocked, RunLocked
    from imgclf_ray.io.sink import Sink

    out = Sink(str(tmp_path))
    with JobLock(out, "nightly", "n1", "a1"):
        with pytest.raises(RunLocked, match="run n1 is being run by another attempt"):
            JobLock(out, "nightly", "n1", "a2").acquire()
        with pytest.raises(JobLocked, match="night n1 is still running") as caught:
            JobLock(out, "nightly", "n2", "a3").acquire()
        assert caught.value.exit_code == 75
    assert not (tmp_path / "_locks").exists()
