"""The only code that assembles Ray Data calls: manifest -> read/decode tasks -> predictor actors
(``RayEngine``; ``runner.local`` runs the same stages without Ray)."""

from __future__ import annotations

import contextlib

from typing import TYPE_CHECKING, Optional

import pyarrow as pa

from imgclf_ray.planner import Plan
from imgclf_ray.registry import CURATION_CHECKS
from imgclf_ray.spec import JobSpec

if TYPE_CHECKING:
    from imgclf_ray.runner.engine import Output
    from imgclf_ray.runner.metrics import RayMetrics
    from imgclf_ray.runner.plan import RunPlan

# Checks that need the per-image measures (scores and hashes) of the decode tasks.
MEASURED_CHECKS = {n for n in CURATION_CHECKS.names() if CURATION_CHECKS.get(n).measured}


def embedding_of(spec: JobSpec):
    """(conditioning, feature spec) of the job's clustering embedding, or None."""
    from imgclf_ray.models.artifact import PreprocessCard

    if spec.cluster is None:
        return None
    return PreprocessCard.model_validate(spec.cluster.preprocess.model_dump()).conditioning(), spec.cluster.features


def files_per_call(spec: JobSpec, plan: Plan) -> int:
    """Files per LoadStage call, in either engine. A container file (image table, shard, video, a
    multi-frame file with frames: all) is many images already: one file per call, its rows
    leaving the call a chunk at a time (``LoadStage.chunks``), a DICOM parsed once for all its
    frames (the call's cache holds one file)."""
    return 1 if spec.source.container or spec.decode.frames == "all" else plan.decode_batch_size


def load_dataset(manifest, plan: Plan, stage, files: int):
    """The read/decode stage over the manifest: a table on the driver, or ``runner.selection``'s
    blocks in the object store (a run over an inventory), cut into blocks of ``files`` files (one
    call's) by a streaming repartition (the manifest never comes to the driver)."""
    import ray

    if isinstance(manifest, pa.Table):
        # Blocks of one call's files, their metadata computed here: ray.data.from_arrow asks a
        # remote task for it, which waits ~1.5 s for the job's first worker process to start
        # before the pipeline (and the predictor's start-up) can begin. (from_blocks is a Ray
        # DeveloperAPI, "primarily for testing"; Ray is pinned, and tests/test_pipeline.py runs it.)
        ds = ray.data.from_blocks([manifest.slice(at, files) for at in range(0, manifest.num_rows, files)]
                                  or [manifest])
    else:
        ds = ray.data.from_arrow_refs(manifest.refs).repartition(target_num_rows_per_block=files)
    return ds.map_batches(
        stage.chunks,  # a generator: a container's rows leave the task a chunk at a time
        batch_size=files,
        batch_format="numpy",
        num_cpus=plan.decode_cpus,
        # The memory ask also keeps decoding in tasks of its own, running beside the predictor
        # actors: Ray fuses maps with equal resource asks, which would serialise the two.
        memory=plan.decode_memory,
    )


def load_stage(run: "RunPlan", reporter=None, clusterer=None):
    """The run's LoadStage (read, decode, condition, measure, embed), for either engine."""
    from imgclf_ray.stages import LoadConfig, LoadStage

    spec, card = run.spec, run.model
    return LoadStage(LoadConfig(spec.storage, spec.decode, card.preprocess.conditioning() if card else None,
                                card.features if card else None, measure=bool(set(run.checks) & MEASURED_CHECKS),
                                embed=embedding_of(spec), keep_embedding=bool(spec.cluster and spec.cluster.embedding),
                                source=spec.source), reporter, clusterer)


def predict_config(run: "RunPlan", run_id: str, threads: Optional[int] = None, device: Optional[str] = None):
    """The run's PredictStage configuration (plain values: a Ray actor is built from them on its node);
    ``device``: the local executor's predictor's (cuda:1 ...), else the plan's."""
    from imgclf_ray.stages import PredictConfig

    spec, plan, model = run.spec, run.resources, run.spec.model
    device = device or plan.device
    if model is None:
        return PredictConfig(None, spec.storage, run_id=run_id, device=device,
                             threads=threads or plan.torch_threads)
    return PredictConfig(model.uri, spec.storage, model.topk, run_id, device, threads or plan.torch_threads,
                         model.threshold, model.thresholds, model.precision, model.trusted, model.runtime,
                         spec.decode if spec.decode.jpeg_on == "predictor" else None, plan.calls_per_actor)


def shipped_export(run: "RunPlan", config):
    """``config`` with the driver's ONNX export of a torch network (made here by the plan or the
    artifact check) put in Ray's object store, for CPU predictors run by ONNX Runtime: each node
    runs that one export, without importing torch (``onnx_runtime.from_export``)."""
    import dataclasses

    from imgclf_ray.models.onnx_runtime import export_path, runs_export

    if (run.model is None or run.model.framework != "torch" or run.model.task == "hierarchical"
            or not runs_export(config.runtime, config.device, config.precision)):
        return config
    import ray

    path = export_path(run.model.cards[()])
    return dataclasses.replace(config, export=ray.put(path.read_bytes())) if path.exists() else config


def build_dataset(run: "RunPlan", manifest, run_id: str, reporter=None, clusterer=None, rules=None):
    """The Ray Data plan for one run (lazy: nothing executes until it is written)."""
    from ray.data import ActorPoolStrategy

    from imgclf_ray.stages import PredictStage

    plan = run.resources
    ds = load_dataset(manifest, plan, load_stage(run, reporter, clusterer), files_per_call(run.spec, plan))
    return ds.map_batches(
        PredictStage,
        fn_constructor_kwargs={"config": shipped_export(run, predict_config(run, run_id)), "reporter": reporter,
                               "rules": rules},
        batch_size=plan.batch_size,
        batch_format="numpy",
        # Full size at the start, free to shrink: after a node is lost a fixed pool insists on
        # every actor, even when the smaller cluster then has no CPU left for the decode tasks;
        # this one can give idle actors back (tests/test_node_loss.py). Planned for GPUs still to
        # come (resources.gpus), a fixed pool instead: all its actors asked for at once, their
        # pending demand starts every GPU node (gpu_capacity); one that grew later would get no
        # budget from Ray Data's reservation (tests/test_autoscaling.py).
        # On a GPU two batches at once (threads: torch releases the GIL in the forward pass), so
        # that one's host work overlaps the other's forward pass.
        compute=ActorPoolStrategy(min_size=plan.actors if plan.awaits_gpus else 1, max_size=plan.actors,
                                  initial_size=plan.actors,
                                  max_concurrent_calls_per_actor=plan.calls_per_actor,
                                  enable_true_multi_threading=plan.calls_per_actor > 1),
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor or None,
    )


@contextlib.contextmanager
def gpu_capacity(run: "RunPlan"):
    """With resources.gpus beyond the GPUs present: the pool's planned actors are all asked for at
    once (a fixed pool, build_dataset), and the run waits up to resources.gpu_wait seconds for them
    (Ray Data's wait_for_min_actors_s; then it fails, committing nothing). Their pending demand is
    what makes the autoscaler start the GPU nodes, all at once. A pool that started smaller would
    not grow: Ray Data's resource reservation hands the GPUs the pool does not hold yet
    to the other operators, so the pool never has the budget for another actor (measured on the
    fake autoscaling cluster: one actor for 240 s, two GPU nodes up, work queued)."""
    import math

    import ray

    if not run.resources.awaits_gpus:
        yield
        return
    from imgclf_ray.errors import RunFailed, chain

    ctx = ray.data.DataContext.get_current()
    before = ctx.wait_for_min_actors_s
    ctx.wait_for_min_actors_s = math.ceil(run.spec.resources.gpu_wait)
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - Ray Data's timeout, however wrapped, said as the run's
        if not any(isinstance(e, ray.exceptions.GetTimeoutError) or "Timed out while starting actors" in str(e)
                   for e in chain(exc)):
            raise
        plan = run.resources
        raise RunFailed(f"resources.gpus: {plan.actors} GPU actor{'s' * (plan.actors != 1)} planned, not all up "
                        f"after resources.gpu_wait "
                        f"({run.spec.resources.gpu_wait:g} s; the cluster had {plan.present_gpus:g} GPUs when the "
                        "run started): no GPU node joined, or too few; nothing was committed") from None
    finally:
        ctx.wait_for_min_actors_s = before


class RayTasks:
    """The archive pass's tasks as Ray tasks (runner.passes.archive_checks)."""

    def __init__(self):
        import ray

        self.ray = ray
        self.cpus: int = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def submit(self, fn, *args, num_returns: int = 1):
        return self.ray.remote(num_cpus=1)(fn).options(num_returns=num_returns).remote(*args)

    def get(self, refs):
        """The values; a user's error raised in a task (an unreadable file) re-raised as itself."""
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            from imgclf_ray.errors import UserError

            if isinstance(exc.cause, UserError):
                raise exc.cause from None
            raise

    def put(self, obj):
        return self.ray.put(obj)


class RayEngine:
    """runner.job's engine for ``run.executor: ray``: Ray Data tasks and an actor pool."""

    name = "ray"

    def __init__(self) -> None:
        self._tasks: Optional[RayTasks] = None

    def resources(self) -> dict[str, float]:
        import ray

        return ray.cluster_resources()

    @property
    def tasks(self) -> RayTasks:
        """The run's task runner, made once (it reads the cluster's CPUs)."""
        if self._tasks is None:
            self._tasks = RayTasks()
        return self._tasks

    def metrics(self) -> "RayMetrics":
        from imgclf_ray.runner.metrics import RayMetrics

        return RayMetrics()

    def load_batches(self, manifest, plan: Plan, stage, columns: list[str], files: int, ordered: bool = False):
        """Batches of the manifest through ``stage`` as Ray Data tasks; ``ordered``: in manifest
        order (Ray Data's preserve_order), else as they finish."""
        import ray

        current = ray.data.DataContext.get_current()
        ctx = current.copy()  # the dataset keeps its own copy; the driver's stays as it was
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = ordered
        ray.data.DataContext._set_current(ctx)
        try:
            ds = load_dataset(manifest, plan, stage, files).select_columns(columns)
        finally:
            ray.data.DataContext._set_current(current)
        yield from ds.iter_batches(batch_size=plan.decode_batch_size, batch_format="numpy")

    def classify(self, run: "RunPlan", manifest, output: "Output", metrics, clusterer, rules) -> None:
        with gpu_capacity(run):
            self._write(run, manifest, output, metrics, clusterer, rules)

    def _write(self, run: "RunPlan", manifest, output: "Output", metrics, clusterer, rules) -> None:
        from imgclf_ray.io.storage import pyarrow_fs
        from imgclf_ray.runner.staged_sink import StagedDatasink

        spec = run.spec
        build_dataset(run, manifest, output.run_id, metrics.reporter(), clusterer, rules).write_datasink(
            StagedDatasink(output.path, output.scan_columns, filesystem=pyarrow_fs(output.fs),
                           min_rows_per_file=min(spec.sink.min_rows_per_file, spec.sink.max_rows_per_file),
                           max_rows_per_file=spec.sink.max_rows_per_file, arrow_parquet_args={"schema": output.schema}))
