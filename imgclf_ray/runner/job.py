"""One run, top to bottom: list -> select (incremental) -> build -> execute -> check -> commit."""

from __future__ import annotations

import logging
import contextlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from imgclf_ray import faults, interrupts
from imgclf_ray.errors import NothingToDo, RunFailed
from imgclf_ray.io import sink
from imgclf_ray.io.sink import Sink
from imgclf_ray.io.labels import attach_true_labels
from imgclf_ray.io.listing import list_archive, skipped_counts
from imgclf_ray.io.lock import RunLock
from imgclf_ray.io.schema import SCHEMA_VERSION, run_schema
from imgclf_ray.io.storage import join, to_uri
from imgclf_ray.models.hierarchy import ArtifactInfo
from imgclf_ray.progress import Mode, Progress, resolve_mode
from imgclf_ray.runner.checks import check_budget, user_errors
from imgclf_ray.runner.engine import Output
from imgclf_ray.runner.metrics import Watch
from imgclf_ray.runner.executor import choose as choose_executor
from imgclf_ray.runner.plan import make_plan, refuse_before_work, registered_model, with_runtime
from imgclf_ray.runner.passes import archive_checks, cluster_and_flag_summary, prepare_clusterer, scan_columns
from imgclf_ray.runner.readback import read_back, write_state
from imgclf_ray.runner.ray_setup import ensure_ray
from imgclf_ray.runner.result import RunResult, make_result, since_process_start, spec_digest
from imgclf_ray.spec import JobSpec

if TYPE_CHECKING:
    from imgclf_ray.runner.engine import Engine

log = logging.getLogger(__name__)


def run_date_of(spec: JobSpec) -> date:
    """The run's date: ``sink.run_date`` (``--date``), else today (UTC)."""
    return spec.sink.run_date or datetime.now(timezone.utc).date()


def run_id_of(spec: JobSpec, run_id: Optional[str] = None, kind: str = "") -> str:
    """The run's id: ``run_id`` (``--run-id``), else ``sink.run_id``, else the job's name, ``kind``
    (e.g. "curate") and the time (UTC)."""
    return run_id or spec.sink.run_id or f"{spec.name}-{kind + '-' if kind else ''}{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"


def run_folder(spec: JobSpec, run_id: str, run_date: Optional[date] = None) -> str:
    """The run's folder under sink.uri (sink.layout; the run date defaults to today, UTC)."""
    return sink.run_path(spec.sink.layout, run_id, run_date or run_date_of(spec), spec.name)


DECODE_CORES_PER_GPU = 9  # Pillow decode + resize at ~200-330 images/s a core against ~3,000 images/s a GPU


def sink_of(spec: JobSpec) -> Sink:
    return Sink(spec.sink.uri, spec.storage, spec.sink.format)


@dataclass
class Listing:
    """How the rows a run works on were found (the summary's listing facts)."""

    seconds: Optional[float] = None
    files: Optional[int] = None
    skipped: dict[str, int] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)  # incremental: why each file is in or out


@dataclass
class Attempt:
    """One attempt of one run under its lock, after recovery: what every step after selection uses."""

    spec: JobSpec
    run_id: str
    lock: RunLock
    sink: Sink
    run_date: date
    mode: Mode = "off"
    registered: Optional[dict[str, Any]] = None  # model.uri models:/...: the version (runner.plan.registered_model)
    executor: dict[str, str] = field(default_factory=dict)  # run.executor as chosen, and why (runner.executor)
    int8: Optional[Any] = None  # model.precision int8: the quantized artifact (runner.int8.Int8)

    def staging(self) -> sink.Staging:
        return self.sink.staging(self.run_id, run_folder(self.spec, self.run_id, self.run_date), self.lock.attempt)


def execute(spec: JobSpec, manifest, run_id: Optional[str] = None, progress: Mode = "off",
            listing: Optional[Listing] = None, attempt: Optional[Attempt] = None,
            model: Optional[ArtifactInfo] = None) -> RunResult:
    """Classify every row of ``manifest`` (a table, or ``runner.selection.Blocks`` in Ray's object
    store) and commit the output as run ``run_id``.

    Ray must be initialised (for run.executor: ray). Holds the run id's lock while it works
    (``attempt``, when the caller took it already). Raises RunFailed (nothing committed) when the
    error budget is exceeded or the staged output does not hold every listed input exactly once;
    RunLocked when another attempt of the run id is live. ``model``: the artifact's description
    when the caller read it (with ``attempt``: checked by ``refuse_before_work`` already).
    """
    if attempt is not None:  # run_job's: it refused what it must before its listing
        return _execute(attempt, manifest, listing or Listing(), model)
    spec, _ = choose_executor(spec)
    model = refuse_before_work(spec, model)
    with _locked(spec, sink_of(spec), run_id_of(spec, run_id), progress) as attempt:
        return _execute(attempt, manifest, listing or Listing(), model)


@contextlib.contextmanager
def _job_locked(spec: JobSpec, out: Sink, run_id: str, mode: Mode = "off"):
    """An incremental job's lock, from selection to commit: a second night of the job meanwhile
    refuses (JobLocked, exit 75) or waits (incremental.overlap). Nothing for other jobs."""
    if spec.incremental is None:
        yield None
        return
    from imgclf_ray.io.lock import JobLock

    lock = JobLock(out, spec.name, run_id, uuid.uuid4().hex[:12])
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
def _locked(spec: JobSpec, out: Sink, run_id: str, mode: Mode = "off"):
    """The run id's lock in the sink ``out``, with what a killed earlier attempt left half done
    finished or undone: yields the ``Attempt``."""
    out.check_format()
    with RunLock.on(out, run_id, uuid.uuid4().hex[:12]) as lock:
        out.recover(run_id)
        out.recover_others(skip=run_id)
        yield Attempt(spec, run_id, lock, out, run_date_of(spec), mode)


def _execute(at: Attempt, manifest, listing: Listing, card: Optional[ArtifactInfo]) -> RunResult:
    from imgclf_ray.curation.rows import row_rules

    spec, progress = at.spec, at.mode
    engine = engine_for(spec, card)
    run, runtime = with_runtime(make_plan(spec, engine.resources(), card), manifest.num_rows)
    given = spec  # its digest names the job as written, whatever runtime auto took this night
    at.spec = spec = run.spec  # model.runtime decided (auto): the manifest records it
    checks, plan = run.checks, run.resources
    log.info("plan (%s): %s", engine.name, plan)
    _note_decode_cores(spec, plan, progress)
    started_at = datetime.now(timezone.utc).isoformat()
    started = time.perf_counter()
    clusterer = prepare_clusterer(engine, spec, manifest, plan, progress)
    outlier_threshold = (clusterer.outlier_threshold(spec.curate.outlier_quantile)
                         if clusterer is not None and "outlier" in checks else None)
    rules = row_rules(checks, spec.curate, outlier_threshold) if spec.curate else None
    staging = at.staging()
    metrics = engine.metrics()
    try:
        split = spec.source.container is not None or spec.decode.frames == "all"
        shown = Progress("classify" if card else "curate", manifest.num_rows, unit="file" if split else "img", mode=progress)
        with Watch(metrics, shown, split=split), user_errors(metrics):
            engine.classify(run, manifest, Output(at.run_id, staging, run_schema(
                at.run_id, card.model_id if card else None, card.labels if card else None), scan_columns(run)),
                metrics, clusterer, rules)
        staged = [to_uri(at.sink.fs, p) for p in staging.staged_files()]
        tasks = engine.tasks
        inputs = [to_uri(at.sink.fs, p) for p in staging.staged_files(sink.SCAN_SUFFIX)] if run.checks else []
        curation, scanned = archive_checks(tasks, spec, staged, inputs, run, metrics)
        wall = time.perf_counter() - started
        back = read_back(tasks, spec, staged, [tasks.put(manifest)] if isinstance(manifest, pa.Table) else manifest.refs,
                         scanned)
        back.check_complete("all" if spec.source.container else spec.decode.frames)
        if curation and curation["scanned_rows"] != back.summary.by_status.get("ok", 0):
            raise RunFailed(f"output check failed: the archive-wide checks scanned {curation['scanned_rows']} ok rows, "
                            f"the staged files hold {back.summary.by_status.get('ok', 0)}; nothing was committed")
        result = make_result(given, at.run_id, staging.run_uri, back.summary, wall, card, plan)
        result.files, result.listing_skipped = manifest.num_rows, listing.skipped
        result.selection = listing.selection
        result.stages = metrics.snapshot()
        result.first_batch_seconds = since_process_start(metrics.first_batch())
        result.started_at, result.listing_seconds = started_at, listing.seconds
        result.curation = curation
        result.runtime = runtime or ({"name": "onnxruntime", "why": "model.precision: int8"} if at.int8 else {})
        check_budget(spec, result)
        extra_files = cluster_and_flag_summary(spec, back, result, clusterer)
        shield = contextlib.ExitStack()
        shield.enter_context(interrupts.shielded())  # from here a signal waits for the commit (seconds)
    except BaseException:
        staging.discard()
        raise
    finally:
        metrics.close()
    record = {**_model_facts(card, spec), "clusterer_id": result.clusterer.get("clusterer_id"), "plan": result.plan,
              "dicom_allow_phi": spec.decode.dicom_allow_phi}
    state = lambda where: tasks.get(tasks.submit(write_state, where, spec.storage, back.state_parts))  # noqa: E731
    with shield:
        _commit(at, staging, result, record, extra_files, state, back.rows_per_file)
    return result


def _note_decode_cores(spec: JobSpec, plan, progress: Mode) -> None:
    """A plan line when GPU actors leave fewer CPUs per GPU for decoding than keep a GPU busy."""
    if plan.gpus_per_actor and spec.decode.jpeg_on != "predictor" and not plan.awaits_gpus:
        decode_cores = (plan.cluster_cpus - plan.actors * plan.cpus_per_actor) / max(plan.cluster_gpus, 1)
        if decode_cores < DECODE_CORES_PER_GPU:
            Progress.note(f"plan: {decode_cores:.0f} CPUs per GPU left for decoding; a GPU running a ResNet-sized "
                          f"model takes {DECODE_CORES_PER_GPU}-15 decode cores (docs/performance.md): give the GPU "
                          "nodes more CPUs, or decode.jpeg_on: predictor", progress)


def _model_facts(card: Optional[ArtifactInfo], spec: JobSpec) -> dict[str, Any]:
    """What the manifest says of the model: task and labels; a multilabel model's threshold per
    label as the night applied them; a hierarchical model's leaf paths (the review loop's
    uncertainty and labeling interface read them)."""
    facts: dict[str, Any] = {"task": card.task if card else None, "labels": card.labels if card else None}
    if card is not None and card.task == "multilabel":
        from imgclf_ray.models.heads import Head

        head = Head(card.task, card.labels, card.cards[()].thresholds, spec.model.threshold, spec.model.thresholds)
        facts["thresholds"] = dict(zip(card.labels, head.thresholds.astype(float).tolist()))
    if card is not None and card.task == "hierarchical":
        facts["label_tree"] = leaf_paths(card)
    return facts


def leaf_paths(card: ArtifactInfo) -> list[list[str]]:
    """Every root-to-leaf path of a hierarchical model's tree, sorted."""
    return sorted([list(path) + [label] for path, node in card.cards.items() for label in node.labels
                   if tuple(path) + (label,) not in card.cards])


def _commit(at: Attempt, staging: sink.Staging, result: RunResult, record: dict, extra_files: dict, write: Any,
            rows: Optional[dict[str, int]] = None) -> None:
    """The state record, then the commit (manifest, _SUCCESS), then the older state records
    forgotten: for a run with rows and a night with nothing new alike. ``write(state_file)``
    writes the run's state records."""
    from imgclf_ray.io import state

    spec = at.spec
    faults.point("after_write")
    if spec.incremental is not None:
        # Recorded before the commit under this attempt's name; it counts only while the committed
        # manifest names this attempt.
        write(state.state_file(state_uri(spec), at.run_id, staging.attempt))
    faults.point("after_state")
    at.lock.verify()
    result.registered_model = at.registered
    result.executor = at.executor
    if at.int8 is not None:
        result.int8 = asdict(at.int8)
        record = {**record, "int8": result.int8}
    if at.registered:  # the registry version a models:/ uri named, so that the night can be reproduced
        record = {**record, "registered_model": at.registered}
    facts = {"job": spec.name, "schema_version": SCHEMA_VERSION, "run_date": at.run_date.isoformat(),
             "model_id": result.model_id, **record, "by_status": result.by_status,
             "errors_by_stage": result.errors_by_stage, "wall_seconds": round(result.wall_seconds, 3)}
    at.sink.commit(staging, facts, {sink.SUMMARY_FILE: json.dumps(result.summary(), indent=2).encode(), **extra_files},
                   rows=rows)
    if spec.incremental is not None:
        state.forget_others(state_uri(spec), at.run_id, staging.attempt, spec.storage)
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
            todo, why = select_blocks(blocks, records, model_id, spec.incremental.on_new_model == "relabel",
                                      spec.storage)
        selected = Selection(blocks.rows, blocks.skipped, todo, why, blocks.tasks)
    else:
        listed = list_archive(spec.source, spec.storage, progress=mode)
        todo, why = listed, None
        if spec.incremental is not None:
            seen = state.load(state_uri(spec), spec.sink.uri, spec.storage, replacing=run_id)
            todo, why = state.pending(listed, seen, model_id, spec.incremental.on_new_model == "relabel")
        selected = Selection(listed.num_rows, skipped_counts(listed), todo, why, 1)
    if why is not None:
        _note_selection(selected.listed, why, spec.incremental.on_new_model, mode)
    return selected


def _note_selection(listed: int, why: dict[str, int], on_new_model: str, mode: Mode) -> None:
    new_model = (f"{why['model_changed']} for a new model (on_new_model: relabel)" if on_new_model == "relabel" else
                 f"{why.get('other_model', 0)} labelled by another model kept (on_new_model: new_only)")
    Progress.note(f"incremental: {listed} listed; {why['new']} new, {why['changed']} changed, {new_model}, "
                  f"{why['unchanged']} already processed (skipped)", mode)


def _commit_nothing_new(at: Attempt, why: str, listing: Listing, info: Optional[ArtifactInfo]) -> RunResult:
    """Commit an empty run record (one schema-only Parquet file, its manifest and summary saying
    why), so that every night shows in ``imgclf runs`` and ``read_run`` — without starting Ray."""
    import io

    from imgclf_ray.io import state

    spec = at.spec
    staging = at.staging()
    empty = run_schema(at.run_id, info.model_id if info else None, info.labels if info else None).empty_table()
    buf = io.BytesIO()
    pq.ParquetWriter(buf, empty.schema).close()  # no row group at all: a 0-row group breaks `datasets`
    at.sink.fs.makedirs(staging.path, exist_ok=True)
    at.sink.fs.pipe_file(join(staging.path, sink.staged_filename(uuid.uuid4().hex, 0)), buf.getvalue())
    result = RunResult(at.run_id, staging.run_uri, 0, {}, {}, {}, [], 0.0, 0.0, info.model_id if info else None,
                       spec_digest=spec_digest(spec), started_at=datetime.now(timezone.utc).isoformat(),
                       listing_seconds=listing.seconds, files=listing.files or 0, listing_skipped=listing.skipped,
                       selection=listing.selection,
                       nothing_new=why)
    write = lambda where: write_state(where, spec.storage, [empty.select(state.STATE_COLUMNS)])  # noqa: E731
    with interrupts.shielded():
        _commit(at, staging, result, {**_model_facts(info, spec), "nothing_new": why}, {}, write)
    return result


def run_job(spec: JobSpec, run_id: Optional[str] = None, quiet: bool = False,
            verbose: bool = False, once: bool = False, redirect_ray: bool = False) -> RunResult:
    """Everything ``imgclf run`` does after validation: Ray, listing, execution, commit (a spec's
    ``example:`` data and model are materialised before, by the CLI and the API).

    Progress goes to stderr: a bar on a terminal, a log line every 10 s otherwise or with ``quiet``.
    """
    mode = resolve_mode(quiet)
    run_id = run_id_of(spec, run_id)
    spec, why = choose_executor(spec)  # said on the summary's first line (a refusal stays one line)
    spec, registered = registered_model(spec)  # once, on the driver, before any lock
    out = sink_of(spec)  # the sink looked up once, for the locks, the run and its commit
    if once:  # before any lock: a date done earlier is a no-op even while another night runs
        _nothing_if_committed(out, run_id)
    with _job_locked(spec, out, run_id, mode) as job_lock, _locked(spec, out, run_id, mode) as attempt:
        if once:
            _nothing_if_committed(out, run_id)
        if job_lock is not None:
            attempt.lock.guards.append(job_lock)  # a lost job lease refuses the commit too
        attempt.registered = registered
        attempt.executor = {"name": spec.run.executor, "why": why}
        quiet_ray = redirect_ray and mode == "log" and not verbose
        return _run_locked(attempt, verbose, quiet_ray)


def _nothing_if_committed(out: Sink, run_id: str) -> None:
    from imgclf_ray.errors import UserError

    done = out.committed_runs(run_id)
    if run_id in done:
        try:
            out.run(done[run_id]).manifest()
        except UserError:
            return  # a damaged run folder: this run rewrites it (what its error message advises)
        raise NothingToDo(f"run {run_id} is already committed at {done[run_id]}; "
                          "nothing was done (a dated run happens once; --run-id replaces a run)")


def _run_locked(at: Attempt, verbose: bool, quiet_ray: bool) -> RunResult:
    spec, mode = at.spec, at.mode
    if spec.decode.dicom_allow_phi:
        Progress.note("WARNING: decode.dicom_allow_phi is true: the dicom column of this run may hold "
                      "patient-identifying attributes, exactly as the files store them; the manifest "
                      "records it", mode)
    # Fail on a bad artifact, or one that would run code, before Ray starts. The card is read here,
    # once, and handed on.
    info = refuse_before_work(spec)
    if spec.model is not None and spec.model.precision == "int8":  # before listing: the rows' model id
        from imgclf_ray.runner.int8 import prepare

        spec, at.int8 = prepare(spec, at.sink.uri, lambda text: Progress.note(text, mode))
        at.spec = spec
        info = refuse_before_work(spec)
    if spec.run.executor == "local":
        from imgclf_ray.runner.local import warm_up

        warm_up(info.framework if info else None)
    listing_started = time.perf_counter()
    ray_log = None
    if spec.source.inventory:
        ray_log = ensure_ray(spec.run.ray_address, verbose, quiet=quiet_ray)
    selected = select(spec, info.model_id if info else None, mode, at.run_id)
    manifest = selected.rows
    if selected.skipped:
        Progress.note(f"listing: {selected.listed} files; skipped " + ", ".join(
            f"{n} ({why})" for why, n in selected.skipped.items()), mode)
    if spec.source.labels is not None:
        manifest = (attach_true_labels(manifest, spec.source, spec.storage) if isinstance(manifest, pa.Table)
                    else manifest.map(attach_true_labels, spec.source, spec.storage))
    listing = Listing(time.perf_counter() - listing_started, selected.listed, selected.skipped,
                      {**selected.why, "on_new_model": spec.incremental.on_new_model} if selected.why else {})
    if spec.incremental is not None and not manifest.num_rows:
        why = (f"all {selected.listed} listed images were processed by earlier runs"
               f"{' with this model' if info else ''}")
        return _commit_nothing_new(at, why, listing, info)
    if spec.run.executor == "ray":
        why = at.executor.get("why", "") if at.executor else ""
        if why and not why.startswith("run.executor"):  # auto joins a Ray: said before the work, not only after
            hint = ("with the guard it runs in this process" if why.startswith("this script") else
                    "--local (run.executor: local) runs without it")
            Progress.note(f"executor: ray ({why}); {hint}", mode)
        if not spec.source.inventory:
            ray_log = ensure_ray(spec.run.ray_address, verbose, quiet=quiet_ray)
        import ray

        # Our own progress display replaces Ray Data's bars (one count, shown once).
        ray.data.DataContext.get_current().enable_progress_bars = False
    elif quiet_ray:  # what libraries print while decoding (here and in the decode workers) goes to the log
        from imgclf_ray.runner.ray_setup import output_to_file

        ray_log = output_to_file()
    result = execute(spec, manifest, at.run_id, progress=mode, listing=listing, attempt=at, model=info)
    result.ray_log = ray_log
    return result
