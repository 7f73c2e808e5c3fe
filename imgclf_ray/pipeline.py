"""Job spec -> Ray Data plan -> committed Parquet. The only module that knows every stage.

    manifest ──► LoadStage (CPU tasks: read, decode, condition) ──► PredictStage (actor pool)
             ──► write_parquet (staging) ──► checks ──► commit (manifest, _SUCCESS)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgclf_ray import errors, faults
from imgclf_ray.errors import NothingToDo, RunFailed, SpecError, UserError
from imgclf_ray.io import sink
from imgclf_ray.io.labels import attach_true_labels
from imgclf_ray.io.listing import list_archive, skipped_counts
from imgclf_ray.io.lock import RunLock
from imgclf_ray.io.schema import SCHEMA_VERSION, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, run_schema
from imgclf_ray.io.storage import filesystem, join, pyarrow_fs, to_uri
from imgclf_ray.io.tables import count_values, read_columns
from imgclf_ray.models.hierarchy import ArtifactInfo, describe_artifact
from imgclf_ray.models.loader import check_artifact, refuse_code
from imgclf_ray.planner import Plan, plan_resources
from imgclf_ray.progress import Mode, Progress, resolve_mode
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
    model_id: Optional[str]
    plan: dict[str, Any] = field(default_factory=dict)
    errors_by_cause: dict[str, int] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    spec_digest: str = ""
    started_at: str = ""
    listing_seconds: Optional[float] = None
    first_batch_seconds: Optional[float] = None
    by_cluster: dict[str, int] = field(default_factory=dict)
    curation_flags: dict[str, int] = field(default_factory=dict)
    curation: dict[str, Any] = field(default_factory=dict)
    clusterer: dict[str, Any] = field(default_factory=dict)
    files: int = 0  # input files (rows can be more: frames, pages, table rows, samples)
    listing_skipped: dict[str, int] = field(default_factory=dict)  # files the listing left out, by why
    nothing_new: str = ""  # why an incremental run committed no rows (an empty run record)
    ray_log: Optional[str] = None  # quiet runs: where Ray's own console lines went

    def summary(self) -> dict[str, Any]:
        """The machine-readable run summary (``_run_summary.json`` next to the output)."""
        return {
            "run_id": self.run_id,
            "output_uri": self.output_uri,
            "started_at": self.started_at,
            "wall_seconds": round(self.wall_seconds, 3),
            "listing_seconds": None if self.listing_seconds is None else round(self.listing_seconds, 3),
            "first_batch_seconds": self.first_batch_seconds,
            "rows": self.rows,
            "listing": {"files": self.files, "skipped": self.listing_skipped},
            "images_per_second": round(self.images_per_second, 2),
            "by_status": self.by_status,
            "by_label": self.by_label,
            "by_cluster": self.by_cluster,
            "curation_flags": self.curation_flags,
            "curation": self.curation,
            "clusterer": self.clusterer,
            "errors": {"by_stage": self.errors_by_stage, "by_cause": self.errors_by_cause},
            "stages": self.stages,
            "resources": self.plan,
            "model_id": self.model_id,
            "spec_digest": self.spec_digest,
            **({"nothing_new": self.nothing_new} if self.nothing_new else {}),
        }


def run_folder(spec: JobSpec, run_id: str, run_date: Optional[date] = None) -> str:
    """The run's folder under sink.uri (sink.layout; the run date defaults to today, UTC)."""
    when = run_date or spec.sink.run_date or datetime.now(timezone.utc).date()
    return sink.run_path(spec.sink.layout, run_id, when, spec.name)


def default_run_id(spec: JobSpec) -> str:
    return f"{spec.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"


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
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", include_dashboard=False, **kwargs)
        if ray_log:
            _log_to(ray_log, ("ray",))  # ray.init cleared the "ray" logger's handlers
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


def _ray_to_file() -> str:
    """Send Ray's console output in this process to a file; its path. Python loggers under "ray"
    get a file handler ("ray._private" too: ray.init clears "ray" itself before it warns), and
    file descriptor 2, where Ray's C++ core worker writes, is pointed at the file, while
    ``sys.stderr`` (imgclf's own lines) stays on the original stderr."""
    import io
    import sys
    import tempfile

    path = os.path.join(tempfile.gettempdir(), f"imgclf-ray-{os.getpid()}.log")
    _log_to(path, ("ray._private", "ray", "ray.data", "ray.train"))
    sys.stdout.flush()
    sys.stderr.flush()
    original = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = io.TextIOWrapper(io.FileIO(original, "w"), encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                                  errors="backslashreplace", line_buffering=True, write_through=True)
    return path


_MISLEADING = (
    # Logged when a run starts while from_arrow's block-metadata tasks still hold the CPUs; they
    # finish in a moment, so "the Dataset job will hang" is wrong.
    "does not have any available CPUs",
    # Logged because we switch Ray Data's bars off in favour of our own progress display.
    "Progress bars disabled",
)


def _drop_misleading_warnings(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(text in message for text in _MISLEADING)


def _staged_stats(spec: JobSpec, staged: list[str]) -> pa.Table:
    """The columns every after-write step needs (checks, counts, clusters, flags, state), read
    from the staged files once."""
    from imgclf_ray.io.state import STATE_COLUMNS

    columns = ["image_id", "uri", "status", "error", "label"]
    if spec.curate is not None or spec.cluster is not None:
        columns += ["cluster", "cluster_distance", *(f"is_{c}" for c in spec.curate_checks())]
    if spec.incremental is not None:
        columns += STATE_COLUMNS
    return read_columns(staged, list(dict.fromkeys(columns)), spec.storage)


# Checks that need the per-image measures (scores and hashes) of the decode tasks.
MEASURED_CHECKS = {"blurry", "dark", "overexposed", "low_information", "grayscale", "duplicate", "near_duplicate"}


def _embedding(spec: JobSpec):
    """(conditioning, feature spec) of the job's clustering embedding, or None."""
    from imgclf_ray.models.artifact import PreprocessCard

    if spec.cluster is None:
        return None
    return PreprocessCard.model_validate(spec.cluster.preprocess.model_dump()).conditioning(), spec.cluster.features


def _load_dataset(spec: JobSpec, manifest: pa.Table, plan: Plan, stage):
    import ray

    # A container file (image table, shard, video) is many images already: one file per call
    # keeps a batch's rows, and so the task's memory, bounded by one file's images.
    files = 1 if spec.source.container else plan.decode_batch_size
    ds = ray.data.from_arrow(manifest, override_num_blocks=max(1, -(-manifest.num_rows // files)))
    return ds.map_batches(
        stage,
        batch_size=files,
        batch_format="numpy",
        num_cpus=plan.decode_cpus,
        # The memory ask also keeps decoding in tasks of its own, running beside the predictor
        # actors: Ray fuses maps with equal resource asks, which would serialise the two.
        memory=plan.decode_memory,
    )


def build_dataset(spec: JobSpec, manifest: pa.Table, card: Optional[ArtifactInfo], plan: Plan, run_id: str,
                  reporter=None, clusterer=None, rules=None):
    """The Ray Data plan for one run (lazy: nothing executes until it is written)."""
    from ray.data import ActorPoolStrategy

    from imgclf_ray.stages import LoadStage, PredictStage

    load = LoadStage(spec.storage, spec.decode, card.preprocess.conditioning() if card else None, reporter,
                     card.features if card else None, measure=bool(set(spec.curate_checks()) & MEASURED_CHECKS),
                     embed=_embedding(spec), clusterer=clusterer,
                     keep_embedding=bool(spec.cluster and spec.cluster.embedding), source=spec.source)
    ds = _load_dataset(spec, manifest, plan, load)
    model = spec.model
    return ds.map_batches(
        PredictStage,
        fn_constructor_kwargs={
            "model_uri": model.uri if model else None, "storage": spec.storage,
            "topk": model.topk if model else 1, "run_id": run_id, "device": plan.device,
            "threads": plan.torch_threads, "reporter": reporter,
            "threshold": model.threshold if model else None,
            "thresholds": model.thresholds if model else None, "rules": rules,
            "precision": model.precision if model else "fp32",
            "trusted": model.trusted if model else False,
            "runtime": model.runtime if model else "torch",
        },
        batch_size=plan.batch_size,
        batch_format="numpy",
        # Full size at the start, free to shrink: after a node is lost a fixed pool insists on
        # every actor, even when the smaller cluster then has no CPU left for the decode tasks;
        # this one can give idle actors back (tests/test_node_loss.py).
        compute=ActorPoolStrategy(min_size=1, max_size=plan.actors, initial_size=plan.actors),
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor or None,
    )


def execute(spec: JobSpec, manifest: pa.Table, run_id: Optional[str] = None,
            progress: Mode = "off", listing_seconds: Optional[float] = None,
            lock: Optional[RunLock] = None, listing_skipped: Optional[dict[str, int]] = None,
            model: Optional[ArtifactInfo] = None) -> RunResult:
    """Classify every row of ``manifest`` and commit the output as run ``run_id``.

    Ray must be initialised. Holds the run id's lock while it works (``lock``, when the caller took
    it already). Raises RunFailed (nothing committed) when the error budget is exceeded or the
    staged output does not hold every listed input exactly once; RunLocked when another attempt
    of the run id is live. ``model``: the artifact's description when the caller read it already.
    """
    run_id = run_id or spec.sink.run_id or default_run_id(spec)
    if lock is not None:
        return _execute(spec, manifest, run_id, progress, listing_seconds, lock, listing_skipped, model)
    with _locked(spec, run_id) as lock:
        return _execute(spec, manifest, run_id, progress, listing_seconds, lock, listing_skipped, model)


@contextlib.contextmanager
def _locked(spec: JobSpec, run_id: str):
    """The run id's lock, with what a killed earlier attempt left half done finished or undone."""
    sink.check_format(spec.sink.uri, spec.sink.format, spec.storage)
    with RunLock(spec.sink.uri, run_id, uuid.uuid4().hex[:12], spec.storage) as lock:
        sink.recover(spec.sink.uri, run_id, spec.storage)
        sink.recover_others(spec.sink.uri, spec.storage, skip=run_id)
        yield lock


def _execute(spec: JobSpec, manifest: pa.Table, run_id: str, progress: Mode,
             listing_seconds: Optional[float], lock: RunLock,
             listing_skipped: Optional[dict[str, int]] = None, model: Optional[ArtifactInfo] = None) -> RunResult:
    import ray

    from imgclf_ray.curation.rows import row_rules

    card = None
    if spec.model is not None:
        card = model or describe_artifact(spec.model.uri, spec.storage)
        # A tampered, untrusted or malformed file is refused with a clear message before any work
        # starts (the actors load it again).
        _check_thresholds(spec, card, check_artifact(spec.model.uri, spec.storage, spec.model.trusted,
                                                     spec.model.runtime, card))
    checks = spec.curate_checks()
    labels = _label_issue_labels(spec, card, checks)
    # Classical estimators (and jobs without a model) run on CPU actors whatever the cluster has.
    device = "cpu" if card is None or card.framework == "sklearn" or (_in_onnxruntime(spec, card) and
                                                                       spec.model.device == "auto") \
        else spec.model.device
    plan = plan_resources(ray.cluster_resources(), spec.resources, device,
                          light=card is None or card.framework == "sklearn")
    log.info("plan: %s", plan)
    started_at = datetime.now(timezone.utc).isoformat()
    started = time.perf_counter()
    clusterer = prepare_clusterer(spec, manifest, plan, progress)
    outlier_threshold = (clusterer.outlier_threshold(spec.curate.outlier_quantile)
                         if clusterer is not None and "outlier" in checks else None)
    rules = row_rules(checks, spec.curate, outlier_threshold) if spec.curate else None
    run_date = spec.sink.run_date or datetime.now(timezone.utc).date()
    staging = sink.Staging.new(spec.sink.uri, run_id, spec.storage, run_folder(spec, run_id, run_date), lock.attempt,
                               spec.sink.format)
    # The metrics actor lives on the driver's node: a worker node lost mid-run must not take it
    # (and the run's bookkeeping) with it; the driver's own node going means the run goes anyway.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    metrics = ray.remote(num_cpus=0, scheduling_strategy=here)(StageMetrics).remote()
    ds = build_dataset(spec, manifest, card, plan, run_id, _ActorReporter(metrics), clusterer, rules)
    fs, staging_path = filesystem(staging.uri, spec.storage)
    try:
        split = spec.source.container is not None or spec.decode.frames == "all"
        shown = Progress("classify", manifest.num_rows, unit="file" if split else "img", mode=progress)
        with _Watch(metrics, shown, split=split), _user_errors():
            ds.write_parquet(
                staging_path,
                filesystem=pyarrow_fs(fs),
                filename_provider=_StagedNames(),
                min_rows_per_file=min(spec.sink.min_rows_per_file, spec.sink.max_rows_per_file),
                max_rows_per_file=spec.sink.max_rows_per_file,
                schema=run_schema(run_id, card.model_id if card else None, card.labels if card else None),
            )
        staged = [to_uri(fs, p) for p in staging.staged_files()]
        curation = _archive_checks(spec, staged, checks, labels, metrics)
        wall = time.perf_counter() - started
        stats = _staged_stats(spec, staged)
        _check_complete(manifest, stats, "all" if spec.source.container else spec.decode.frames)
        result = _result(spec, run_id, staging.run_uri, stats, wall, card, plan)
        result.files, result.listing_skipped = manifest.num_rows, listing_skipped or {}
        result.stages = ray.get(metrics.snapshot.remote())
        result.first_batch_seconds = _since_process_start(ray.get(metrics.first_batch.remote()))
        result.started_at, result.listing_seconds = started_at, listing_seconds
        result.curation = curation
        _check_budget(spec, result)
        extra_files = _cluster_and_flag_summary(spec, stats, result, clusterer)
    except BaseException:
        staging.discard()
        raise
    finally:
        ray.kill(metrics)
    from imgclf_ray.io import state

    faults.point("after_write")
    if spec.incremental is not None:
        # Recorded before the commit under this attempt's name; it counts only while the committed
        # manifest names this attempt.
        state.record(state_uri(spec), run_id, staging.attempt, stats, spec.storage)
    faults.point("after_state")
    summary = result.summary()
    lock.verify()
    sink.commit(staging, {
        "job": spec.name,
        "schema_version": SCHEMA_VERSION,
        "run_date": run_date.isoformat(),
        "model_id": result.model_id,
        "task": card.task if card else None,
        "labels": card.labels if card else None,
        "clusterer_id": result.clusterer.get("clusterer_id"),
        "by_status": result.by_status,
        "errors_by_stage": result.errors_by_stage,
        "wall_seconds": round(wall, 3),
        "plan": result.plan,
        "dicom_allow_phi": spec.decode.dicom_allow_phi,
    }, extra_files={sink.SUMMARY_FILE: json.dumps(summary, indent=2).encode(), **extra_files})
    if spec.incremental is not None:
        state.forget_others(state_uri(spec), run_id, staging.attempt, spec.storage)
    faults.point("after_commit")
    return result


def _since_process_start(when: Optional[float]) -> Optional[float]:
    """Seconds from this process's start (the CLI invoked) to ``when``."""
    import psutil

    if when is None:
        return None
    return round(when - psutil.Process(os.getpid()).create_time(), 2)


def state_uri(spec: JobSpec) -> str:
    return spec.incremental.state or join(spec.sink.uri, "_state", spec.name)


def _incremental(spec: JobSpec, manifest: pa.Table, model_id: Optional[str], mode: Mode, run_id: str) -> pa.Table:
    """The rows of ``manifest`` earlier committed runs (other than ``run_id``, which this run
    replaces) have not processed (with model ``model_id``)."""
    from imgclf_ray.io import state

    seen = state.load(state_uri(spec), spec.sink.uri, spec.storage, replacing=run_id)
    todo, why = state.pending(manifest, seen, model_id, spec.incremental.reprocess_on_model_change)
    Progress.note(f"incremental: {manifest.num_rows} listed; {why['new']} new, {why['changed']} changed, "
                  f"{why['model_changed']} for a new model, {why['unchanged']} already processed (skipped)", mode)
    return todo


def _commit_nothing_new(spec: JobSpec, run_id: str, lock: RunLock, why: str, files: int,
                        skipped: dict[str, int], listing_seconds: float,
                        info: Optional[ArtifactInfo] = None) -> RunResult:
    """Commit an empty run record (one schema-only Parquet file, its manifest and summary saying
    why), so that every night shows in ``imgclf runs`` and ``read_run`` — without starting Ray."""
    import io
    import uuid

    from imgclf_ray.io import state

    info = info or (describe_artifact(spec.model.uri, spec.storage) if spec.model else None)
    run_date = spec.sink.run_date or datetime.now(timezone.utc).date()
    staging = sink.Staging.new(spec.sink.uri, run_id, spec.storage, run_folder(spec, run_id, run_date), lock.attempt,
                               spec.sink.format)
    empty = run_schema(run_id, info.model_id if info else None, info.labels if info else None).empty_table()
    buf = io.BytesIO()
    pq.ParquetWriter(buf, empty.schema).close()  # no row group at all: a 0-row group breaks `datasets`
    fs, staging_path = filesystem(staging.uri, spec.storage)
    fs.makedirs(staging_path, exist_ok=True)
    fs.pipe_file(join(staging_path, sink.staged_filename(uuid.uuid4().hex, 0)), buf.getvalue())
    result = RunResult(run_id, staging.run_uri, 0, {}, {}, {}, [], 0.0, 0.0, info.model_id if info else None,
                       spec_digest=spec_digest(spec), started_at=datetime.now(timezone.utc).isoformat(),
                       listing_seconds=listing_seconds, files=files, listing_skipped=skipped, nothing_new=why)
    if spec.incremental is not None:
        state.record(state_uri(spec), run_id, staging.attempt, empty, spec.storage)
    lock.verify()
    sink.commit(staging, {"job": spec.name, "schema_version": SCHEMA_VERSION, "run_date": run_date.isoformat(),
                          "model_id": result.model_id, "task": info.task if info else None,
                          "labels": info.labels if info else None, "by_status": {}, "errors_by_stage": {},
                          "wall_seconds": 0.0, "nothing_new": why},
                extra_files={sink.SUMMARY_FILE: json.dumps(result.summary(), indent=2).encode()})
    if spec.incremental is not None:
        state.forget_others(state_uri(spec), run_id, staging.attempt, spec.storage)
    return result


def cluster_artifact_uri(spec: JobSpec) -> str:
    return spec.cluster.artifact or join(spec.sink.uri, "_clusterers", spec.name)


def _embedded_batches(spec: JobSpec, manifest: pa.Table, plan: Plan):
    """Raw embedding features of the manifest's decodable rows, batch by batch (a Ray Data pass)."""
    from imgclf_ray.stages import LoadStage

    ds = _load_dataset(spec, manifest, plan, LoadStage(spec.storage, spec.decode, None, embed=_embedding(spec),
                                                       source=spec.source))
    for batch in ds.select_columns(["status", "cluster_features"]).iter_batches(
            batch_size=plan.decode_batch_size, batch_format="numpy"):
        yield np.asarray(batch["cluster_features"])[np.asarray(batch["status"]) == STATUS_OK]


def prepare_clusterer(spec: JobSpec, manifest: pa.Table, plan: Plan, progress: Mode = "off"):
    """The job's clusterer: the saved artifact when there is one (so ids stay stable from run to
    run), else fitted now on a seeded sample (or streamed over the archive) and saved."""
    from imgclf_ray import clustering

    if spec.cluster is None:
        return None
    c, uri = spec.cluster, cluster_artifact_uri(spec)
    if not c.refit and clustering.exists(uri, spec.storage):
        clusterer = clustering.load(uri, spec.storage)
        if not clusterer.card.matches(c):
            raise SpecError(f"cluster: the clusterer at {uri} was fitted with other settings "
                            f"({clusterer.card.algorithm} {clusterer.card.params}, features "
                            f"{clusterer.card.features.name}, pca {clusterer.card.pca}); set "
                            f"cluster.refit: true to replace it, or point cluster.artifact elsewhere")
        log.info("cluster: reusing %s (%s)", uri, clusterer.clusterer_id)
        return clusterer
    rng = np.random.default_rng(c.seed)
    n = manifest.num_rows
    sample = manifest.take(np.sort(rng.choice(n, min(n, c.sample), replace=False)))
    Progress.note(f"cluster: fitting {c.algorithm} on a sample of {sample.num_rows} images", progress)
    batches = list(_embedded_batches(spec, sample, plan))
    features = np.concatenate(batches) if batches else np.zeros((0, 0), np.float32)
    stream = _embedded_batches(spec, manifest, plan) if c.fit == "stream" else None
    try:
        clusterer = clustering.fit(c, features, stream)
    except ValueError as exc:
        raise RunFailed(f"cluster: cannot fit {c.algorithm}: {exc}") from None
    return clustering.save(uri, clusterer, spec.storage)


def _label_issue_labels(spec: JobSpec, card: Optional[ArtifactInfo], checks: tuple[str, ...]) -> Optional[list[str]]:
    if "label_issue" not in checks:
        return None
    if card is None or card.task not in ("multiclass", "binary"):
        raise SpecError("curate.checks: label_issue needs a multiclass or binary model (its "
                        "class_scores); this one is " + (card.task if card else "absent"))
    if card.scores == "uncalibrated":
        raise SpecError("curate.checks: label_issue needs probabilities; this model's scores are "
                        "uncalibrated (train it with estimator.calibrate: sigmoid)")
    return list(card.labels)


def _archive_checks(spec: JobSpec, staged: list[str], checks: tuple[str, ...], labels, metrics) -> dict[str, Any]:
    from imgclf_ray.curation import archive

    if not any(c in archive.ARCHIVE_CHECKS for c in checks):
        return {}
    import ray

    started = time.perf_counter()
    checks = tuple(c for c in checks if c in archive.ARCHIVE_CHECKS)
    p = max(1, int(ray.cluster_resources().get("CPU", 1)))  # partitions of the hash shuffle
    radius, storage = spec.curate.near_duplicate_radius, spec.storage
    task = ray.remote(num_cpus=1)
    scans = [task(archive.scan).options(num_returns=1 + 2 * p).remote(uri, storage, checks, radius, p, labels)
             for uri in staged]
    exact_parts = [task(archive.reduce_exact).remote(*[s[1 + i] for s in scans]) for i in range(p)]
    near_parts = [task(archive.reduce_near).remote(radius, *[s[1 + p + i] for s in scans]) for i in range(p)]
    facts = archive.merge_facts(ray.get([s[0] for s in scans]), checks, labels)
    exact: dict[str, tuple[str, bool]] = {}
    for part in ray.get(exact_parts):
        exact.update(part)
    pairs, uris = [], {}
    for part_pairs, part_uris in ray.get(near_parts):
        pairs.extend(part_pairs)
        uris.update(part_uris)
    near = archive.without_exact_groups(archive.link(pairs, uris), exact)
    exact_ref, near_ref = ray.put(exact), ray.put(near)
    ray.get([task(archive.rewrite).remote(uri, storage, checks, spec.curate, facts, exact_ref, near_ref, labels)
             for uri in staged])
    metrics.add.remote("curate_archive", len(staged), time.perf_counter() - started)
    return archive.summarise(facts, exact, near, checks, labels, radius)


def _cluster_and_flag_summary(spec: JobSpec, t: pa.Table, result: RunResult, clusterer) -> dict[str, bytes]:
    """Fills the run's cluster and flag counts; returns _clusters.json (sizes, exemplars) when the
    job clusters."""
    import pyarrow.compute as pc

    if spec.cluster is None and spec.curate is None:
        return {}
    flags = [f"is_{c}" for c in spec.curate_checks()]
    result.curation_flags = {f[3:]: int(pc.sum(pc.fill_null(t.column(f), False)).as_py() or 0) for f in flags}
    if clusterer is None:
        return {}
    clustered = t.filter(pc.is_valid(t.column("cluster")))
    counts = count_values(clustered.column("cluster"))
    result.by_cluster = {str(k): v for k, v in sorted(counts.items())}
    clusters = []
    for cluster in sorted(counts):
        rows = clustered.filter(pc.equal(clustered.column("cluster"), cluster))
        dist = rows.column("cluster_distance").to_numpy(zero_copy_only=False).astype(np.float64)
        nearest = np.argsort(np.nan_to_num(dist, nan=np.inf), kind="stable")[:5]
        uris = rows.column("uri").to_pylist()
        clusters.append({"cluster": int(cluster), "size": rows.num_rows,
                         "mean_distance": None if np.isnan(dist).all() else round(float(np.nanmean(dist)), 4),
                         "exemplars": [uris[i] for i in nearest]})
    result.clusterer = {"clusterer_id": clusterer.clusterer_id, "artifact": cluster_artifact_uri(spec),
                        "algorithm": clusterer.card.algorithm, "n_clusters": clusterer.card.n_clusters,
                        "fitted_rows": clusterer.card.fitted_rows, "fitted_at": clusterer.card.fitted_at}
    doc = {**result.clusterer, "clusters": clusters}
    return {"_clusters.json": json.dumps(doc, indent=2).encode()}


def _in_onnxruntime(spec: JobSpec, card) -> bool:
    """Whether the model runs in ONNX Runtime without its CUDA provider here (onnxruntime-gpu):
    then ``device: auto`` plans CPU actors, not GPUs the runtime would not use."""
    if card.framework != "onnx" and spec.model.runtime != "onnxruntime":
        return False
    try:
        import onnxruntime

        return "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
    except ImportError:
        return True


def _check_thresholds(spec: JobSpec, card: ArtifactInfo, card_thresholds: dict[str, float]) -> None:
    """Job thresholds must fit the model: refused here rather than inside every actor."""
    from imgclf_ray.models.heads import Head

    if spec.model.threshold is None and not spec.model.thresholds:
        return
    if card.scores == "uncalibrated":
        raise SpecError("model.threshold / model.thresholds: this model's scores are uncalibrated (the "
                        "softmax of its decision_function); thresholds need probabilities: train it "
                        "with estimator.calibrate: sigmoid")
    if card.task == "hierarchical":
        raise SpecError("model.threshold / model.thresholds: a hierarchical model uses its nodes' own thresholds")
    try:
        Head(card.task, card.labels, card_thresholds, spec.model.threshold, spec.model.thresholds)
    except ValueError as exc:
        raise SpecError(f"model.thresholds: {exc}") from None


@contextlib.contextmanager
def _user_errors():
    """Re-raise a user's error (e.g. an artifact refused inside an actor, an object refused for
    permission inside a decode task) that Ray wrapped in its own exception types, so that it reaches
    the CLI as one clear message."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - only re-raised differently when it wraps a UserError
        seen, cause = set(), exc
        while cause is not None and id(cause) not in seen:
            if isinstance(cause, UserError):
                raise cause from None
            seen.add(id(cause))
            cause = getattr(cause, "cause", None) or cause.__cause__
        # Ray Data wraps a UDF's exception in UserCodeException and the chain does not survive
        # pickling; the worker's traceback text still names it.
        found = _USER_ERROR_LINE.search(str(exc))
        kind = getattr(errors, found.group(1), None) if found else None
        if isinstance(kind, type) and issubclass(kind, UserError):
            raise kind(found.group(2).strip()) from None
        raise


_USER_ERROR_LINE = re.compile(r"imgclf_ray\.errors\.(\w+): (.+)")


class StageMetrics:
    """Rows and worker seconds per stage, summed over all tasks and actors (a Ray actor)."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}
        self.first_batch_at: Optional[float] = None

    def add(self, stage: str, rows: int, seconds: float) -> None:
        if stage == "predict" and self.first_batch_at is None:
            self.first_batch_at = time.time()
        entry = self.totals.setdefault(stage, [0, 0.0])
        entry[0] += rows
        entry[1] += seconds

    def first_batch(self) -> Optional[float]:
        """Unix time the first predicted batch was reported."""
        return self.first_batch_at

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {stage: {"rows": int(rows), "worker_seconds": round(sec, 3),
                        "rows_per_worker_second": round(rows / sec, 1) if sec > 0 else None}
                for stage, (rows, sec) in self.totals.items()}


class _ActorReporter:
    """The stages' reporter: forwards (stage, rows, seconds) to the StageMetrics actor, without
    waiting for an answer."""

    def __init__(self, handle):
        self.handle = handle

    def __call__(self, stage: str, rows: int, seconds: float) -> None:
        self.handle.add.remote(stage, rows, seconds)


class _Watch:
    """Polls the metrics actor in a background thread and moves the progress display."""

    def __init__(self, metrics, progress: Progress, every: float = 0.5, split: bool = False):
        """``split``: files become several rows each, so the count is of files read (the known
        total) and the rows made so far go beside it."""
        self.metrics, self.progress, self.every, self.split = metrics, progress, every, split
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        import ray

        snapshot = ray.get(self.metrics.snapshot.remote())
        rows = snapshot.get("predict", {}).get("rows", 0)
        if self.split:
            self.progress.set(min(snapshot.get("read", {}).get("rows", 0), self.progress.total or 0), rows)
        else:
            self.progress.set(rows)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._poll()
            except Exception:  # noqa: BLE001 - progress display must never break a run
                log.debug("progress poll failed", exc_info=True)

    def __enter__(self) -> "_Watch":
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


class _StagedNames:
    """Names staged files so that no ``*.parquet`` glob matches them (Ray's FilenameProvider
    interface: Ray calls ``get_filename_for_task`` and expands ``{i}`` per file)."""

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return sink.staged_filename(write_uuid, task_index)


def _check_complete(manifest: pa.Table, stats: pa.Table, frames: str = "one") -> None:
    """Every listed input in the staged output, each row (uri + frame) once; with decode.frames:
    all a file gives one row per frame."""
    listed = manifest.num_rows
    written = stats.num_rows
    distinct = len(stats.column("image_id").unique()) if written else 0
    if frames == "all":
        missing = len(set(manifest.column("uri").to_pylist()) - set(stats.column("uri").to_pylist()))
        if missing or distinct != written:
            raise RunFailed(f"output check failed: {listed} files listed, {missing} missing from the "
                            f"{written} rows written ({distinct} distinct); nothing was committed")
        return
    if written != listed or distinct != listed:
        raise RunFailed(f"output check failed: {listed} images listed, {written} rows written "
                        f"({distinct} distinct); nothing was committed")


def _check_budget(spec: JobSpec, result: RunResult) -> None:
    """Skipped rows (files that are no image, with source.extensions: any) do not count."""
    budget = spec.run.max_error_rate
    errors = result.by_status.get(STATUS_ERROR, 0)
    images = result.rows - result.by_status.get(STATUS_SKIPPED, 0)
    if budget is not None and images and errors / images > budget:
        raise RunFailed(f"{errors} of {images} images failed ({errors / images:.1%}), over "
                        f"the error budget of {budget:.1%} (run.max_error_rate); nothing was committed")


def _result(spec: JobSpec, run_id: str, output_uri: str, stats: pa.Table, wall: float, card: Optional[ArtifactInfo],
            plan: Plan) -> RunResult:
    import pyarrow.compute as pc

    errors = stats.filter(pc.equal(stats.column("status"), STATUS_ERROR))
    stages = pc.list_element(pc.split_pattern(errors.column("error"), ": ", max_splits=1), 0) \
        if errors.num_rows else pa.chunked_array([], pa.string())
    ok = stats.filter(pc.equal(stats.column("status"), STATUS_OK))
    sample = errors.slice(0, 20).select(["uri", "error"]).to_pylist()
    causes: dict[str, int] = {}
    for message in errors.column("error").to_pylist():
        causes[error_cause(message)] = causes.get(error_cause(message), 0) + 1
    return RunResult(
        run_id=run_id,
        output_uri=output_uri,
        rows=stats.num_rows,
        by_status=count_values(stats.column("status")),
        by_label=count_values(ok.column("label")),
        errors_by_stage=count_values(stages),
        sample_errors=sample,
        wall_seconds=wall,
        images_per_second=stats.num_rows / wall if wall > 0 else 0.0,
        model_id=card.model_id if card else None,
        plan=asdict(plan),
        errors_by_cause=dict(sorted(causes.items(), key=lambda kv: (-kv[1], kv[0]))),
        spec_digest=spec_digest(spec),
    )


def error_cause(message: str) -> str:
    """The kind of an error message, for grouping: details in parentheses and numbers dropped
    ('decode: image is NxN = N pixels, over the decompression-bomb limit of N ...')."""
    head = re.split(r"\s[(;]", message or "", maxsplit=1)[0]
    return re.sub(r"\d[\d,.]*", "N", head).strip()


def spec_digest(spec: JobSpec) -> str:
    """sha256 of the validated spec (defaults filled in), to tell runs of different specs apart."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def run_job(spec: JobSpec, run_id: Optional[str] = None, quiet: bool = False,
            verbose: bool = False, once: bool = False, redirect_ray: bool = False) -> RunResult:
    """Everything ``imgclf run`` does after validation: examples, Ray, listing, execution, commit.

    Progress goes to stderr: a bar on a terminal, a log line every 10 s otherwise or with ``quiet``.
    """
    from imgclf_ray import examples

    mode = resolve_mode(quiet)
    run_id = run_id or spec.sink.run_id or default_run_id(spec)
    examples.prepare(spec, progress=mode)
    with _locked(spec, run_id) as lock:
        done = sink.committed_runs(spec.sink.uri, spec.storage, run_id) if once else {}
        if run_id in done:
            raise NothingToDo(f"run {run_id} is already committed at {done[run_id]}; "
                              "nothing was done (a dated run happens once; --run-id replaces a run)")
        return _run_locked(spec, run_id, mode, verbose, lock, redirect_ray)


def _run_locked(spec: JobSpec, run_id: str, mode: Mode, verbose: bool, lock: RunLock,
                redirect_ray: bool = False) -> RunResult:
    if spec.decode.dicom_allow_phi:
        Progress.note("WARNING: decode.dicom_allow_phi is true: the dicom column of this run may hold "
                      "patient-identifying attributes, exactly as the files store them; the manifest "
                      "records it", mode)
    # Fail on a bad artifact, or one that would run code, before Ray starts. The card is read here,
    # once, and handed on.
    info = describe_artifact(spec.model.uri, spec.storage) if spec.model else None
    model_id = info.model_id if info else None
    if spec.model is not None:
        refuse_code(spec.model.uri, spec.storage, spec.model.trusted, info)
    listing_started = time.perf_counter()
    listed = list_archive(spec.source, spec.storage, progress=mode)
    skipped = skipped_counts(listed)
    if skipped:
        Progress.note(f"listing: {listed.num_rows} files; skipped " + ", ".join(
            f"{n} ({why})" for why, n in skipped.items()), mode)
    manifest = attach_true_labels(listed, spec.source, spec.storage)
    listing_seconds = time.perf_counter() - listing_started
    if spec.incremental is not None:
        listed_rows = manifest.num_rows
        manifest = _incremental(spec, manifest, model_id, mode, run_id)
        if not manifest.num_rows:
            why = (f"all {listed_rows} listed images were processed by earlier runs"
                   f"{' with this model' if model_id else ''}")
            return _commit_nothing_new(spec, run_id, lock, why, listed_rows, skipped, listing_seconds, info)
    ray_log = ensure_ray(spec.run.ray_address, verbose, quiet=redirect_ray and mode == "log" and not verbose)
    import ray

    # Our own progress display replaces Ray Data's bars (one count, shown once).
    ray.data.DataContext.get_current().enable_progress_bars = False
    result = execute(spec, manifest, run_id, progress=mode, listing_seconds=listing_seconds, lock=lock,
                     listing_skipped=skipped, model=info)
    result.ray_log = ray_log
    return result
