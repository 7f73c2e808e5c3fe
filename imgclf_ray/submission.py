"""Jobs on a Ray cluster through the Ray Jobs API: ``imgclf submit | status | logs | stop``.

A submission ships the job spec file and this package (``runtime_env``: ``working_dir`` holding the
spec, ``py_modules`` holding ``imgclf_ray``), so the cluster runs the submitter's code on the
submitter's spec; the cluster's image provides the dependencies. Its entry point is
``python -m imgclf_ray run job.yaml --run-id RUN_ID -q`` (``--date`` for scheduled runs) and its Ray
submission id is the run id (a retry of a failed run: ``<run id>-attempt<N>``), so the Jobs API
itself refuses a second copy of a run; ``status`` / ``logs`` / ``stop`` take the run id and act on
its latest attempt. Nothing secret travels: the cluster's token (``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``
with ``RAY_AUTH_MODE=token``) goes in the HTTP headers Ray's client adds, never into the
runtime_env, the entry point or the metadata; credentials for object storage come from the
cluster's own environment (instance roles, its secrets), never from the submission. ``stop`` sends
the driver SIGTERM, on which a run stops at its next safe point or finishes a commit under way; the
Jobs API then SIGKILLs it after ``RAY_JOB_STOP_WAIT_TIME_S`` (3 s by default), which a submission
sets to STOP_WAIT_S so that a commit (S3, many files) is not cut short.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from imgclf_ray.errors import SpecError, UserError
from imgclf_ray.spec import JobSpec

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SPEC_FILE = "job.yaml"
STOP_WAIT_S = 120  # how long `imgclf stop` lets a driver stop or finish its commit before Ray SIGKILLs it


class ClusterError(UserError):
    """The cluster cannot be reached, refuses our token, or does not know the run."""


class EnvironmentMismatch(UserError):
    """The cluster's Python cannot run the job: refused before anything is submitted."""

    exit_code = 2


# What every run imports (the project's dependencies, by module name), and each extra's module.
RUNTIME_MODULES = ("ray", "ray.data", "pyarrow", "numpy", "scipy", "torch", "torchvision", "sklearn", "fsspec",
                   "s3fs", "PIL", "click", "pydantic", "yaml", "safetensors", "tqdm", "skimage", "skops", "psutil")
# The probe runs with the cluster's own `python`, as the job's entry point will; it imports only the
# standard library itself, so that it answers even where nothing else is installed.
PROBE = """
import importlib, importlib.metadata as md, json, os, sys
out = {"python": sys.executable, "missing": [], "versions": {}}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        out["missing"].append(name)
for dist in ("imgclf-ray", "ray"):
    try:
        out["versions"][dist] = md.version(dist)
    except md.PackageNotFoundError:
        out["versions"][dist] = None
if os.environ.get("IMGCLF_PROBE_VERSION"):
    out["versions"]["imgclf-ray"] = os.environ["IMGCLF_PROBE_VERSION"]
print("IMGCLF_PROBE " + json.dumps(out))
"""
FIX = ("install imgclf-ray with the extras the job uses on every node (pip install '<its folder or wheel>[dicom]'), "
       "build the cluster's image from infra/Dockerfile, or start the head from the project's environment "
       "(PATH=$PWD/.venv/bin:$PATH ray start --head); --skip-preflight submits anyway")


def required_modules(spec: JobSpec) -> list[str]:
    """The modules a run of ``spec`` imports on the cluster: the project's, and its extras'."""
    from imgclf_ray.extras import EXTRAS

    needed = list(RUNTIME_MODULES)
    if spec.source.sniff or ".dcm" in [e.lower() for e in spec.source.extensions]:
        needed.append(EXTRAS["dicom"][0])
    if spec.source.container == "video":
        needed.append(EXTRAS["video"][0])
    if spec.sink.format == "delta":
        needed.append(EXTRAS["delta"][0])
    if spec.model is not None and spec.model.runtime == "onnxruntime":
        needed.append("onnxruntime")
    return needed


def preflight(address: str, spec: JobSpec, timeout: float = 180.0) -> dict:
    """Ask the cluster's Python what it has (a short probe job through the Jobs API) and refuse,
    with EnvironmentMismatch, a cluster that lacks a module the job imports, runs another Ray than
    this client, or has another imgclf-ray installed. Returns the probe's answer."""
    import importlib.metadata as md
    import json
    import os
    import uuid

    jobs = client(address)
    probe_id = f"imgclf-preflight-{uuid.uuid4().hex[:12]}"
    # IMGCLF_PROBE_VERSION (tests): the imgclf-ray version the probe reports, as if installed there.
    pretend = {"env_vars": {"IMGCLF_PROBE_VERSION": os.environ["IMGCLF_PROBE_VERSION"]}} \
        if os.environ.get("IMGCLF_PROBE_VERSION") else None
    with _guard(address, "preflight"):
        jobs.submit_job(entrypoint=f"python -c {_quote(PROBE)} {_quote(json.dumps(required_modules(spec)))}",
                        submission_id=probe_id, metadata={"imgclf_preflight": "1"}, runtime_env=pretend)
        deadline = time.monotonic() + timeout
        while str(jobs.get_job_status(probe_id).value) not in TERMINAL:
            if time.monotonic() > deadline:
                jobs.stop_job(probe_id)
                raise ClusterError(f"{address}: the pre-flight probe did not finish in {timeout:.0f} s (is the "
                                   "cluster starting nodes?); --skip-preflight submits without it")
            time.sleep(0.5)
        text = jobs.get_job_logs(probe_id)
    line = next((ln for ln in text.splitlines() if ln.startswith("IMGCLF_PROBE ")), None)
    if line is None:
        raise EnvironmentMismatch(f"{address}: the cluster could not run `python` for the pre-flight probe "
                                  f"(is there a Python on the head's PATH?): {FIX}")
    found = json.loads(line[len("IMGCLF_PROBE "):])
    where = f"{address}: the cluster's Python ({found.get('python')})"
    if found.get("missing"):
        raise EnvironmentMismatch(f"{where} cannot import {', '.join(found['missing'])}, which the job needs: {FIX}")
    ours = {dist: _version(md, dist) for dist in ("imgclf-ray", "ray")}
    theirs = found.get("versions") or {}
    if theirs.get("ray") != ours["ray"]:
        raise EnvironmentMismatch(f"{where} runs Ray {theirs.get('ray')}, this client Ray {ours['ray']}: Ray needs "
                                  f"the same version on both: {FIX}")
    if theirs.get("imgclf-ray") not in (None, ours["imgclf-ray"]):
        raise EnvironmentMismatch(f"{where} has imgclf-ray {theirs['imgclf-ray']} installed, this client "
                                  f"{ours['imgclf-ray']}: {FIX}")
    return found


def _version(md, dist: str):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


@dataclass
class Submitted:
    run_id: str
    action: str  # submitted | resubmitted | already <STATUS>
    previous: Optional[str] = None  # the earlier attempt's status when resubmitted


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _guard(address: str, what: str):
    """Map the Jobs client's exceptions to one readable ClusterError."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except UserError:
        raise
    except AuthenticationError as exc:
        raise ClusterError(f"{address}: {_first_line(exc)} — this cluster uses token authentication: "
                           "set RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or a file named by "
                           "RAY_AUTH_TOKEN_PATH (never in the job spec)") from None
    except (ConnectionError, OSError) as exc:
        raise ClusterError(f"{address}: cannot reach the Ray Jobs API ({_first_line(exc)}); is the "
                           "dashboard running and --address right?") from None
    except (RuntimeError, ValueError) as exc:
        message = _first_line(exc)
        if "404" in message or "does not exist" in message:
            raise ClusterError(f"{address}: no run {what!r} on this cluster") from None
        raise ClusterError(f"{address}: {what}: {message}") from None


DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def default_address() -> str:
    """$RAY_API_SERVER_ADDRESS, else an http(s) $RAY_ADDRESS, else the local dashboard."""
    import os

    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


def client(address: str):
    """A Jobs API client for exactly ``address`` (Ray's own client would let $RAY_ADDRESS win)."""
    import logging
    import os

    from ray.job_submission import JobSubmissionClient

    # Ray's client logs each package upload and websocket event at INFO; our CLI says what matters.
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        with _guard(address, "connect"):
            return JobSubmissionClient(address)
    finally:
        os.environ.update(saved)


def _attempts(jobs, run_id: str) -> list:
    """The cluster's submissions of this run, oldest first (the first has the run id as its
    submission id, retries ``<run id>-attempt<N>``)."""
    mine = [j for j in jobs.list_jobs() if (j.metadata or {}).get("imgclf_run_id") == run_id]
    return sorted(mine, key=lambda j: (j.start_time or 0, j.submission_id or ""))


def latest_submission(jobs, run_id: str) -> str:
    """The submission id of the run's latest attempt (``run_id`` itself when it names one)."""
    found = _attempts(jobs, run_id)
    return found[-1].submission_id if found else run_id


_PATH_KEYS = ("source.uri", "source.labels.table", "sink.uri", "model.uri", "incremental.state",
              "cluster.artifact")


def check_portable(spec: JobSpec, spec_file: str) -> None:
    """Refuse what means nothing on a cluster: paths relative to this machine's folder, a run
    without Ray."""
    if spec.run.executor == "local":
        raise SpecError(f"{spec_file}: run.executor: local runs on one machine without Ray; a job "
                        "submitted to a Ray cluster needs run.executor: ray")
    for dotted in _PATH_KEYS:
        value = spec
        for part in dotted.split("."):
            value = getattr(value, part, None)
            if value is None:
                break
        if dotted == "model.uri" and isinstance(value, str) and value.startswith("models:/"):
            _check_registry(spec, spec_file)
            continue
        if isinstance(value, str) and "://" not in value and not value.startswith("/"):
            raise SpecError(f"{spec_file}: {dotted}: {value!r} is relative to this machine's folder; a "
                            "cluster job needs a location every node reads (s3://..., or an absolute "
                            "path on shared storage)")


def _check_registry(spec: JobSpec, spec_file: str) -> None:
    """A models:/ model is resolved by the driver on the cluster: its registry must be one the cluster
    reaches, never a file on this machine (a laptop's sqlite database)."""
    from imgclf_ray.models.mlflow_registry import is_local_file, tracking_uri

    if not spec.model.tracking_uri:
        raise SpecError(f"{spec_file}: model.tracking_uri: a submitted job names its registry (the driver on the "
                        f"cluster resolves {spec.model.uri} and does not see this machine's MLFLOW_TRACKING_URI)")
    uri = tracking_uri(spec.model.tracking_uri, f"{spec_file}: model.tracking_uri")
    if is_local_file(uri):
        raise SpecError(f"{spec_file}: model.tracking_uri: {uri} is a file on this machine; the job's driver runs on "
                        f"the cluster and resolves {spec.model.uri} there: give a registry the cluster reaches "
                        "(an MLflow tracking server, http://..., or a database URL)")


def submit(address: str, spec_file: str, overrides: list[str], spec: JobSpec, run_id: str,
           date: Optional[str] = None, check: bool = True) -> Submitted:
    """Submit a run; a run id the cluster already has is not submitted again: a pending, running
    or finished run is left as it is (``already <STATUS>``), a failed or stopped one is submitted
    again as ``<run id>-attempt<N>`` with the same run id (it resumes: the sink removes the dead
    attempt's files at commit). The first attempt's submission id is the run id itself, so of two
    submissions racing for the same run the Jobs API accepts one.
    With ``date`` the driver runs ``--date`` (so a date committed earlier stays a no-op even when
    the cluster has forgotten the submission), else ``--run-id``. ``check``: the pre-flight probe
    of the cluster's Python first (``preflight``)."""
    import imgclf_ray

    check_portable(spec, spec_file)
    jobs = client(address)
    with _guard(address, run_id):
        attempts = _attempts(jobs, run_id)
        previous = str(attempts[-1].status.value) if attempts else None
        if previous is not None and previous not in ("FAILED", "STOPPED"):
            return Submitted(run_id, f"already {previous}")
        if spec.incremental is not None and spec.incremental.overlap == "refuse":
            _refuse_overlap(jobs, spec.name, run_id)
    if check:
        preflight(address, spec)
    with _guard(address, run_id):
        submission_id = f"{run_id}-attempt{len(attempts) + 1}" if attempts else run_id
        staging = Path(tempfile.mkdtemp(prefix="imgclf-submit-"))
        try:
            shutil.copyfile(spec_file, staging / SPEC_FILE)
            sets = " ".join(f"--set {_quote(item)}" for item in overrides)
            which = f"--date {_quote(date)}" if date else f"--run-id {_quote(run_id)}"
            try:
                jobs.submit_job(
                    entrypoint=f"python -m imgclf_ray run {SPEC_FILE} {which} --ray -q {sets}".strip(),
                    submission_id=submission_id,
                    runtime_env={"working_dir": str(staging), "py_modules": [str(Path(imgclf_ray.__file__).parent)],
                                 "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)}},
                    metadata={"imgclf_job": spec.name, "imgclf_run_id": run_id},
                )
            except RuntimeError as exc:
                if "already exists" in str(exc):  # another submission of this run won the race
                    return Submitted(run_id, "already submitted")
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return Submitted(run_id, "resubmitted" if previous else "submitted", previous)


def _refuse_overlap(jobs, job: str, run_id: str) -> None:
    """JobLocked (exit 75) when another night of this incremental job is pending or running on the
    cluster: it would wait for the job's lock there, or refuse; better said before submitting."""
    from imgclf_ray.io.lock import JobLocked

    for other in jobs.list_jobs():
        meta = other.metadata or {}
        status = str(other.status.value)
        if meta.get("imgclf_job") == job and meta.get("imgclf_run_id") not in (None, run_id) \
                and status in ("PENDING", "RUNNING"):
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime((other.start_time or 0) / 1000))
            raise JobLocked(f"job {job}: night {meta['imgclf_run_id']} is still {status} on the cluster (started "
                            f"{since}); run {run_id} was not submitted (two nights never select the same "
                            "images). incremental.overlap: wait lets it wait on the cluster instead")


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


@dataclass
class RunStatus:
    run_id: str
    status: str
    message: str
    started: Optional[float]
    ended: Optional[float]
    entrypoint: str


def status(address: str, run_id: str, jobs=None) -> RunStatus:
    """The run's latest attempt as the Jobs API reports it (``jobs``: a client to reuse)."""
    jobs = jobs or client(address)
    with _guard(address, run_id):
        info = jobs.get_job_info(latest_submission(jobs, run_id))
    return RunStatus(run_id, str(info.status.value), info.message or "",
                     info.start_time / 1000 if info.start_time else None,
                     info.end_time / 1000 if info.end_time else None, info.entrypoint or "")


def logs(address: str, run_id: str, follow: bool = False) -> Iterator[str]:
    """The run's driver log so far, or (``follow``) as it grows until the run ends."""
    jobs = client(address)
    with _guard(address, run_id):
        run_id = latest_submission(jobs, run_id)
        if not follow:
            yield jobs.get_job_logs(run_id)
            return
        import asyncio

        loop = asyncio.new_event_loop()
        try:
            stream = jobs.tail_job_logs(run_id).__aiter__()
            while True:
                try:
                    yield loop.run_until_complete(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            loop.close()


def wait(address: str, run_id: str, timeout: Optional[float] = None, poll: float = 1.0) -> RunStatus:
    """Block until the run reaches SUCCEEDED, FAILED or STOPPED (or ``timeout`` seconds pass)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    jobs = client(address)
    while True:
        current = status(address, run_id, jobs)
        if current.status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return current
        time.sleep(poll)


def stop(address: str, run_id: str, timeout: float = STOP_WAIT_S + 30) -> RunStatus:
    """Ask the cluster to stop the run and wait until it has: it stops at its next safe point,
    committing nothing, or finishes a commit under way (Ray kills it after STOP_WAIT_S)."""
    jobs = client(address)
    with _guard(address, run_id):
        jobs.stop_job(latest_submission(jobs, run_id))
    return wait(address, run_id, timeout)
