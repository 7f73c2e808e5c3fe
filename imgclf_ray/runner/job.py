"""One run, top to bottom: list -> select (incremental) -> build -> execute -> check -> commit."""

from __future__ import annotations

import logging
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from imgclf_ray import faults, interrupts
from imgclf_ray.errors import NothingToDo
from imgclf_ray.io import sink
from imgclf_ray.io.labels import attach_true_labels
from imgclf_ray.io.listing import list_archive, skipped_counts
from imgclf_ray.io.lock import RunLock
from imgclf_ray.io.schema import SCHEMA_VERSION, run_schema
from imgclf_ray.io.storage import filesystem, join, to_uri
from imgclf_ray.models.hierarchy import ArtifactInfo, describe_artifact
from imgclf_ray.models.loader import refuse_code
from imgclf_ray.progress import Mode, Progress, resolve_mode
from imgclf_ray.runner.checks import check_budget, check_device_decode, user_errors
from imgclf_ray.runner.metrics import Watch
from imgclf_ray.runner.plan import make_plan
from imgclf_ray.runner.passes import archive_checks, cluster_and_flag_summary, prepare_clusterer
from imgclf_ray.runner.readback import read_back, write_state
from imgclf_ray.runner.ray_setup import ensure_ray
from imgclf_ray.runner.result import RunResult, make_result, since_process_start, spec_digest
from imgclf_ray.spec import JobSpec

if TYPE_CHECKING:
    from imgclf_ray.runner.engine import Engine

log = logging.getLogger(__name__)


def run_folder(spec: JobSpec, run_id: str, run_date: Optional[date] = None) -> str:
    """The run's folder under sink.uri (sink.layout; the run date defaults to today, UTC)."""
    when = run_date or spec.sink.run_date or datetime.now(timezone.utc).date()
    return sink.run_path(spec.sink.layout, run_id, when, spec.name)


def default_run_id(spec: JobSpec) -> str:
    return f"{spec.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"


def execute(spec: JobSpec, manifest, run_id: Optional[str] = None,
            progress: Mode = "off", listing_seconds: Optional[float] = None,
            lock: Optional[RunLock] = None, listing_skipped: Optional[dict[str, int]] = None,
            model: Optional[ArtifactInfo] = None) -> RunResult:
    """Classify every row of ``manifest`` (a table, or ``runner.selection.Blocks`` in Ray's object
    store) and commit the output as run ``run_id``.

    Ray must be initialised (for run.executor: ray). Holds the run id's lock while it works
    (``lock``, when the caller took it already). Raises RunFailed (nothing committed) when the
    error budget is exceeded or the staged output does not hold every listed input exactly once;
    RunLocked when another attempt of the run id is live. ``model``: the artifact's description when the caller read it already.
    """
    run_id = run_id or spec.sink.run_id or default_run_id(spec)
    if lock is not None:
        return _execute(spec, manifest, run_id, progress, listing_seconds, lock, listing_skipped, model)
    with _locked(spec, run_id) as lock:
        return _execute(spec, manifest, run_id, progress, listing_seconds, lock, listing_skipped, model)


@contextlib.contextmanager
def _job_locked(spec: JobSpec, run_id: str, mode: Mode = "off"):
    """An incremental job's lock, from selection to commit: a second night of the job meanwhile
    refuses (JobLocked, exit 75) or waits (incremental.overlap). Nothing for other jobs."""
    if spec.incremental is None:
        yield None
        return
    from imgclf_ray.io.lock import JobLock

    lock = JobLock(spec.sink.uri, spec.name, run_id, uuid.uuid4().hex[:12], spec.storage)
    if spec.incremental.overlap == "wait":
        wait = spec.incremental.overlap_wait
        lock.acquire_waiting(wait, on_wait=lambda exc: Progress.note(
            f"waiting up to {wait:.0f} s (incremental.overlap: wait): {str(exc).split('; run ')[0]}", mode))
    else:
        lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def _locked(spec: JobSpec, run_id: str):
    """The run id's lock, with what a killed earlier attempt left half done finished or undone."""
    sink.check_format(spec.sink.uri, spec.sink.format, spec.storage)
    with RunLock(spec.sink.uri, run_id, uuid.uuid4().hex[:12], spec.storage) as lock:
        sink.recover(spec.sink.uri, run_id, spec.storage)
        sink.recover_others(spec.sink.uri, spec.storage, skip=run_id)
        yield lock


def _execute(spec: JobSpec, manifest, run_id: str, progress: Mode,
             listing_seconds: Optional[float], lock: RunLock,
             listing_skipped: Optional[dict[str, int]] = None, model: Optional[ArtifactInfo] = None) -> RunResult:
    from imgclf_ray.curation.rows import row_rules

    engine = engine_for(spec, model)
    run = make_plan(spec, engine.resources(), model)
    card, checks, labels, plan = run.model, run.checks, run.label_issue_labels, run.resources
    log.info("plan (%s): %s", engine.name, plan)
    started_at = datetime.now(timezone.utc).isoformat()
    started = time.perf_counter()
    clusterer = prepare_clusterer(engine, spec, manifest, plan, progress)
    outlier_threshold = (clusterer.outlier_threshold(spec.curate.outlier_quantile)
                         if clusterer is not None and "outlier" in checks else None)
    rules = row_rules(checks, spec.curate, outlier_threshold) if spec.curate else None
    run_date = spec.sink.run_date or datetime.now(timezone.utc).date()
    staging = sink.Staging.new(spec.sink.uri, run_id, spec.storage, run_folder(spec, run_id, run_date), lock.attempt,
                               spec.sink.format)
    metrics = engine.metrics()
    fs, staging_path = filesystem(staging.uri, spec.storage)
    try:
        split = spec.source.container is not None or spec.decode.frames == "all"
        shown = Progress("classify", manifest.num_rows, unit="file" if split else "img", mode=progress)
        with Watch(metrics, shown, split=split), user_errors(metrics):
            engine.classify(run, manifest, run_id, metrics, clusterer, rules, fs, staging_path,
                            run_schema(run_id, card.model_id if card else None, card.labels if card else None))
        staged = [to_uri(fs, p) for p in staging.staged_files()]
        tasks = engine.tasks
        curation = archive_checks(tasks, spec, staged, checks, labels, metrics)
        wall = time.perf_counter() - started
        back = read_back(tasks, spec, staged, [tasks.put(manifest)] if isinstance(manifest, pa.Table) else manifest.refs)
        back.check_complete("all" if spec.source.container else spec.decode.frames)
        result = make_result(spec, run_id, staging.run_uri, back.summary, wall, card, plan)
        result.files, result.listing_skipped = manifest.num_rows, listing_skipped or {}
        result.stages = metrics.snapshot()
        result.first_batch_seconds = since_process_start(metrics.first_batch())
        result.started_at, result.listing_seconds = started_at, listing_seconds
        result.curation = curation
        check_budget(spec, result)
        extra_files = cluster_and_flag_summary(spec, back, result, clusterer)
        shield = contextlib.ExitStack()
        shield.enter_context(interrupts.shielded())  # from here a signal waits for the commit (seconds)
    except BaseException:
        staging.discard()
        raise
    finally:
        metrics.close()
    with shield:
        _commit(spec, run_id, run_date, lock, staging, tasks, back, result, card, wall, extra_files)
    return result


def _commit(spec: JobSpec, run_id: str, run_date: date, lock: RunLock, staging, tasks, back, result: RunResult,
            card, wall: float, extra_files: dict) -> None:
    """The state record, then the commit (manifest, _SUCCESS), then the older state records forgotten."""
    from imgclf_ray.io import state

    faults.point("after_write")
    if spec.incremental is not None:
        # Recorded before the commit under this attempt's name; it counts only while the committed
        # manifest names this attempt.
        tasks.get(tasks.submit(write_state, state.state_file(state_uri(spec), run_id, staging.attempt),
                               spec.storage, back.state_parts))
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


def engine_for(spec: JobSpec, model: Optional[ArtifactInfo]) -> "Engine":
    """The run's engine (run.executor): Ray Data on the cluster, or the same stages in this process."""
    if spec.run.executor == "local":
        from imgclf_ray.runner.local import LocalEngine

        return LocalEngine(light=model is None or model.framework == "sklearn")
    from imgclf_ray.runner.build import RayEngine

    return RayEngine()


def state_uri(spec: JobSpec) -> str:
    return spec.incremental.state or join(spec.sink.uri, "_state", spec.name)


@dataclass
class Selection:
    """What a run (or its dry run) works on: the files listed and skipped, the rows to process (a
    table here, or ``runner.selection.Blocks`` in Ray's object store for an inventory) and, for an
    incremental job, why each listed file is in or out."""

    listed: int
    skipped: dict[str, int]
    rows: Any
    why: Optional[dict[str, int]]
    listing_tasks: int


def select(spec: JobSpec, model_id: Optional[str], mode: Mode, run_id: str) -> Selection:
    """List the archive and select the rows to process, as every run does: an inventory with Ray
    tasks (Ray must be up), anything else in this process; an incremental job against the
    committed state, ``run_id``'s own record not counting (the run replaces it)."""
    from imgclf_ray.io import state

    if spec.source.inventory:  # billions of keys: listed and selected by Ray tasks
        from imgclf_ray.runner.selection import list_blocks, select_blocks

        blocks = list_blocks(spec.source, spec.storage)
        todo, why = blocks, None
        if spec.incremental is not None:
            records = state.committed_records(state_uri(spec), spec.sink.uri, spec.storage, replacing=run_id)
            todo, why = select_blocks(blocks, records, model_id, spec.incremental.reprocess_on_model_change,
                                      spec.storage)
        selected = Selection(blocks.rows, blocks.skipped, todo, why, blocks.tasks)
    else:
        listed = list_archive(spec.source, spec.storage, progress=mode)
        todo, why = listed, None
        if spec.incremental is not None:
            seen = state.load(state_uri(spec), spec.sink.uri, spec.storage, replacing=run_id)
            todo, why = state.pending(listed, seen, model_id, spec.incremental.reprocess_on_model_change)
        selected = Selection(listed.num_rows, skipped_counts(listed), todo, why, 1)
    if why is not None:
        _note_selection(selected.listed, why, mode)
    return selected


def _note_selection(listed: int, why: dict[str, int], mode: Mode) -> None:
    Progress.note(f"incremental: {listed} listed; {why['new']} new, {why['changed']} changed, "
                  f"{why['model_changed']} for a new model, {why['unchanged']} already processed (skipped)", mode)


def _commit_nothing_new(spec: JobSpec, run_id: str, lock: RunLock, why: str, files: int,
                        skipped: dict[str, int], listing_seconds: float,
                        info: Optional[ArtifactInfo] = None) -> RunResult:
    """Commit an empty run record (one schema-only Parquet file, its manifest and summary saying
    why), so that every night shows in ``imgclf runs`` and ``read_run`` — without starting Ray."""
    import io
    import uuid

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
    with interrupts.shielded():
        _commit_empty(spec, run_id, run_date, lock, staging, result, info, why, empty)
    return result


def _commit_empty(spec: JobSpec, run_id: str, run_date: date, lock: RunLock, staging, result: RunResult,
                  info: Optional[ArtifactInfo], why: str, empty: pa.Table) -> None:
    from imgclf_ray.io import state

    if spec.incremental is not None:
        write_state(state.state_file(state_uri(spec), run_id, staging.attempt), spec.storage,
                    [empty.select(state.STATE_COLUMNS)])
    lock.verify()
    sink.commit(staging, {"job": spec.name, "schema_version": SCHEMA_VERSION, "run_date": run_date.isoformat(),
                          "model_id": result.model_id, "task": info.task if info else None,
                          "labels": info.labels if info else None, "by_status": {}, "errors_by_stage": {},
                          "wall_seconds": 0.0, "nothing_new": why},
                extra_files={sink.SUMMARY_FILE: json.dumps(result.summary(), indent=2).encode()})
    if spec.incremental is not None:
        state.forget_others(state_uri(spec), run_id, staging.attempt, spec.storage)


def run_job(spec: JobSpec, run_id: Optional[str] = None, quiet: bool = False,
            verbose: bool = False, once: bool = False, redirect_ray: bool = False) -> RunResult:
    """Everything ``imgclf run`` does after validation: Ray, listing, execution, commit (a spec's
    ``example:`` data and model are materialised before, by the CLI and the API).

    Progress goes to stderr: a bar on a terminal, a log line every 10 s otherwise or with ``quiet``.
    """
    mode = resolve_mode(quiet)
    run_id = run_id or spec.sink.run_id or default_run_id(spec)
    if once:  # before any lock: a date done earlier is a no-op even while another night runs
        _nothing_if_committed(spec, run_id)
    with _job_locked(spec, run_id, mode) as job_lock, _locked(spec, run_id) as lock:
        if once:
            _nothing_if_committed(spec, run_id)
        if job_lock is not None:
            lock.guards.append(job_lock)  # a lost job lease refuses the commit too
        return _run_locked(spec, run_id, mode, verbose, lock, redirect_ray)


def _nothing_if_committed(spec: JobSpec, run_id: str) -> None:
    from imgclf_ray.errors import UserError

    done = sink.committed_runs(spec.sink.uri, spec.storage, run_id)
    if run_id in done:
        try:
            sink.read_manifest(done[run_id], spec.storage)
        except UserError:
            return  # a damaged run folder: this run rewrites it (what its error message advises)
        raise NothingToDo(f"run {run_id} is already committed at {done[run_id]}; "
                          "nothing was done (a dated run happens once; --run-id replaces a run)")


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
    check_device_decode(spec, info)
    if spec.run.executor == "local":
        from imgclf_ray.runner.local import warm_up

        warm_up(info.framework if info else None)
    listing_started = time.perf_counter()
    quiet_ray = redirect_ray and mode == "log" and not verbose
    ray_log = ray_started = None
    if spec.source.inventory:
        ray_log, ray_started = ensure_ray(spec.run.ray_address, verbose, quiet=quiet_ray), True
    selected = select(spec, model_id, mode, run_id)
    listed_rows, skipped, manifest = selected.listed, selected.skipped, selected.rows
    if skipped:
        Progress.note(f"listing: {listed_rows} files; skipped " + ", ".join(
            f"{n} ({why})" for why, n in skipped.items()), mode)
    if spec.source.labels is not None:
        manifest = (attach_true_labels(manifest, spec.source, spec.storage) if isinstance(manifest, pa.Table)
                    else manifest.map(attach_true_labels, spec.source, spec.storage))
    listing_seconds = time.perf_counter() - listing_started
    if spec.incremental is not None and not manifest.num_rows:
        why = (f"all {listed_rows} listed images were processed by earlier runs"
               f"{' with this model' if model_id else ''}")
        return _commit_nothing_new(spec, run_id, lock, why, listed_rows, skipped, listing_seconds, info)
    if spec.run.executor == "ray":
        if not ray_started:
            ray_log = ensure_ray(spec.run.ray_address, verbose, quiet=quiet_ray)
        import ray

        # Our own progress display replaces Ray Data's bars (one count, shown once).
        ray.data.DataContext.get_current().enable_progress_bars = False
    elif quiet_ray:  # what libraries print while decoding (here and in the decode workers) goes to the log
        from imgclf_ray.runner.ray_setup import output_to_file

        ray_log = output_to_file()
    result = execute(spec, manifest, run_id, progress=mode, listing_seconds=listing_seconds, lock=lock,
                     listing_skipped=skipped, model=info)
    result.ray_log = ray_log
    return result
