"""The Python API: run a job and read its output from a notebook or another program.

    import imgclf_ray

    result = imgclf_ray.run("jobs/quickstart.yaml", overrides={"sink.uri": "out/nb"})
    table = imgclf_ray.read_run("out/nb")              # the latest committed run, a pyarrow.Table
    df = table.to_pandas()
    ds = imgclf_ray.read_run_dataset("out/nb")          # the same rows as a Ray Dataset

Same validation and errors as the CLI (a bad spec raises SpecError naming the key, before Ray
starts); a running Ray (``ray.init`` done, or RAY_ADDRESS) is reused.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from imgclf_ray.spec import JobSpec, StorageSpec

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from imgclf_ray.runner.result import RunResult


def load_job(job: Union[str, Path, dict, JobSpec], overrides: Optional[dict[str, Any]] = None) -> JobSpec:
    """A validated JobSpec from a YAML path, a mapping or a JobSpec, with ``overrides`` (dotted key
    -> value, as ``--set`` on the command line; values are taken as they are) applied."""
    from imgclf_ray.spec import apply_values, load_spec, parse_spec

    overrides = dict(overrides or {})
    if isinstance(job, (str, Path)):
        return load_spec(job, values=overrides)
    if isinstance(job, JobSpec):
        if not overrides:
            return job
        job = job.model_dump(mode="json", exclude_unset=True)
    data = apply_values(copy.deepcopy(job), overrides, "<dict>")
    return parse_spec(data, "<dict>", overridden=tuple(overrides))


def run(job: Union[str, Path, dict, JobSpec], overrides: Optional[dict[str, Any]] = None,
        run_id: Optional[str] = None, quiet: bool = True) -> "RunResult":
    """Run a job as ``imgclf run`` does (list, classify, commit) and return its RunResult
    (``.output_uri``, ``.rows``, ``.by_status``, ``.by_label``, ``.summary()``). A run with nothing
    new (incremental) commits an empty run record and returns it (``.nothing_new`` says why)."""
    from imgclf_ray.errors import SpecError
    from imgclf_ray.ids import id_problem
    from imgclf_ray.runner.job import run_job

    spec = load_job(job, overrides)
    if run_id is not None and id_problem(run_id):
        raise SpecError(f"run_id {run_id!r}: {id_problem(run_id)}")
    if spec.example is not None:
        from imgclf_ray.training.example_models import prepare

        prepare(spec, echo=None if quiet else print)
    return run_job(spec, run_id, quiet=quiet)


def _run_uri(sink_uri: str, run_id: Optional[str], storage: StorageSpec) -> str:
    from imgclf_ray.io.sink import resolve_run

    return resolve_run(sink_uri, run_id, storage)


def run_files(sink_uri: str, run_id: Optional[str] = None, storage: StorageSpec = StorageSpec()) -> list[str]:
    """The data files of one committed run (the latest when ``run_id`` is None), from its manifest
    (a Delta sink: the run's files at the table version it committed, in ``run_id=<id>/`` folders)."""
    from imgclf_ray.io.sink import run_files as files_of

    return files_of(_run_uri(sink_uri, run_id, storage), storage)


def read_run(sink_uri: str, run_id: Optional[str] = None, storage: StorageSpec = StorageSpec(),
             columns: Optional[list[str]] = None) -> "pa.Table":
    """One committed run's rows as a pyarrow.Table: run ``run_id``, or the latest committed run
    (empty or not); only the files its manifest lists (a Delta sink: the run's rows at the table
    version it committed). ``sink_uri`` may also be a run folder."""
    from imgclf_ray.io.schema import OUTPUT_SCHEMA
    from imgclf_ray.io.sink import read_rows

    table = read_rows(_run_uri(sink_uri, run_id, storage), columns, storage)
    return table if table.num_columns else OUTPUT_SCHEMA.empty_table()


def read_run_dataset(sink_uri: str, run_id: Optional[str] = None, storage: StorageSpec = StorageSpec()
                     ) -> "ray.data.Dataset":
    """The same rows as a Ray Dataset, for further distributed work: on an initialised Ray, else on
    the one a run would take (RAY_ADDRESS, a `ray start` instance of this machine, or a private
    one), started as a run starts it (Ray's start-up notices off the console)."""
    import ray.data
    from ray.data.datasource import Partitioning

    from imgclf_ray.io.schema import OUTPUT_SCHEMA
    from imgclf_ray.io.sink import read_manifest, run_files as files_of
    from imgclf_ray.io.storage import filesystem, pyarrow_fs

    if not ray.is_initialized():
        from imgclf_ray.runner.executor import started_instance
        from imgclf_ray.runner.ray_setup import ensure_ray

        ensure_ray(os.environ.get("RAY_ADDRESS") or ("auto" if started_instance()[0] else None))

    uri = _run_uri(sink_uri, run_id, storage)
    files = files_of(uri, storage)
    if not files:
        return ray.data.from_arrow(OUTPUT_SCHEMA.empty_table())
    # A Delta run's files hold every column but run_id, which their run_id=<id>/ folder gives.
    hive = read_manifest(uri, storage).get("format") == "delta"
    fs, _ = filesystem(sink_uri, storage)
    return ray.data.read_parquet([filesystem(f, storage)[1] for f in files], filesystem=pyarrow_fs(fs),
                                 partitioning=Partitioning("hive") if hive else None)


def read_labels(sink_uri: str, storage: StorageSpec = StorageSpec(), ray: bool = False):
    """The archive's current labels: one row per image its committed nights labelled — its latest
    model row (``model_label``, ``score``, ``class_scores``, ``run_id`` ...), its latest human label
    that applies (``label_source`` "human"; see ``imgclf review ingest``) or else the model's, in
    ``label`` / ``labels`` / ``label_path``. A pyarrow.Table; with ``ray=True`` a Ray Dataset whose
    blocks Ray tasks computed, partitioned by image id (the running Ray, or one started here): for
    an archive larger than this process's memory."""
    from imgclf_ray.review.labels import read_labels as current

    return current(sink_uri, storage, ray)
