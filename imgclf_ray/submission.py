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
cluster's own environment (instance roles, its secrets), never from the submission.
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


class ClusterError(UserError):
    """The cluster cannot be reached, refuses our token, or does not know the run."""


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
        if isinstance(value, str) and "://" not in value and not value.startswith("/"):
            raise SpecError(f"{spec_file}: {dotted}: {value!r} is relative to this machine's folder; a "
                            "cluster job needs a location every node reads (s3://..., or an absolute "
                            "path on shared storage)")


def submit(address: str, spec_file: str, overrides: list[str], spec: JobSpec, run_id: str,
           date: Optional[str] = None) -> Submitted:
    """Submit a run; a run id the cluster already has is not submitted again: a pending, running
    or finished run is left as it is (``already <STATUS>``), a failed or stopped one is submitted
    again as ``<run id>-attempt<N>`` with the same run id (it resumes: the sink removes the dead
    attempt's files at commit). The first attempt's submission id is the run id itself, so of two
    submissions racing for the same run the Jobs API accepts one.
    With ``date`` the driver runs ``--date`` (so a date committed earlier stays a no-op even when
    the cluster has forgotten the submission), else ``--run-id``."""
    import imgclf_ray

    check_portable(spec, spec_file)
    jobs = client(address)
    with _guard(address, run_id):
        attempts = _attempts(jobs, run_id)
        previous = str(attempts[-1].status.value) if attempts else None
        if previous is not None and previous not in ("FAILED", "STOPPED"):
            return Submitted(run_id, f"already {previous}")
        submission_id = f"{run_id}-attempt{len(attempts) + 1}" if attempts else run_id
        staging = Path(tempfile.mkdtemp(prefix="imgclf-submit-"))
        try:
            shutil.copyfile(spec_file, staging / SPEC_FILE)
            sets = " ".join(f"--set {_quote(item)}" for item in overrides)
            which = f"--date {_quote(date)}" if date else f"--run-id {_quote(run_id)}"
            try:
                jobs.submit_job(
                    entrypoint=f"python -m imgclf_ray run {SPEC_FILE} {which} -q {sets}".strip(),
                    submission_id=submission_id,
                    runtime_env={"working_dir": str(staging), "py_modules": [str(Path(imgclf_ray.__file__).parent)]},
                    metadata={"imgclf_job": spec.name, "imgclf_run_id": run_id},
                )
            except RuntimeError as exc:
                if "already exists" in str(exc):  # another submission of this run won the race
                    return Submitted(run_id, "already submitted")
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return Submitted(run_id, "resubmitted" if previous else "submitted", previous)


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


def stop(address: str, run_id: str, timeout: float = 60.0) -> RunStatus:
    """Ask the cluster to stop the run and wait until it has (its staged files stay uncommitted)."""
    jobs = client(address)
    with _guard(address, run_id):
        jobs.stop_job(latest_submission(jobs, run_id))
    return wait(address, run_id, timeout)
