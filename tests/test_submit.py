"""imgclf submit / status / logs / stop against a real head node (`ray start --head`, dashboard
on loopback, token authentication on), started and stopped by this module."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, _free_port
from tests.support.jobs import digits_subset, read_run
from tests.support.heads import started_head

pytestmark = [pytest.mark.slow, pytest.mark.ray]

JOB = """\
name: nightly-digits
source: {{uri: {archive}, extensions: [".png"]}}
model: {{uri: {model}}}
sink: {{uri: {sink}}}
"""


@pytest.fixture(scope="module")
def head():
    """The module's head, started from the project's environment (its jobs' python is this one)."""
    with started_head(Path(sys.executable).parent) as started:
        yield started


def imgclf(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "imgclf_ray", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.fixture()
def job(tmp_path, digits_archive, tiny_model):
    archive = tmp_path / "archive"
    digits_subset(digits_archive, archive, 30)  # 60 images
    spec = tmp_path / "nightly.yaml"
    spec.write_text(JOB.format(archive=archive, model=tiny_model, sink=tmp_path / "out"))
    return spec, sum(1 for _ in archive.rglob("*.png")), tmp_path / "out"


def _jobs_api(env, address: str, run_id: str, answer: str):
    """What a Jobs API client (in its own process, with the token in ``env``) answers: ``answer``
    is a JSON-able expression of ``c`` (the client) and ``run_id``."""
    out = subprocess.run([sys.executable, "-c", (
        "import sys, json; from ray.job_submission import JobSubmissionClient;"
        f"c, run_id = JobSubmissionClient(sys.argv[1]), sys.argv[2]; print(json.dumps({answer}))"), address, run_id],
        env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _job_info(env, address: str, run_id: str) -> dict:
    return _jobs_api(env, address, run_id, "json.loads(c.get_job_info(run_id).json())")


def _submissions(env, address: str, run_id: str) -> list:
    return _jobs_api(env, address, run_id, "[j.submission_id for j in c.list_jobs() "
                                           "if (j.metadata or {}).get('imgclf_run_id') == run_id]")


def test_submitted_run_commits_once_per_date_and_no_secret_travels(head, job):
    address, env, temp = head
    spec, images, sink = job
    token = env["RAY_AUTH_TOKEN"]
    first = imgclf(env, "submit", str(spec), "--date", "2026-11-28", "--address", address, "--wait")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "submitted run nightly-digits-2026-11-28" in first.stdout
    assert "SUCCEEDED" in first.stdout and f"nightly-digits-2026-11-28: {images} images" in first.stdout
    rows = read_run(str(sink), "nightly-digits-2026-11-28")
    assert len(rows) == images and len({r["image_id"] for r in rows}) == images
    # The same night again: the Jobs API knows the run; nothing is submitted, nothing rewritten.
    again = imgclf(env, "submit", str(spec), "--date", "2026-11-28", "--address", address)
    assert again.returncode == 0 and "already SUCCEEDED" in again.stdout and "nothing was submitted" in again.stdout
    assert len(read_run(str(sink), "nightly-digits-2026-11-28")) == images
    st = imgclf(env, "status", "nightly-digits-2026-11-28", "--address", address)
    assert st.returncode == 0 and "SUCCEEDED" in st.stdout
    late = imgclf(env, "stop", "nightly-digits-2026-11-28", "--address", address)
    assert late.returncode == 0 and late.stdout.strip() == (
        "run nightly-digits-2026-11-28 had already ended (SUCCEEDED); nothing was stopped")
    log = imgclf(env, "logs", "nightly-digits-2026-11-28", "--address", address)
    assert f"{images} images" in log.stdout
    # The submission carries the spec and the package, never the token.
    info = _job_info(env, address, "nightly-digits-2026-11-28")
    assert set(info["runtime_env"]) <= {"working_dir", "py_modules", "env_vars", "_ray_commit"}
    assert info["runtime_env"]["env_vars"] == {"RAY_JOB_STOP_WAIT_TIME_S": "120"}  # a commit is not cut short
    assert info["metadata"] == {"imgclf_job": "nightly-digits", "imgclf_run_id": "nightly-digits-2026-11-28"}
    assert "--date 2026-11-28" in info["entrypoint"]
    seen = [first.stdout, first.stderr, again.stdout, st.stdout, log.stdout, json.dumps(info)]
    assert not any(token in text for text in seen)
    for path in [*Path(temp).rglob("*"), *sink.rglob("*")]:
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert token.encode() not in path.read_bytes(), path


def test_stopped_run_resubmitted_resumes_exactly_once(head, job):
    address, env, temp = head
    spec, images, sink = job
    # The job's decode tasks wait at a blocking fault point until it is stopped: the stop cannot
    # come after the run finished, however fast the machine (earlier jobs passed the point: theirs
    # is an old .reached).
    hold = Path(temp, "hold")
    hold.with_suffix(".release").unlink()
    hold.with_suffix(".reached").unlink(missing_ok=True)
    try:
        # The pre-flight passes on this head (test_submitted_run_commits_once...); skipped here.
        out = imgclf(env, "submit", str(spec), "--run-id", "stop-me", "--address", address, "--skip-preflight")
        assert out.returncode == 0 and "submitted run stop-me" in out.stdout, out.stderr
        deadline = time.monotonic() + 240
        while not hold.with_suffix(".reached").exists():
            assert time.monotonic() < deadline, imgclf(env, "logs", "stop-me", "--address", address).stdout
            time.sleep(0.2)
        stopped = imgclf(env, "stop", "stop-me", "--address", address)
        assert stopped.returncode == 0 and "STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
        assert not (sink / "stop-me" / "_SUCCESS").exists()
        # Stopped as a signal stops a run (SIGTERM, handled: nothing committed), not killed.
        log = imgclf(env, "logs", "stop-me", "--address", address).stdout
        assert "interrupted: nothing committed; rerun with --run-id stop-me to resume" in log, log[-3000:]
    finally:
        hold.with_suffix(".release").touch()
    again = imgclf(env, "submit", str(spec), "--run-id", "stop-me", "--address", address, "--wait",
                   "--skip-preflight")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resubmitted run stop-me (the earlier attempt STOPPED; it resumes)" in again.stdout
    rows = read_run(str(sink), "stop-me")
    assert len(rows) == images and len({r["image_id"] for r in rows}) == images


def test_wrong_token_unknown_run_and_unreachable_head_are_one_line_each(head):
    address, env, _ = head
    wrong = imgclf({**env, "RAY_AUTH_TOKEN": "not-the-token"}, "status", "x", "--address", address)
    assert wrong.returncode == 1 and "Invalid authentication token" in wrong.stderr
    assert "RAY_AUTH_TOKEN" in wrong.stderr and "Traceback" not in wrong.stderr
    unknown = imgclf(env, "status", "no-such-run", "--address", address)
    assert unknown.returncode == 1 and "no run 'no-such-run' on this cluster" in unknown.stderr
    closed = imgclf(env, "logs", "x", "--address", f"http://127.0.0.1:{_free_port()}")
    assert closed.returncode == 1 and "cannot reach the Ray Jobs API" in closed.stderr
    assert "Traceback" not in unknown.stderr + closed.stderr


def test_paths_a_cluster_cannot_see_are_refused_before_submitting(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(JOB.format(archive="data/archive", model="/models/m", sink="s3://bucket/out"))
    out = imgclf(dict(os.environ), "submit", str(spec), "--address", "http://127.0.0.1:9")
    assert out.returncode == 2 and "source.uri: 'data/archive' is relative to this machine's folder" in out.stderr
    local = imgclf(dict(os.environ), "submit", str(spec), "--address", "http://127.0.0.1:9",
                   "--set", "source.uri=/data/archive", "--set", "run.executor=local")
    assert local.returncode == 2 and "run.executor: local runs on one machine without Ray" in local.stderr


def test_a_cluster_with_another_version_is_refused_before_anything_is_submitted(head, job):
    address, env, _ = head
    spec, _, out = job
    refused = imgclf({**env, "IMGCLF_PROBE_VERSION": "0.0.1"}, "submit", str(spec), "--run-id", "v1",
                     "--address", address)
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip()
    assert line.startswith("error: ") and len(line.splitlines()) == 1 and "Traceback" not in line
    assert "has imgclf-ray 0.0.1 installed" in line and "infra/Dockerfile" in line and sys.executable in line
    assert not _submissions(env, address, "v1")


def test_a_head_whose_python_lacks_the_project_is_refused_and_says_which_python(job, tmp_path):
    """`ray start --head` from the project's venv without it on PATH: the job's `python` is a bare
    interpreter (here a fresh venv: the standard library only)."""
    bare = tmp_path / "bare"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    with started_head(bare / "bin", cpus=1, memory=100_000_000) as (address, env, _):
        spec, _, _ = job
        refused = imgclf(env, "submit", str(spec), "--run-id", "b1", "--address", address)
        assert refused.returncode == 2, refused.stderr
        line = refused.stderr.strip()
        assert line.startswith("error: ") and len(line.splitlines()) == 1, line
        assert str(bare / "bin" / "python") in line and "cannot import ray, ray.data, pyarrow" in line
        assert not _submissions(env, address, "b1")
        # With the check skipped, the job runs and fails on the cluster as the environment's problem.
        sent = imgclf(env, "submit", str(spec), "--run-id", "b2", "--address", address, "--skip-preflight", "--wait")
        assert sent.returncode == 1
        assert "cannot import" in sent.stdout + sent.stderr and "report it" not in sent.stdout + sent.stderr


def test_imgclf_run_joins_the_ray_start_instance_ray_init_would_join(head, job, tmp_path):
    """run.executor: auto with a `ray start` head on this machine (its address file where Ray's
    own ray.init() looks: RAY_TMPDIR/ray/ray_current_cluster): the run joins it, and says so."""
    _, env, temp = head
    spec, images, out = job
    (tmp_path / "raytmp" / "ray").mkdir(parents=True)
    shutil.copy(Path(temp) / "ray_current_cluster", tmp_path / "raytmp" / "ray" / "ray_current_cluster")
    address = (Path(temp) / "ray_current_cluster").read_text().strip()
    done = imgclf({**env, "RAY_TMPDIR": str(tmp_path / "raytmp")}, "run", str(spec), "--run-id", "joined", "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"run joined: {images} images")
    assert first.endswith(f"ray executor: a Ray instance started with `ray start` runs on this machine ({address})")


@pytest.mark.module_last
def test_a_cluster_torn_down_mid_run_is_one_error_line_and_the_rerun_resumes(head, job, tmp_path):
    """The head of the cluster a run joined goes away while the run's decode tasks wait (a blocking
    fault point). Ray's core worker would end a driver whose GCS stays silent for its limit (set
    out of reach here, 600 s) and say so only in its log files; the command says it in one error
    line (after ``IMGCLF_CLUSTER_LOST_AFTER_S``: 3 s here, 10 s before Ray's limit by default),
    nothing is committed, and the run id run again (here without Ray) commits every image once.
    Before the head goes, the autoscaler's failure (published as Ray's monitor publishes it, with
    its stack) reaches the command as one line."""
    import threading
    import traceback

    from click.testing import CliRunner

    from imgclf_ray.cli import main
    from imgclf_ray.io.sink import committed_files
    from tests.support.heads import stop_ray_node

    spec, images, out = job
    stack = "Terminated with signal 15\n" + "".join(traceback.format_stack())
    publish = ("import sys; from ray._raylet import GcsClient; from ray._private import ray_constants;"
               "from ray._private.utils import publish_error_to_driver;"
               "publish_error_to_driver(ray_constants.MONITOR_DIED_ERROR, sys.argv[2], GcsClient(address=sys.argv[1]))")
    _, env, temp = head  # the module's head, torn down here: this test runs last in the module (module_last)
    os.remove(f"{temp}/hold.release")
    Path(f"{temp}/hold.reached").unlink(missing_ok=True)  # an earlier test's run reached the point
    gcs = Path(temp, "ray_current_cluster").read_text().strip()
    with open(tmp_path / "stderr", "w") as err:
        run = subprocess.Popen([sys.executable, "-m", "imgclf_ray", "run", str(spec), "--run-id", "lost", "--address", gcs],
                               env={**env, "RAY_gcs_rpc_server_reconnect_timeout_s": "600",
                                    "IMGCLF_CLUSTER_LOST_AFTER_S": "3"},
                               cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
    lines, autoscaler = [], threading.Event()

    def read() -> None:
        for line in run.stdout:
            lines.append(line)
            if "The autoscaler failed" in line:
                autoscaler.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not Path(f"{temp}/hold.reached").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert Path(f"{temp}/hold.reached").exists(), (tmp_path / "stderr").read_text()[-3000:]
    published = subprocess.run([sys.executable, "-c", publish, gcs,
                                "The autoscaler failed with the following error:\n" + stack],
                               env=env, capture_output=True, text=True, timeout=60)
    assert published.returncode == 0, published.stderr
    assert autoscaler.wait(60), "".join(lines)
    stop_ray_node(temp)
    run.wait(timeout=120)
    reader.join(timeout=10)
    said = "".join(lines) + (tmp_path / "stderr").read_text()
    assert run.returncode == 1, said[-3000:]
    assert "Traceback" not in said and "  File \"" not in said, said[-3000:]  # the autoscaler's stack: not printed
    assert "The autoscaler failed with the following error: Terminated with signal 15" in said
    (line,) = [x for x in said.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: the Ray cluster stopped answering (nothing at its GCS, {gcs}, for ")
    assert line.endswith("Ray ends a driver at 600 s): nothing committed; rerun with --run-id lost to resume")
    assert not committed_files(str(out), "lost")

    again = CliRunner().invoke(main, ["run", str(spec), "--run-id", "lost", "--local", "-q"])
    assert again.exit_code == 0, again.output
    rows = read_run(str(out), "lost")
    assert len(rows) == images and len({r["image_id"] for r in rows}) == images
