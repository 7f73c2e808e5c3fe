"""The engine contract: what ``runner.job`` asks of an executor. Ray Data (``runner.build.RayEngine``)
and the in-process executor (``runner.local.LocalEngine``) implement it; the stages, the plan, the
read-back, the commit and the guarantees are shared. ``tests/test_layers.py`` has a type checker
(mypy) verify both against these protocols (``runner/conformance.py``), so that the two cannot drift apart (they had: the
local metrics once took a stage's report with other arguments than the stages pass)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Protocol

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from imgclf_ray.planner import Plan
    from imgclf_ray.runner.plan import RunPlan
    from imgclf_ray.spec import JobSpec


class Reporter(Protocol):
    """What a stage reports to (``stages.common``): rows and seconds per batch, and a user's error
    before it is raised (Ray does not carry the exception's type back to the driver)."""

    def __call__(self, stage: str, rows: int, seconds: float) -> None: ...

    def user_error(self, exc: BaseException) -> None: ...


class Metrics(Protocol):
    """The run's rows and worker seconds per stage, and the first user error a stage reported."""

    def reporter(self) -> Reporter: ...

    def add(self, stage: str, rows: int, seconds: float) -> None: ...

    def snapshot(self) -> dict[str, dict[str, float]]: ...

    def first_batch(self) -> Optional[float]: ...

    def first_user_error(self) -> Optional[tuple[str, str]]: ...

    def close(self) -> None: ...


class Tasks(Protocol):
    """Functions run as the engine's tasks (the archive pass, the read-back): submit returns a
    reference (or, with ``num_returns``, several), get the values, put an object for tasks."""

    cpus: int

    def submit(self, fn: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any: ...

    def get(self, refs: Any) -> Any: ...

    def put(self, obj: Any) -> Any: ...


class Engine(Protocol):
    """An executor of the run's plan."""

    name: str

    @property
    def tasks(self) -> Tasks: ...

    def resources(self) -> dict[str, float]: ...

    def metrics(self) -> Metrics: ...

    def load_batches(self, spec: "JobSpec", manifest: Any, plan: "Plan", stage: Any,
                     columns: list[str]) -> Iterator[dict[str, "np.ndarray"]]: ...

    def classify(self, run: "RunPlan", manifest: Any, run_id: str, metrics: Metrics, clusterer: Any, rules: Any,
                 fs: Any, staging_path: str, schema: "pa.Schema") -> None: ...
