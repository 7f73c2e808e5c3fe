"""Helpers the test modules share: job specs, committed rows, real drivers, small archives.

Every spec these build names its executor (run.executor), so that a change of the default
changes no test's meaning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from imgclf_ray.io.sink import committed_files
from imgclf_ray.spec import parse_spec
from tests.corpus import digit_images, png_bytes

IMGCLF = str(Path(sys.executable).with_name("imgclf"))


def make_spec(source: str, sink: str, model_uri: str, **sections):
    data = {"name": "t", "source": {"uri": source}, "model": {"uri": model_uri, "topk": 3},
            "sink": {"uri": sink}, "resources": {"decode_batch_size": 4, "batch_size": 8},
            "run": {"executor": "ray"}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_spec(data, "<test>")


def read_run(sink: str, run_id: str):
    files = committed_files(sink, run_id)
    assert files, "run not committed"
    return pq.read_table([f.removeprefix("file://") for f in files]).to_pylist()


def _archive(root: Path, start: int, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, img in digit_images(start + n)[start:]:
        (root / f"{name}.png").write_bytes(png_bytes(img))


def _nightly_job(tmp_path: Path, model: str, sink_uri: str, storage: str = "", executor: str = "ray") -> Path:
    job = tmp_path / "nightly.yaml"
    job.write_text(f"name: nightly\nsource: {{uri: {tmp_path / 'archive'}}}\nmodel: {{uri: {model}}}\n"
                   f"sink: {{uri: {sink_uri}}}\nincremental: {{}}\n{storage}"
                   f"resources: {{decode_batch_size: 4, batch_size: 4}}\nrun: {{executor: {executor}}}\n")
    return job


def _driver(job: Path, run_id: str, **env) -> subprocess.Popen:
    """A real driver (its own local Ray) in its own session, so that what it leaves can be killed."""
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env
    return subprocess.Popen([IMGCLF, "run", str(job), "--run-id", run_id, "-q"], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _reap(proc: subprocess.Popen) -> None:
    """Kill what is left of a driver's session (its Ray processes), by its process group only."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def digits_subset(digits_archive: str, archive: Path, every: int, start: int = 0) -> int:
    """Every ``every``-th digit of the session's archive (from ``start``) copied into ``archive``,
    in its class folder; returns how many."""
    files = sorted(Path(digits_archive).rglob("*.png"))[start::every]
    for src in files:
        (archive / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, archive / src.parent.name / src.name)
    return len(files)


def killed_at(point: str, *args: str) -> None:
    """``imgclf ARGS`` in a process of its own that kills itself (SIGKILL) at fault point ``point``."""
    proc = subprocess.run([IMGCLF, *args], env={**os.environ, "IMGCLF_KILL_AT": point}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
