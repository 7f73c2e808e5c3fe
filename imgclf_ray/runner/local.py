"""``run.executor: local``: the same stages and the same commit, in this process, without Ray.

Reading and decoding (``LoadStage``) run in a pool of worker processes, a bounded number of chunks
of rows ahead (memory stays at a few chunks whatever the archive's size or a file's images); the predictor (``PredictStage``)
runs in this process, loaded while the workers start, and its output goes to the run's staging
folder through one Parquet writer. Everything around it is the runner's own (lock, staging, the
completeness check, the state record, the commit), so the guarantees are the ones a Ray run has. What
it gives up is Ray's retry: a worker process that dies fails the run, and nothing is committed.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import glob
import itertools
import multiprocessing
import os
import queue
import signal
import threading
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgclf_ray import faults
from imgclf_ray.errors import RunFailed
from imgclf_ray.io import sink
from imgclf_ray.io.storage import join
from imgclf_ray.messages import describe
from imgclf_ray.planner import Plan
from imgclf_ray.runner.metrics import StageMetrics

if TYPE_CHECKING:
    from imgclf_ray.runner.engine import Metrics, Output

ROW_GROUP_ROWS = 4096  # output rows buffered before a row group is written


def warm_up(framework: Optional[str]) -> None:
    """Import the network's libraries in a background thread (seconds of torch and torchvision
    imports), while this process lists the archive."""
    if framework == "torch":
        threading.Thread(target=_import_torch, daemon=True).start()


def _import_torch() -> None:
    import importlib

    try:
        importlib.import_module("torchvision")  # and torch
    except BaseException:  # noqa: BLE001 - a warm-up only: the run imports it again and says why;
        pass  # a run interrupted meanwhile exits while this import is half done (no traceback then)


def local_cpus() -> int:
    """The CPUs this process may use (its affinity mask, as containers and taskset set it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_resources(light: bool) -> dict[str, float]:
    """What the planner sees for a local run: this machine's CPUs, and its CUDA devices when the
    model is a network (a scikit-learn run never imports torch)."""
    gpus = 0
    # No NVIDIA device node, no CUDA: then torch is not imported here (seconds), only by the
    # predictor, while the decode workers start.
    if not light and glob.glob("/dev/nvidia[0-9]*"):
        import torch

        gpus = torch.cuda.device_count()
    return {"CPU": float(local_cpus()), "GPU": float(gpus)}


def decode_workers(plan: Plan, light: bool) -> int:
    """Worker processes that read and decode: every core when the predictor is light (a scikit-learn
    model, or none) or on a GPU, else half of them, the rest going to the network's threads here."""
    cpus = int(plan.cluster_cpus)
    return max(1, cpus if light or plan.gpus_per_actor else cpus // 2)


class LocalMetrics(StageMetrics):
    """StageMetrics kept in this process (the decode workers' figures come back with their batches)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def add(self, stage: str, rows: int, seconds: float) -> None:
        with self._lock:
            super().add(stage, rows, seconds)

    def reporter(self) -> "LocalMetrics":
        return self

    def user_error(self, exc: BaseException) -> None:
        """The stages' reporter contract (stages.common.Reporter): a user's error, before it is raised."""
        self.record_user_error(type(exc).__name__, str(exc))

    def __call__(self, stage: str, rows: int, seconds: float) -> None:
        self.add(stage, rows, seconds)

    def close(self) -> None:
        pass


class _Collected(list):
    """A decode worker's reporter: the batch's (stage, rows, seconds), sent back with it."""

    def __call__(self, stage: str, rows: int, seconds: float) -> None:
        self.append((stage, rows, seconds))


def _work(stage, tasks, out, driver: int) -> None:
    """A decode worker process: LoadStage over each batch ``tasks`` brings (None: stop), each chunk
    of rows sent on ``out`` with its (stage, rows, seconds) as it is made, then the batch's end
    (or the exception that ended it). It ends when its ``driver`` process is gone (killed)."""
    # Ctrl-C reaches the whole process group: the driver decides (imgclf_ray.interrupts).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            batch = tasks.get(timeout=5)
        except queue.Empty:
            if os.getppid() != driver:  # (the queue's other end is this process's too: no EOF tells it)
                return
            continue
        if batch is None:
            return
        faults.point("decode_worker")
        try:
            chunks = stage.chunks(batch)
            while True:
                stage.reporter = timings = _Collected()
                chunk = next(chunks, _END)
                if chunk is _END:
                    break
                out.send(("chunk", chunk, timings))
        except Exception as exc:  # noqa: BLE001 - raised again in the driver
            try:
                out.send(("error", exc, None))
            except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
                out.send(("error", RuntimeError(describe(exc)), None))
            continue
        out.send(("end", None, None))


_END = object()


def _batches(manifest: pa.Table, size: int) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, manifest.num_rows, size):
        part = manifest.slice(start, size)
        yield {name: part.column(name).to_numpy(zero_copy_only=False) for name in part.column_names}


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM held back in this thread (delivered when the block ends): processes it
    starts meanwhile keep them blocked, so that only the driver decides how a run stops
    (imgclf_ray.interrupts); it kills its workers itself."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class DecodePool:
    """LoadStage over a manifest in worker processes, its rows coming back in manifest order.
    Worker k takes every k-th batch (``ahead`` of them queued) and sends each chunk of rows
    (``LoadStage.chunks``) on a pipe of its own; a thread here keeps at most ``ahead`` of a
    worker's chunks, and a worker whose chunks are not wanted yet waits. Memory stays at a few
    chunks a worker, whatever the archive's size or a file's images (a table's rows, a video's
    frames)."""

    def __init__(self, stage, workers: int, metrics: Optional[StageMetrics] = None, ahead: int = 2):
        self.stage, self.metrics, self.ahead = stage, metrics, max(1, ahead)
        self.count = max(1, workers)
        stage.reporter = None  # each worker installs its own
        self.workers: list[tuple[Any, Any, queue.Queue]] = []  # (process, its batches, its chunks)
        self.stopping = threading.Event()
        self.finished = False

    def _start(self) -> None:
        # spawn: this process may hold threads (the predictor's loading, progress), which fork copies badly.
        from multiprocessing import resource_tracker

        ctx = multiprocessing.get_context("spawn")
        # Made before the mask: the first queue starts multiprocessing's resource tracker, whose
        # start unblocks SIGINT and SIGTERM in this thread (its workers then died of a group's SIGTERM).
        resource_tracker.ensure_running()
        made = [(ctx.Queue(), *ctx.Pipe(duplex=False)) for _ in range(self.count)]
        with _signals_held():  # the workers start now, inheriting the mask: deaf to Ctrl-C and a group's SIGTERM
            for tasks, receive, send in made:
                process = ctx.Process(target=_work, args=(self.stage, tasks, send, os.getpid()), daemon=True)
                process.start()
                send.close()  # the worker's end only: its death is this end's EOF
                chunks: queue.Queue = queue.Queue(self.ahead)
                threading.Thread(target=self._receive, args=(receive, chunks), daemon=True,
                                 name="imgclf-decoded").start()
                self.workers.append((process, tasks, chunks))

    def _receive(self, receive, chunks: queue.Queue) -> None:
        """One worker's messages into ``chunks`` (blocking when it holds ``ahead``); None when it died."""
        while not self.stopping.is_set():
            try:
                message = receive.recv()
            except (EOFError, OSError):
                chunks.put(None)
                return
            except Exception as exc:  # noqa: BLE001 - one that does not unpickle here (an exception whose
                # arguments are not its constructor's): the batch fails with what can be said of it
                message = ("error", RuntimeError(f"a decode worker's result could not be read ({describe(exc)})"), None)
            chunks.put(message)
        receive.close()

    def map(self, manifest: pa.Table, size: int) -> Iterator[dict[str, np.ndarray]]:
        """Starts the workers on the first batches now, then yields the decoded chunks in order."""
        self._start()
        batches = enumerate(_batches(manifest, size))
        sent = 0
        for k, batch in itertools.islice(batches, self.count * self.ahead):
            self.workers[k % self.count][1].put(batch)
            sent += 1
        return self._drain(sent, batches)

    def _drain(self, sent: int, batches: Iterator) -> Iterator[dict[str, np.ndarray]]:
        for k in itertools.count():
            if k >= sent:
                self.finished = True
                return
            chunks = self.workers[k % self.count][2]
            while True:
                message = chunks.get()
                if message is None:
                    raise RunFailed("a decode worker process died (killed, or out of memory); nothing was "
                                    "committed: run the same run id again (run.executor: local does not retry; "
                                    "run.executor: ray does)")
                kind, out, timings = message
                if kind == "error":
                    raise out
                if kind == "end":
                    break
                if self.metrics is not None:
                    for stage, rows, seconds in timings:
                        self.metrics.add(stage, rows, seconds)
                yield out
            for j, batch in itertools.islice(batches, 1):
                self.workers[j % self.count][1].put(batch)
                sent += 1

    def close(self) -> None:
        if not self.finished:  # batches still in the workers are not wanted
            self.abandon()
            return
        for _, tasks, _ in self.workers:
            tasks.put(None)
        for process, tasks, _ in self.workers:
            process.join()
            tasks.close()
        self._release()

    def abandon(self) -> None:
        """Stop the workers now (an interruption or a failure: their batches are not wanted)."""
        for process, tasks, _ in self.workers:
            if process.is_alive():
                process.kill()
            tasks.cancel_join_thread()  # batches a dead worker never took: not flushed at exit
        for process, tasks, _ in self.workers:
            process.join()
            tasks.close()
        self._release()

    def _release(self) -> None:
        """The receiving threads end: their workers are gone (EOF); one waiting to hand over a
        chunk nobody will take is let through and then stops."""
        self.stopping.set()
        for _, _, chunks in self.workers:
            while True:
                try:
                    chunks.get_nowait()
                except queue.Empty:
                    break

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        else:
            self.abandon()


class StagedWriter:
    """The run's staged Parquet files, in manifest order: a new file every ``max_rows`` rows, a
    row group once ROW_GROUP_ROWS rows are buffered; with ``scan_columns``, beside each file the
    ok rows' columns the archive-wide scan needs (``curation.archive.scan_inputs``)."""

    def __init__(self, fs, folder: str, schema: pa.Schema, max_rows: int, scan_columns: tuple[str, ...] = ()):
        self.fs, self.folder, self.schema, self.max_rows = fs, folder, schema, max_rows
        self.scan_columns = scan_columns
        self.scan: Optional[tuple[Any, pq.ParquetWriter]] = None  # the open file's scan inputs: handle, writer
        self.name = sink.staged_filename(uuid.uuid4().hex, 0)
        self.files = 0
        self.writer: Optional[pq.ParquetWriter] = None
        self.handle = None
        self.in_file = 0
        self.buffered: list[pa.Table] = []
        self.buffered_rows = 0
        fs.makedirs(folder, exist_ok=True)

    def write(self, table: pa.Table) -> None:
        # A copy into Arrow's own memory: the stage's columns are zero-copy views of the batch's
        # NumPy arrays, and holding those while the next batches' tensors come and go grew the
        # process by ~20 MB a batch (heap fragmentation: 2.4 GB after 1,000 images, 1.0 GB without).
        table = table.take(np.arange(table.num_rows))
        while table.num_rows:
            room = self.max_rows - self.in_file - self.buffered_rows
            self.buffered.append(table.slice(0, room))
            self.buffered_rows += self.buffered[-1].num_rows
            table = table.slice(room)
            if self.buffered_rows >= min(ROW_GROUP_ROWS, self.max_rows - self.in_file):
                self._flush()

    def _flush(self) -> None:
        rows = pa.concat_tables(self.buffered).replace_schema_metadata(self.schema.metadata) if self.buffered else None
        self.buffered, self.buffered_rows = [], 0
        if rows is None or not rows.num_rows:
            return
        if self.writer is None:
            self.handle = self.fs.open(join(self.folder, self.name.replace("{i}", str(self.files))), "wb")
            self.writer = pq.ParquetWriter(self.handle, self.schema)
        self.writer.write_table(rows)
        if self.scan_columns:
            self._keep_scan_rows(rows)
        self.in_file += rows.num_rows
        if self.in_file >= self.max_rows:
            self._close_file()

    def _close_file(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.handle.close()
            self.writer, self.handle, self.in_file = None, None, 0
            if self.scan is not None:
                handle, writer = self.scan
                writer.close()
                handle.close()
                self.scan = None
            self.files += 1

    def _keep_scan_rows(self, rows: pa.Table) -> None:
        """The ok rows' scan columns, streamed beside the open staged file (``*.scan``)."""
        from imgclf_ray.curation.archive import scan_rows, scan_schema

        if self.scan is None:
            name = self.name.replace("{i}", str(self.files)) + sink.SCAN_SUFFIX
            handle = self.fs.open(join(self.folder, name), "wb")
            self.scan = (handle, pq.ParquetWriter(handle, scan_schema(self.scan_columns)))
        self.scan[1].write_table(scan_rows(rows, self.scan_columns))

    def close(self) -> None:
        self._flush()
        self._close_file()

    def __enter__(self) -> "StagedWriter":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
            return
        # A failed run: the open file is closed now, unfinished, so that it is in the staging
        # folder before the run discards it (on S3 an upload left open would complete whenever
        # the handle is collected: a part appearing in the staging folder after its discard).
        self.buffered, self.buffered_rows = [], 0
        handles = [self.handle, self.scan[0] if self.scan else None]
        self.writer, self.handle, self.scan = None, None, None
        for handle in handles:
            if handle is not None:
                try:
                    handle.close()
                except Exception:  # noqa: BLE001 - the run's own error is the one to report
                    pass


class LocalTasks:
    """The archive pass's tasks, called in this process (runner.passes.archive_checks)."""

    cpus = 1

    @staticmethod
    def submit(fn: Callable, *args, num_returns: int = 1):
        out = fn(*args)
        return list(out) if num_returns > 1 else out

    @staticmethod
    def get(refs):
        return refs

    @staticmethod
    def put(obj):
        return obj


class LocalEngine:
    """runner.job's engine for ``run.executor: local`` (see the module's docstring)."""

    name = "local"
    tasks = LocalTasks()

    def __init__(self, light: bool, in_process: bool = False):
        self.light = light
        self.in_process = in_process  # load_batches in this process: no workers to start (small inputs)

    def resources(self) -> dict[str, float]:
        return local_resources(self.light)

    def metrics(self) -> LocalMetrics:
        return LocalMetrics()

    def load_batches(self, manifest: pa.Table, plan: Plan, stage, columns: list[str], files: int,
                     ordered: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``files`` rows through ``stage``, always in manifest order."""
        if self.in_process:
            for batch in _batches(manifest, files):
                out = stage(batch)
                yield {c: out[c] for c in columns}
            return
        with DecodePool(stage, decode_workers(plan, self.light)) as pool:
            for batch in pool.map(manifest, files):
                yield {c: batch[c] for c in columns}

    def classify(self, run, manifest: pa.Table, output: "Output", metrics: "Metrics", clusterer, rules) -> None:
        from imgclf_ray.runner.build import files_per_call, load_stage, predict_config
        from imgclf_ray.stages import PredictStage

        spec, plan = run.spec, run.resources
        with StagedWriter(output.fs, output.path, output.schema, spec.sink.max_rows_per_file,
                          output.scan_columns) as writer, \
                DecodePool(load_stage(run, None, clusterer), decode_workers(plan, self.light), metrics) as pool:
            batches = pool.map(manifest, files_per_call(spec, plan))  # the workers start now...
            # ...while the model loads here: one predictor per GPU (else one on this CPU, with
            # every core's threads), each taking plan.calls_per_actor batches at once.
            threads = max(1, int(plan.cluster_cpus)) if plan.device == "cpu" else None
            predictors = [PredictStage(predict_config(run, output.run_id, threads, device), metrics, rules)
                          for device in plan.devices()]
            _predict_all(writer.write, predictors, plan.calls_per_actor, batches, plan.batch_size)


def _predict_all(write: Callable[[pa.Table], None], predictors: list, calls: int,
                 batches: Iterator[dict[str, np.ndarray]], size: int) -> None:
    """Each batch's output rows written, in order. One predictor taking one batch at a time: in
    this thread. Otherwise threads, the batches dealt to the predictors in turn, ``calls`` at once
    on each: one batch's host work overlaps another's forward pass (torch releases the GIL). A
    batch's rows are written and dropped at once: they hold views of its arrays (a 1,000-image
    run held 500 MB more when they lived until the next batch was predicted)."""
    if len(predictors) == 1 and calls == 1:
        for batch in batches:
            write(_predict(predictors[0], batch, size))
        return
    window = len(predictors) * calls
    with cf.ThreadPoolExecutor(window, thread_name_prefix="imgclf-predict") as pool:
        pending: deque = deque()
        try:
            for k, batch in enumerate(batches):
                pending.append(pool.submit(_predict, predictors[k % len(predictors)], batch, size))
                if len(pending) >= window:
                    write(pending.popleft().result())
            while pending:
                write(pending.popleft().result())
        finally:
            for future in pending:  # a failure or an interruption: the batches not started are not wanted
                future.cancel()


def _predict(predict, batch: dict[str, np.ndarray], size: int) -> pa.Table:
    n = len(batch["status"])
    if n <= size:
        return predict(batch)
    return pa.concat_tables([predict({k: v[i:i + size] for k, v in batch.items()}) for i in range(0, n, size)])
