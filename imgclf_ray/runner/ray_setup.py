"""Starting or joining Ray for a run, with its console lines kept out of quiet (cron) output."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Optional

from imgclf_ray import faults, interrupts


def ensure_ray(address: Optional[str] = None, verbose: bool = False, quiet: bool = False) -> Optional[str]:
    """Join the given cluster (or RAY_ADDRESS), else start a local Ray instance for this process
    (never a silent join of whatever ``ray start`` left running on this machine). With ``quiet``
    (the CLI under cron), Ray's own console lines (its start-up warnings, the core worker's lines,
    worker output) go to a log file instead, whose path is returned; the session's own logs keep
    everything as usual. Never for an embedding program (it redirects this process's stderr)."""
    import ray

    ray_log = None
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": True}
        if quiet:
            ray_log = _ray_to_file()
            kwargs = {"configure_logging": False, "log_to_driver": False}
        # Ray's notice that a new instance has token authentication on (its default): every run
        # would print it. The session keeps token authentication; a notice that it is off stays.
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_no_token_notice)
        if address:
            _reachable(address)
            ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", include_dashboard=False, **kwargs)
        if ray_log:
            _log_to(ray_log, ("ray",))  # ray.init cleared the "ray" logger's handlers
        interrupts.reinstall()  # ray.init sets a SIGTERM handler of its own (SystemExit in the driver)
        if interrupts.in_command():
            _watch_gcs()
            _short_autoscaler_errors()
        faults.point("ray_started")
    # Right after start-up the node may not have reported its resources yet; the planner needs them.
    deadline = time.monotonic() + 30
    while not ray.cluster_resources().get("CPU") and time.monotonic() < deadline:
        time.sleep(0.1)
    import ray.data  # configures the "ray.data" logger; adjust it after that

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):  # the console; the session log keeps all
            if _drop_misleading_warnings not in handler.filters:
                handler.addFilter(_drop_misleading_warnings)
            handler.setLevel(logging.INFO if verbose else logging.WARNING)
    return ray_log


def _watch_gcs() -> None:
    """A CLI command's Ray cluster going away mid-run (its head torn down, the GCS killed): Ray's
    core worker ends this process once the GCS has not answered for
    ``gcs_rpc_server_reconnect_timeout_s`` (60 s: what a restarting GCS — KubeRay's fault
    tolerance — is given), and says so only in Ray's log files: the command would exit 1 without a
    line. A thread tries the GCS's port every second; unanswered for 10 s less than Ray's limit
    since it last answered (``IMGCLF_CLUSTER_LOST_AFTER_S`` sets it, at most 5 s less: tests), it
    prints one ``error:`` line saying what was committed and exits 1 (or, when the command has
    printed its last line already and Ray's shutdown hangs, exits with that line's code). What is
    left is what a killed driver leaves (the run-id lock freed on a local sink, an S3 lease taken
    over at once from this host, after 60 s from another; staged files that the next run of the
    run id undoes). Not for a Ray client (``ray://``): its process
    has no core worker, and the GCS address it is told is the cluster's inside address."""
    import threading

    import ray

    global _watching
    try:
        if ray.util.client.ray.is_connected():
            return
        gcs = ray.get_runtime_context().gcs_address
        limit = float(os.environ.get("RAY_gcs_rpc_server_reconnect_timeout_s") or 60)
        grace = min(float(os.environ.get("IMGCLF_CLUSTER_LOST_AFTER_S") or limit - 10), limit - 5)
    except Exception:  # noqa: BLE001 - nothing to watch (or a setting that is not a number): Ray's behaviour stays
        return
    if _watching or grace <= 0:
        return
    _watching = True

    def watch() -> None:
        global _watching
        answered = time.monotonic()  # the last probe that found the GCS: silence is counted from it
        while ray.is_initialized():
            if refused(gcs, timeout=2) is None:
                answered = time.monotonic()
            elif time.monotonic() - answered >= grace:
                _cluster_lost(gcs, time.monotonic() - answered, limit)
            time.sleep(1)
        _watching = False

    threading.Thread(target=watch, name="imgclf-gcs-watch", daemon=True).start()


_watching = False


def _cluster_lost(gcs: str, seconds: float, limit: float) -> None:
    """The line, then exit 1 (from the watching thread: the main thread is blocked in Ray). A
    commit under way is given until shortly before Ray's own limit; no commit starts once the line
    is decided (``interrupts.no_commit_after``)."""
    head = (f"error: the Ray cluster stopped answering (nothing at its GCS, {gcs}, for {seconds:.0f} s; "
            f"Ray ends a driver at {limit:.0f} s)")
    deadline = time.monotonic() + max(0.0, limit - seconds - 2)
    while True:  # the gate held only to look: a commit under way may start a nested step
        with interrupts.no_commit_after() as committing:
            if interrupts.ended() is not None:  # the command said its last line (Ray's shutdown hangs)
                os._exit(interrupts.ended())
            if not committing() or time.monotonic() >= deadline:
                _say_lost(head, committing())
        time.sleep(0.1)


def _say_lost(head: str, committing: bool) -> None:
    """Print the line (what was committed, or the commit left under way) and exit 1 at once."""
    import sys

    try:
        line = (interrupts.outcome(head) if not committing else
                f"{head} during the commit of {interrupts.committed_what()}: run the same command again "
                "(it finishes or undoes that commit)")
        mark_failed()
        try:
            fresh = "\n" if sys.stderr.isatty() else ""  # after a progress bar's unfinished line
        except (AttributeError, ValueError, OSError):
            fresh = ""
        sys.stderr.write(fresh + line + "\n")
        sys.stderr.flush()
    finally:
        os._exit(1)


def _short_autoscaler_errors() -> None:
    """Ray sends every driver the autoscaler's failure with its Python stack — on every ``ray
    stop`` or head pod deleted mid-run (SIGTERM to the autoscaler) — printed by a thread of Ray's
    on stdout: in a CLI command, its first line only (Ray's function that prints it, wrapped; the
    autoscaler's own log keeps the stack)."""
    try:
        from ray._private import worker
    except ImportError:  # Ray moved it: its own output stays as it is
        return

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "imgclf_short", False):
        return

    def printing(data, *args, **kwargs):
        lines = data.get("lines") if isinstance(data, dict) else None
        if lines and str(lines[0]).startswith("The autoscaler failed"):
            head, *rest = str(lines[0]).splitlines()
            data = {**data, "lines": [f"{head.rstrip(':')}: {rest[0].strip()}" if rest else head]}
        return original(data, *args, **kwargs)

    printing.imgclf_short = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = printing


def refused(address: str, timeout: float) -> Optional[OSError]:
    """None when something accepts a TCP connection at ``host:port`` (``[v6]:port`` too), else why
    not: the GCS of a Ray that ``ray start`` left, one a run joins, the one it watches."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
        return None
    except ValueError:
        return OSError(f"not a host:port address: {address}")
    except OSError as exc:
        return exc


def _reachable(address: str) -> None:
    """A ``host:port`` address with nothing listening: one clear line now (``ray.init`` would retry
    for minutes, silently under a quiet run). ``auto``, ``local`` and ``ray://`` are Ray's own."""
    from imgclf_ray.errors import UserError

    host, _, port = address.rpartition(":")
    if address in ("auto", "local") or "://" in address or not host or not port.isdigit():
        return
    for attempt in range(3):  # a head restarting this moment gets two more seconds
        if attempt:
            time.sleep(1)
        failure = refused(address, timeout=10)
        if failure is None:
            return
    raise UserError(f"nothing answers at the Ray address {address} ({type(failure).__name__}: "
                    f"{failure.strerror or failure}): start a cluster there (ray start --head), or check "
                    "--address / RAY_ADDRESS / run.ray_address")


def _log_to(path: str, names: tuple[str, ...]) -> None:
    """Replace the console handlers of these loggers by one appending to ``path``."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in names:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if not isinstance(h, logging.FileHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False


KEEP_LOGS = 10  # the Ray log files of this many runs that did not fail are kept
KEEP_FAILED_LOGS = 50  # and of this many that failed (``mark_failed``)
current_log: Optional[str] = None  # this process's, once Ray's console output goes to a file


def log_folder() -> str:
    """Where the runs' log files go: ``IMGCLF_LOG_DIR`` (made if missing), else the temp folder."""
    import tempfile

    folder = os.path.expanduser(os.environ.get("IMGCLF_LOG_DIR") or tempfile.gettempdir())  # (~ in a crontab)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        from imgclf_ray.errors import UserError

        raise UserError(f"IMGCLF_LOG_DIR: cannot make the log folder {folder} ({exc.strerror})") from None
    return folder


def _prune_logs(folder: str) -> None:
    """Delete the log files of earlier runs but the newest KEEP_LOGS of those that did not fail
    and the newest KEEP_FAILED_LOGS of those that did."""
    import glob

    logs = glob.glob(os.path.join(folder, "imgclf-ray-*.log"))
    for failed, keep in ((False, KEEP_LOGS), (True, KEEP_FAILED_LOGS)):
        these = [p for p in logs if p.endswith("-failed.log") == failed]
        try:
            these.sort(key=os.path.getmtime)
        except OSError:
            return  # another run pruned meanwhile
        for old in these[:-keep] if len(these) > keep else []:
            try:
                os.remove(old)
            except OSError:
                pass


def mark_failed() -> Optional[str]:
    """Keep this process's Ray log file (the run failed): renamed ``imgclf-ray-<pid>-failed.log``,
    which pruning leaves alone; its new path."""
    global current_log
    if current_log is None or not os.path.exists(current_log):
        return None
    if current_log.endswith("-failed.log"):
        return current_log
    failed = current_log[: -len(".log")] + "-failed.log"
    try:
        os.replace(current_log, failed)  # the open handlers keep writing to the same file
    except OSError:
        return None
    current_log = failed
    return failed


def _ray_to_file() -> Optional[str]:
    """Send Ray's console output in this process to a file; its path. Python loggers under "ray"
    get a file handler ("ray._private" too: ray.init clears "ray" itself before it warns), and
    file descriptor 2 goes to the file (``output_to_file``)."""
    return output_to_file(("ray._private", "ray", "ray.data", "ray.train"))


def output_to_file(loggers: tuple[str, ...] = ()) -> Optional[str]:
    """Point file descriptor 2 — where Ray's C++ core worker, C libraries (libtiff, libjpeg) and
    the processes started from here write — at the run's log file, and ``loggers`` there too, while
    ``sys.stderr`` (imgclf's own lines) stays on the original stderr; the file's path. Once per
    process (a second call returns the same file). Nothing when ``sys.stderr`` is not this
    process's file descriptor 2 (a test runner's or an embedding program's capture): None."""
    import io
    import sys

    global current_log
    try:
        own = sys.stderr.fileno() == 2
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        own = False
    if current_log is None and not own:
        return None
    if current_log is None:
        folder = log_folder()
        path = os.path.join(folder, f"imgclf-ray-{os.getpid()}.log")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            from imgclf_ray.errors import UserError

            raise UserError(f"cannot write the run's log file {path} ({exc.strerror}): set IMGCLF_LOG_DIR "
                            "to a folder this user can write") from None
        _prune_logs(folder)  # (after: this run's file is one of the last 10)
        sys.stdout.flush()
        sys.stderr.flush()
        original = os.dup(2)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stderr = io.TextIOWrapper(io.FileIO(original, "w"),
                                      encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                                      errors="backslashreplace", line_buffering=True, write_through=True)
        current_log = path
    if loggers:
        _log_to(current_log, loggers)
    return current_log


_MISLEADING = (
    # Logged when a run starts while other tasks still hold the CPUs (an inventory run's listing
    # tasks, from_arrow_refs' block-metadata tasks); they finish in a moment, so "the Dataset job
    # will hang" is wrong.
    "does not have any available CPUs",
    # Logged because we switch Ray Data's bars off in favour of our own progress display.
    "Progress bars disabled",
    # Logged for every GPU predictor pool (its actors ask for a CPU and a GPU, as planned): a note
    # to Ray's developers, not a problem of the run.
    "Specifying both num_cpus and num_gpus",
)


def _no_token_notice(record: logging.LogRecord) -> bool:
    return "Token authentication is enabled for this Ray cluster" not in record.getMessage()


def _drop_misleading_warnings(record: logging.LogRecord) -> bool:
    """For Ray Data's console handlers: its misleading lines, and its errors — which come with a
    traceback, and which the run reports itself as one ``error:`` line (the session's log file,
    Ray Data's own handler, keeps them whole)."""
    if record.levelno >= logging.ERROR:
        return False
    message = record.getMessage()
    return not any(text in message for text in _MISLEADING)
