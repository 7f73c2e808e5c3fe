"""The engine contract: what ``runner.job`` asks of an executor. Ray Data (``runner.build.RayEngine``)
and the in-process executor (``runner.local.LocalEngine``) implement it; the stages, the plan, the
read-back, the commit and the guarantees are shared. ``tests/test_layers.py`` has a type checker
(mypy) verify both against these protocols (``runner/conformance.py``), so that the two cannot drift apart (they had: the
local metrics once took a stage's report with other arguments than the stages pass)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Protocol

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from imgclf_ray.io.sink import Staging
    from imgclf_ray.planner import Plan
    from imgclf_ray.runner.plan import RunPlan


@dataclass(frozen=True)
class Output:
    """Where an engine writes a run's rows: the attempt's staging folder (on the sink's filesystem,
    looked up once) and the output schema. With ``scan_columns`` the writer also keeps those
    columns of the ok rows it stages, for the archive-wide checks' scan
    (``curation.archive.scan_inputs``: one ``*.scan`` file per staged file or write task)."""

    run_id: str
    staging: "Staging"
    schema: "pa.Schema"
    scan_columns: tuple[str, ...] = ()

    @property
    def fs(self) -> Any:
        return self.staging.sink.fs

    @property
    def path(self) -> str:
        return self.staging.path


class Reporter(Protocol):
    """What a stage reports to (``stages.common``): rows and seconds per batch, and a user's error
    before it is raised (Ray does not carry the exception's type back to the driver)."""

    def __call__(self, stage: str, rows: int, seconds: float) -> None: ...

    def user_error(self, exc: BaseException) -> None: ...


class Metrics(Protocol):
    """The run's rows and worker seconds per stage, and the first user error a stage reported."""

    def reporter(self) -> Reporter: ...

    def add(self, stage: str, rows: int, seconds: float) -> None: ...

    def snapshot(self, timeout: Optional[float] = None) -> dict[str, dict[str, float]]: ...

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

    def load_batches(self, manifest: Any, plan: "Plan", stage: Any, columns: list[str], files: int,
                     ordered: bool = False) -> Iterator[dict[str, "np.ndarray"]]: ...

    def classify(self, run: "RunPlan", manifest: Any, output: Output, metrics: Metrics, clusterer: Any,
                 rules: Any) -> None: ...
