"""Job spec -> Ray Data plan -> committed Parquet. The only module that knows every stage.

    manifest ──► LoadStage (CPU tasks: read, decode, condition) ──► PredictStage (actor pool)
             ──► write_parquet (staging) ──► checks ──► commit (manifest, _SUCCESS)
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from imgclf_ray.errors import RunFailed
from imgclf_ray.imaging.decode import DecodeOptions
from imgclf_ray.io import sink
from imgclf_ray.io.listing import list_archive
from imgclf_ray.io.schema import OUTPUT_SCHEMA, STATUS_ERROR, STATUS_OK
from imgclf_ray.io.storage import filesystem, join
from imgclf_ray.models.artifact import ModelCard, read_card
from imgclf_ray.planner import Plan, plan_resources
from imgclf_ray.spec import JobSpec

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run reports (also the basis of the CLI summary)."""

    run_id: str
    output_uri: str
    rows: int
    by_status: dict[str, int]
    by_label: dict[str, int]
    errors_by_stage: dict[str, int]
    sample_errors: list[dict[str, str]]
    wall_seconds: float
    images_per_second: float
    model_id: str
    plan: dict[str, Any] = field(default_factory=dict)


def default_run_id(spec: JobSpec) -> str:
    return f"{spec.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"


def ensure_ray(address: Optional[str] = None, verbose: bool = False) -> None:
    """Join the given cluster (or RAY_ADDRESS), else start a local Ray instance for this process."""
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": True}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(include_dashboard=False, **kwargs)
    # Right after start-up the node may not have reported its resources yet; the planner needs them.
    deadline = time.monotonic() + 30
    while not ray.cluster_resources().get("CPU") and time.monotonic() < deadline:
        time.sleep(0.1)
    import ray.data  # configures the "ray.data" logger; adjust it after that

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):  # the console; the session log keeps all
            handler.addFilter(_drop_startup_cpu_warning)
            handler.setLevel(logging.INFO if verbose else logging.WARNING)


def _drop_startup_cpu_warning(record: logging.LogRecord) -> bool:
    # Ray Data warns "no available CPUs ... will hang" when a run starts while from_arrow's
    # block-metadata tasks still hold the CPUs; they finish in a moment, so the warning misleads.
    return "does not have any available CPUs" not in record.getMessage()


def _decode_options(spec: JobSpec) -> DecodeOptions:
    d = spec.decode
    return DecodeOptions(max_image_pixels=d.max_image_pixels, allow_truncated=d.allow_truncated,
                         exif_transpose=d.exif_transpose, frame=d.frame, jpeg_draft=d.jpeg_draft,
                         background=tuple(d.background))


def _pyarrow_fs(fs):
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return LocalFileSystem()
    return PyFileSystem(FSSpecHandler(fs))


def _staged_stats(staging: sink.Staging) -> pa.Table:
    fs, _ = filesystem(staging.uri, staging.storage)
    tables = []
    for path in staging.staged_files():
        with fs.open(path, "rb") as fh:
            tables.append(pq.read_table(fh, columns=["image_id", "uri", "status", "error", "label"]))
    if not tables:
        return pa.table({"image_id": [], "uri": [], "status": [], "error": [], "label": []})
    return pa.concat_tables(tables)


def _counts(column: pa.ChunkedArray) -> dict[str, int]:
    counts = column.value_counts().to_pylist() if len(column) else []
    return dict(sorted(((c["values"], c["counts"]) for c in counts if c["values"] is not None),
                       key=lambda kv: (-kv[1], str(kv[0]))))


def build_dataset(spec: JobSpec, manifest: pa.Table, card: ModelCard, plan: Plan, run_id: str):
    """The Ray Data plan for one run (lazy: nothing executes until it is written)."""
    import ray
    from ray.data import ActorPoolStrategy

    from imgclf_ray.stages import LoadStage, PredictStage

    blocks = -(-manifest.num_rows // plan.decode_batch_size)
    ds = ray.data.from_arrow(manifest, override_num_blocks=blocks)
    ds = ds.map_batches(
        LoadStage(spec.storage, _decode_options(spec), card.preprocess.conditioning()),
        batch_size=plan.decode_batch_size,
        batch_format="numpy",
        num_cpus=plan.decode_cpus,
        # The memory ask also keeps decoding in tasks of its own, running beside the predictor
        # actors: Ray fuses maps with equal resource asks, which would serialise the two.
        memory=plan.decode_memory,
    )
    return ds.map_batches(
        PredictStage,
        fn_constructor_kwargs={
            "model_uri": spec.model.uri, "storage": spec.storage, "topk": spec.model.topk,
            "run_id": run_id, "device": plan.device, "threads": plan.torch_threads,
        },
        batch_size=plan.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor or None,
    )


def execute(spec: JobSpec, manifest: pa.Table, run_id: Optional[str] = None) -> RunResult:
    """Classify every row of ``manifest`` and commit the output as run ``run_id``.

    Ray must be initialised. Raises RunFailed (nothing committed) when the error budget is exceeded
    or the staged output does not hold every listed input exactly once.
    """
    import ray

    run_id = run_id or spec.sink.run_id or default_run_id(spec)
    card = read_card(spec.model.uri, spec.storage)
    plan = plan_resources(ray.cluster_resources(), spec.resources, spec.model.device)
    log.info("plan: %s", plan)
    staging = sink.Staging.new(spec.sink.uri, run_id, spec.storage)
    started = time.perf_counter()
    ds = build_dataset(spec, manifest, card, plan, run_id)
    fs, staging_path = filesystem(staging.uri, spec.storage)
    try:
        ds.write_parquet(
            staging_path,
            filesystem=_pyarrow_fs(fs),
            filename_provider=_StagedNames(),
            min_rows_per_file=min(spec.sink.min_rows_per_file, spec.sink.max_rows_per_file),
            max_rows_per_file=spec.sink.max_rows_per_file,
            schema=OUTPUT_SCHEMA,
        )
        wall = time.perf_counter() - started
        stats = _staged_stats(staging)
        _check_complete(manifest, stats)
        result = _result(spec, run_id, stats, wall, card, plan)
        _check_budget(spec, result)
    except BaseException:
        staging.discard()
        raise
    sink.commit(staging, {
        "job": spec.name,
        "model_id": result.model_id,
        "by_status": result.by_status,
        "errors_by_stage": result.errors_by_stage,
        "wall_seconds": round(wall, 3),
        "plan": result.plan,
    })
    return result


class _StagedNames:
    """Names staged files so that no ``*.parquet`` glob matches them (Ray's FilenameProvider
    interface: Ray calls ``get_filename_for_task`` and expands ``{i}`` per file)."""

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return sink.staged_filename(write_uuid, task_index)


def _check_complete(manifest: pa.Table, stats: pa.Table) -> None:
    listed = manifest.num_rows
    written = stats.num_rows
    distinct = len(stats.column("image_id").unique()) if written else 0
    if written != listed or distinct != listed:
        raise RunFailed(f"output check failed: {listed} images listed, {written} rows written "
                        f"({distinct} distinct); nothing was committed")


def _check_budget(spec: JobSpec, result: RunResult) -> None:
    budget = spec.run.max_error_rate
    errors = result.by_status.get(STATUS_ERROR, 0)
    if budget is not None and result.rows and errors / result.rows > budget:
        raise RunFailed(f"{errors} of {result.rows} images failed ({errors / result.rows:.1%}), over "
                        f"the error budget of {budget:.1%} (run.max_error_rate); nothing was committed")


def _result(spec: JobSpec, run_id: str, stats: pa.Table, wall: float, card: ModelCard, plan: Plan) -> RunResult:
    import pyarrow.compute as pc

    errors = stats.filter(pc.equal(stats.column("status"), STATUS_ERROR))
    stages = pc.list_element(pc.split_pattern(errors.column("error"), ": ", max_splits=1), 0) \
        if errors.num_rows else pa.chunked_array([], pa.string())
    ok = stats.filter(pc.equal(stats.column("status"), STATUS_OK))
    sample = errors.slice(0, 20).select(["uri", "error"]).to_pylist()
    return RunResult(
        run_id=run_id,
        output_uri=join(spec.sink.uri, run_id),
        rows=stats.num_rows,
        by_status=_counts(stats.column("status")),
        by_label=_counts(ok.column("label")),
        errors_by_stage=_counts(stages),
        sample_errors=sample,
        wall_seconds=wall,
        images_per_second=stats.num_rows / wall if wall > 0 else 0.0,
        model_id=card.model_id(),
        plan=asdict(plan),
    )


def run_job(spec: JobSpec, run_id: Optional[str] = None, progress: bool = True,
            verbose: bool = False) -> RunResult:
    """Everything ``imgclf run`` does after validation: examples, Ray, listing, execution, commit."""
    from imgclf_ray import examples

    examples.prepare(spec)
    read_card(spec.model.uri, spec.storage)  # fail on a bad artifact before Ray starts
    manifest = list_archive(spec.source, spec.storage)
    ensure_ray(spec.run.ray_address, verbose)
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = progress
    return execute(spec, manifest, run_id)
