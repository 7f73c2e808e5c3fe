"""Rows and worker seconds per stage (a Ray actor, or an object in this process for a local run),
and the progress display that polls them."""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from imgclf_ray.progress import Progress

log = logging.getLogger(__name__)


class StageMetrics:
    """Rows and worker seconds per stage, summed over all tasks and actors."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}
        self.first_batch_at: Optional[float] = None
        self.user_error_seen: Optional[tuple[str, str]] = None

    def record_user_error(self, kind: str, message: str) -> None:
        """A stage met a user's error (the UserError subclass's name, its message): the first is kept."""
        if self.user_error_seen is None:
            self.user_error_seen = (kind, message)

    def first_user_error(self) -> Optional[tuple[str, str]]:
        return self.user_error_seen

    def add(self, stage: str, rows: int, seconds: float) -> None:
        if stage == "predict" and self.first_batch_at is None:
            self.first_batch_at = time.time()
        entry = self.totals.setdefault(stage, [0, 0.0])
        entry[0] += rows
        entry[1] += seconds

    def first_batch(self) -> Optional[float]:
        """Unix time the first predicted batch was reported."""
        return self.first_batch_at

    def snapshot(self, timeout: Optional[float] = None) -> dict[str, dict[str, float]]:
        return {stage: {"rows": int(rows), "worker_seconds": round(sec, 3),
                        "rows_per_worker_second": round(rows / sec, 1) if sec > 0 else None}
                for stage, (rows, sec) in self.totals.items()}


class RayMetrics:
    """A StageMetrics actor on the driver's node, called like the object itself: a worker node lost
    mid-run must not take it (and the run's bookkeeping) with it; the driver's own node going means
    the run goes anyway."""

    def __init__(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.ray = ray
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.handle = ray.remote(num_cpus=0, scheduling_strategy=here)(StageMetrics).remote()

    def reporter(self) -> "ActorReporter":
        return ActorReporter(self.handle)

    def add(self, stage: str, rows: int, seconds: float) -> None:
        self.handle.add.remote(stage, rows, seconds)

    def snapshot(self, timeout: Optional[float] = None) -> dict[str, dict[str, float]]:
        return self.ray.get(self.handle.snapshot.remote(), timeout=timeout)

    def first_batch(self) -> Optional[float]:
        return self.ray.get(self.handle.first_batch.remote())

    def first_user_error(self) -> Optional[tuple[str, str]]:
        return self.ray.get(self.handle.first_user_error.remote())

    def close(self) -> None:
        self.ray.kill(self.handle)


class ActorReporter:
    """The stages' reporter: forwards (stage, rows, seconds) to the StageMetrics actor, without
    waiting for an answer."""

    def __init__(self, handle):
        self.handle = handle

    def __call__(self, stage: str, rows: int, seconds: float) -> None:
        self.handle.add.remote(stage, rows, seconds)

    def user_error(self, exc: BaseException) -> None:
        """Report a user's error and wait until it is recorded (the stage raises it next)."""
        import ray

        ray.get(self.handle.record_user_error.remote(type(exc).__name__, str(exc)))


class Watch:
    """Polls the run's metrics in a background thread and moves the progress display."""

    def __init__(self, metrics, progress: Progress, every: float = 0.5, split: bool = False):
        """``split``: files become several rows each, so the count is of files read (the known
        total) and the rows made so far go beside it."""
        self.metrics, self.progress, self.every, self.split = metrics, progress, every, split
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self, timeout: Optional[float] = None) -> None:
        snapshot = self.metrics.snapshot(timeout)
        rows = snapshot.get("predict", {}).get("rows", 0)
        if self.split:
            self.progress.set(min(snapshot.get("read", {}).get("rows", 0), self.progress.total or 0), rows)
        else:
            self.progress.set(rows)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._poll(timeout=10 * self.every)  # a lost cluster must not hold the display
            except Exception:  # noqa: BLE001 - progress display must never break a run
                log.debug("progress poll failed", exc_info=True)
                self.progress.set(self.progress.count)  # the periodic line still comes

    def __enter__(self) -> "Watch":
        if self.progress.mode != "off":
            self._thread.start()
        return self

    def __exit__(self, exc_type, *_) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
            if exc_type is None:
                self._poll()
        self.progress.close()
