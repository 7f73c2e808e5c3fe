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


def _reachable(address: str) -> None:
    """A ``host:port`` address with nothing listening: one clear line now (``ray.init`` would retry
    for minutes, silently under a quiet run). ``auto``, ``local`` and ``ray://`` are Ray's own."""
    import socket

    from imgclf_ray.errors import UserError

    host, _, port = address.rpartition(":")
    if address in ("auto", "local") or "://" in address or not host or not port.isdigit():
        return
    failure: OSError = OSError()
    for attempt in range(3):  # a head restarting this moment gets two more seconds
        if attempt:
            time.sleep(1)
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
            return
        except OSError as exc:
            failure = exc
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


KEEP_LOGS = 10  # the Ray log files of this many runs that did not fail are kept (failed ones: all)
current_log: Optional[str] = None  # this process's, once Ray's console output goes to a file


def _prune_logs(folder: str) -> None:
    """Delete the Ray log files of earlier runs but the newest KEEP_LOGS; those of failed runs
    (``mark_failed``) are kept."""
    import glob

    done = [p for p in glob.glob(os.path.join(folder, "imgclf-ray-*.log")) if not p.endswith("-failed.log")]
    try:
        done.sort(key=os.path.getmtime)
    except OSError:
        return  # another run pruned meanwhile
    for old in done[:-KEEP_LOGS] if len(done) > KEEP_LOGS else []:
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
    import tempfile

    global current_log
    try:
        own = sys.stderr.fileno() == 2
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        own = False
    if current_log is None and not own:
        return None
    if current_log is None:
        path = os.path.join(tempfile.gettempdir(), f"imgclf-ray-{os.getpid()}.log")
        _prune_logs(tempfile.gettempdir())
        sys.stdout.flush()
        sys.stderr.flush()
        original = os.dup(2)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
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
