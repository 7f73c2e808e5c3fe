"""At most one live attempt of a run id: a run-wide lock taken before any work starts.

``<sink>/_locks/<run_id>.lock`` holds who has it (attempt, host, pid, when). Two kinds, by where
the sink is:

* **Local folders** (and mounts): ``fcntl.flock`` on the file, held by the driver for the whole run.
  The kernel releases it when the process dies, so a killed driver never blocks the rerun that
  resumes it.
* **Object stores** (S3, MinIO): a lease. The file is created with a conditional write
  (``If-None-Match: *``: exactly one creator wins), renewed every ``RENEW_SECONDS`` by its holder
  with ``If-Match`` on its own ETag, and counts as abandoned when it was not renewed for
  ``EXPIRE_SECONDS`` or when its holder ran on this host and that process is gone. An abandoned
  lease is taken over with ``If-Match`` on the ETag that was judged abandoned, so of two attempts
  that both find it abandoned, one wins. Before it commits, the holder checks (again with
  ``If-Match``) that the lease is still its own.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any, Optional

from imgclf_ray.errors import UserError
from imgclf_ray.io.storage import filesystem, join
from imgclf_ray.spec import StorageSpec

LOCKS_DIR = "_locks"
RENEW_SECONDS = 10.0
EXPIRE_SECONDS = 60.0


class RunLocked(UserError):
    """Another live attempt holds the run id."""


class JobLocked(UserError):
    """Another night of the same incremental job is still running (exit 75, EX_TEMPFAIL: cron and
    schedulers read it as 'try again later')."""

    exit_code = 75


def _me(attempt: str, run_id: Optional[str] = None, started_at: Optional[float] = None) -> dict[str, Any]:
    import psutil

    return {"attempt": attempt, "run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_started": psutil.Process().create_time(), "started_at": started_at or time.time(),
            "renewed_at": time.time()}


def _process_alive(holder: dict[str, Any]) -> bool:
    import psutil

    try:
        return abs(psutil.Process(int(holder["pid"])).create_time() - float(holder["pid_started"])) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _busy(run_id: str, holder: dict[str, Any]) -> RunLocked:
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("renewed_at", 0))))
    return RunLocked(f"run {run_id} is being run by another attempt ({holder.get('attempt')} on "
                     f"{holder.get('host')}, pid {holder.get('pid')}, last seen {since}); nothing was done. "
                     "Wait for it to finish, or stop it; a killed attempt stops holding the run id "
                     f"at once on its own host, else {int(EXPIRE_SECONDS)} s after its last renewal")


class RunLock:
    """The lock on one run id; ``acquire`` it, ``verify`` it before committing, ``release`` it."""

    def __init__(self, sink_uri: str, run_id: str, attempt: str, storage: StorageSpec = StorageSpec(),
                 name: Optional[str] = None, fs: Any = None, root: str = ""):
        self.run_id, self.attempt, self.storage = run_id, attempt, storage
        self.started_at = time.time()
        self.uri = join(sink_uri, LOCKS_DIR, f"{name or run_id}.lock")
        self.fs, self.path = (fs, join(root, LOCKS_DIR, f"{name or run_id}.lock")) if fs is not None else \
            filesystem(self.uri, storage)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self._fd: Optional[int] = None
        self._etag: Optional[str] = None
        self._lost = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.guards: list["RunLock"] = []  # other locks the run holds, verified with this one

    @classmethod
    def on(cls, sink: Any, run_id: str, attempt: str, name: Optional[str] = None) -> "RunLock":
        """The lock in ``sink`` (an ``io.sink.Sink``: its filesystem, looked up once)."""
        return cls(sink.uri, run_id, attempt, sink.storage, name, fs=sink.fs, root=sink.root)

    # -- local: flock -------------------------------------------------------------------------
    def _acquire_local(self) -> None:
        import fcntl

        locks = os.path.dirname(self.path)
        self._made = [p for p in (os.path.dirname(locks), locks) if not os.path.isdir(p)]
        os.makedirs(locks, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
                except ValueError:
                    holder = {}
                os.close(fd)
                raise self._busy(holder) from None
            try:  # the holder we waited on may have removed the file as it released it
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._me()).encode(), 0)
        self._fd = fd

    def _me(self) -> dict[str, Any]:
        return _me(self.attempt, self.run_id, self.started_at)

    def _still_ours(self) -> bool:
        """Whether the lock file at the path is still the one this attempt locked."""
        try:
            here, ours = os.stat(self.path), os.fstat(self._fd)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)

    def _busy(self, holder: dict[str, Any]) -> UserError:
        return _busy(self.run_id, holder)

    # -- object stores: conditional writes ----------------------------------------------------
    def _put(self, **condition) -> bool:
        try:
            out = self.fs.pipe_file(self.path, json.dumps(self._me()).encode(), **condition)
        except (FileExistsError, OSError) as exc:
            if isinstance(exc, FileExistsError) or "pre-condition" in str(exc) or "412" in str(exc):
                return False
            raise
        self._etag = (out or {}).get("ETag") or self.fs.info(self.path).get("ETag")
        return True

    def _read_remote(self) -> tuple[Optional[dict[str, Any]], Optional[str]]:
        try:
            info = self.fs.info(self.path)
            return json.loads(self.fs.cat_file(self.path)), info.get("ETag")
        except FileNotFoundError:
            return None, None
        except ValueError:
            return {}, self.fs.info(self.path).get("ETag")

    def _abandoned(self, holder: dict[str, Any]) -> bool:
        if time.time() - float(holder.get("renewed_at", 0) or 0) > EXPIRE_SECONDS:
            return True
        return holder.get("host") == socket.gethostname() and not _process_alive(holder)

    def _acquire_remote(self) -> None:
        for _ in range(5):
            if self._put(mode="create"):
                return
            holder, etag = self._read_remote()
            if holder is None:
                continue  # released meanwhile: try to create it again
            if not self._abandoned(holder):
                raise self._busy(holder)
            if etag and self._put(IfMatch=etag):
                return
        raise self._busy(self._read_remote()[0] or {})

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                if not self._put(IfMatch=self._etag):
                    self._lost = True
                    return
            except Exception:  # noqa: BLE001 - a failed renewal is retried; verify() decides
                continue

    # -- the interface --------------------------------------------------------------------------
    def acquire(self) -> "RunLock":
        if self.local:
            self._acquire_local()
        else:
            self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
            self._acquire_remote()
            self._thread = threading.Thread(target=self._renew, name=f"lease-{self.run_id}", daemon=True)
            self._thread.start()
        return self

    def verify(self) -> None:
        """Raise RunLocked unless this attempt still holds the run id, and its ``guards`` theirs
        (checked before commit)."""
        for guard in self.guards:
            guard.verify()
        if self.local:
            if not self._still_ours():  # flock is not lost, but the file can be deleted under it
                raise RunLocked(f"run {self.run_id}: this attempt's lock file ({self.path}) was deleted while it "
                                "ran (the sink's folder removed?), so another attempt could take the run id; "
                                "nothing was committed")
            return
        if self._lost or not self._put(IfMatch=self._etag):
            holder = self._read_remote()[0] or {}
            raise RunLocked(f"run {self.run_id}: this attempt lost its lease to {holder.get('attempt')} "
                            f"({self.path.rsplit('/', 1)[-1]} was not renewed in time); nothing was committed")

    def release(self) -> None:
        self._stop.set()
        if self._fd is not None:
            if self._still_ours():  # not another attempt's file, made after ours was deleted
                os.unlink(self.path)  # while still locked: a later locker checks the inode it locked
            os.close(self._fd)
            self._fd = None
            for folder in (os.path.dirname(self.path), *self._made[:1]):  # _locks, the sink if we made it
                try:
                    os.rmdir(folder)
                except OSError:  # other runs' locks, or the run's output, are there
                    break
            return
        if self._thread is not None:
            self._thread.join(timeout=5)
            holder, _ = self._read_remote()
            if holder and holder.get("attempt") == self.attempt:
                self.fs.rm_file(self.path)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class JobLock(RunLock):
    """The lock on one incremental job, held by a night from its selection to its commit, so that
    two nights never select the same new images (``_locks/_job.<name>.lock``: no run id starts with
    '_'). The same machinery as a run id's lock: flock on local sinks, a lease on object stores."""

    def __init__(self, sink: Any, job: str, run_id: str, attempt: str):
        """The lock of job ``job`` in ``sink`` (an ``io.sink.Sink``)."""
        super().__init__(sink.uri, run_id, attempt, sink.storage, name=f"_job.{job}", fs=sink.fs, root=sink.root)
        self.job = job

    def _busy(self, holder: dict[str, Any]) -> UserError:
        if holder.get("run_id") == self.run_id:  # the same night again: the run id's own refusal
            return _busy(self.run_id, holder)
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("started_at") or 0)))
        return JobLocked(f"job {self.job}: night {holder.get('run_id')} is still running (on {holder.get('host')}, "
                         f"pid {holder.get('pid')}, started {started}); run {self.run_id} did nothing (two nights "
                         "never select the same images). incremental.overlap: wait waits for it")

    def acquire_waiting(self, seconds: float, every: float = 2.0, on_wait=None) -> "JobLock":
        """Acquire, trying again every ``every`` seconds for up to ``seconds``; then JobLocked.
        ``on_wait(exc)`` is told once, when the first try finds the lock held."""
        deadline = time.monotonic() + seconds
        told = False
        while True:
            try:
                return self.acquire()
            except JobLocked as exc:
                if time.monotonic() + every > deadline:
                    raise
                if on_wait is not None and not told:
                    on_wait(exc)
                    told = True
                time.sleep(every)
