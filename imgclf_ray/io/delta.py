"""``sink.format: delta``: the sink is one Delta Lake table, partitioned by ``run_id``.

Each run is one Delta commit that replaces the rows of its run id and nothing else
(``write_deltalake(mode="overwrite", predicate="run_id = '<id>'")``): a reader of the table (Spark,
DuckDB's delta extension, polars, deltalake, Trino) sees a run's old rows or its new ones, never a
mix, and the other runs untouched. The commit carries ``imgclf.run_id`` and ``imgclf.attempt`` in
its commit info, which is how a commit that a killed driver left without its run record is found
and finished (imgclf_ray.io.sink.recover).

The run records (``_manifest.json``, ``_run_summary.json``, ``_SUCCESS``) live under
``<sink>/_runs/<run_id>/``, beside the table: Delta readers and VACUUM leave "_" paths alone.
Everything else under the sink (``_staging``, ``_locks``, ``_state``, ``_clusterers``) starts with
"_" too.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterable, Optional

import pyarrow as pa

from imgclf_ray.spec import StorageSpec

PARTITION = "run_id"
RUN_KEY, ATTEMPT_KEY = "imgclf.run_id", "imgclf.attempt"


def require():
    """The deltalake package, or one clear error naming the extra that installs it."""
    from imgclf_ray.extras import require as extra

    return extra("delta")


def table_uri(sink_uri: str) -> str:
    """What deltalake takes for the sink: a plain path for local folders, the URI otherwise."""
    uri = sink_uri.rstrip("/")
    return uri[len("file://"):] if uri.startswith("file://") else uri


def storage_options(sink_uri: str, storage: StorageSpec = StorageSpec()) -> dict[str, str]:
    """deltalake's options for an s3:// sink, from the spec's storage section (credentials come
    from the environment, as for every other access). Writers are serialised by imgclf's own
    sink-wide lock (see ``write_run``), which is what S3's lack of an atomic rename asks for."""
    if not sink_uri.startswith(("s3://", "s3a://")):
        return {}
    opts = {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    if storage.endpoint_url:
        opts["AWS_ENDPOINT_URL"] = storage.endpoint_url
        if storage.endpoint_url.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
    if storage.region:
        opts["AWS_REGION"] = storage.region
    if storage.profile:
        opts["AWS_PROFILE"] = storage.profile
    if storage.anon:
        opts["AWS_SKIP_SIGNATURE"] = "true"
    return opts


def _table(sink_uri: str, storage: StorageSpec, version: Optional[int] = None):
    deltalake = require()
    return deltalake.DeltaTable(table_uri(sink_uri), version=version,
                                storage_options=storage_options(sink_uri, storage) or None)


def is_table(sink_uri: str, storage: StorageSpec = StorageSpec()) -> bool:
    from imgclf_ray.io.storage import filesystem

    return is_table_at(*filesystem(sink_uri, storage))


def is_table_at(fs, path: str) -> bool:
    from imgclf_ray.io.storage import join

    return fs.isdir(join(path, "_delta_log")) or bool(fs.glob(join(path, "_delta_log", "*.json")))


def write_run(sink_uri: str, run_id: str, attempt: str, staged: list[str], schema: pa.Schema,
              storage: StorageSpec = StorageSpec(), metadata: Optional[dict[str, str]] = None) -> int:
    """Replace run ``run_id``'s rows in the table with the staged Parquet files' rows, in one Delta
    commit (streamed, never all in memory); returns the table version it made. Commits of
    different run ids are serialised by the sink-wide lock ``_locks/_delta.lock``."""
    import pyarrow.dataset as ds

    from imgclf_ray.io.storage import filesystem, pyarrow_fs

    deltalake = require()
    fs, _ = filesystem(sink_uri, storage)
    paths = [filesystem(uri, storage)[1] for uri in staged]
    schema = schema.remove_metadata()
    reader = ds.dataset(paths, schema=schema, format="parquet", filesystem=pyarrow_fs(fs)).scanner().to_reader() \
        if paths else pa.RecordBatchReader.from_batches(schema, [])
    properties = deltalake.CommitProperties(custom_metadata={RUN_KEY: run_id, ATTEMPT_KEY: attempt,
                                                             **(metadata or {})})
    with _table_lock(sink_uri, attempt, storage):
        before = current_version(sink_uri, storage)
        deltalake.write_deltalake(table_uri(sink_uri), reader, partition_by=[PARTITION], mode="overwrite",
                                  predicate=f"{PARTITION} = '{run_id}'", commit_properties=properties,
                                  storage_options=storage_options(sink_uri, storage) or None)
        version = attempt_version(sink_uri, attempt, before, storage)
    if version is None:  # pragma: no cover - deltalake returned without committing
        raise RuntimeError(f"the Delta commit of run {run_id} (attempt {attempt}) is not in the table's history")
    return version


@contextlib.contextmanager
def _table_lock(sink_uri: str, attempt: str, storage: StorageSpec, wait_seconds: float = 600.0):
    """The sink-wide lock ``_locks/_delta.lock`` (one Delta commit at a time), waited for."""
    from imgclf_ray.io.lock import RunLock, RunLocked

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            lock = RunLock(sink_uri, "_delta", attempt, storage).acquire()
            break
        except RunLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield lock
    finally:
        lock.release()


def current_version(sink_uri: str, storage: StorageSpec = StorageSpec()) -> int:
    """The table's latest version; -1 when there is no table yet."""
    return _table(sink_uri, storage).version() if is_table(sink_uri, storage) else -1


def attempt_version(sink_uri: str, attempt: str, after: int, storage: StorageSpec = StorageSpec()) -> Optional[int]:
    """The table version that attempt ``attempt`` committed, looking at the commits after version
    ``after`` (read from the log's JSON files: a commit's info carries imgclf.attempt); None if
    it did not commit."""
    import json

    from imgclf_ray.io.storage import filesystem, join

    fs, path = filesystem(sink_uri, storage)
    version = after + 1
    while True:
        try:
            lines = fs.cat_file(join(path, "_delta_log", f"{version:020d}.json")).decode().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            info = json.loads(line).get("commitInfo") if line.strip() else None
            if info is not None and info.get(ATTEMPT_KEY) == attempt:
                return version
        version += 1


def _ordered(table: pa.Table, columns: Optional[Iterable[str]] = None) -> pa.Table:
    from imgclf_ray.io.schema import OUTPUT_SCHEMA

    order = [n for n in OUTPUT_SCHEMA.names if n in table.column_names]
    order += [n for n in table.column_names if n not in order]
    return table.select([n for n in order if columns is None or n in columns])


def read_rows(sink_uri: str, run_id: str, version: Optional[int], columns=None,
              storage: StorageSpec = StorageSpec()) -> pa.Table:
    """Run ``run_id``'s rows as of table version ``version`` (the one its manifest records), the
    given columns (a list, a test on the name, or None for all) in the output schema's order.
    The run's files are read here, by path: Arrow reading through deltalake's own filesystem
    (``to_pyarrow_dataset``) ended some processes at exit with ``terminate called`` (exit 134,
    deltalake 1.6, pyarrow 25) after the rows had been printed."""
    from imgclf_ray.io.tables import read_columns

    table_at = _table(sink_uri, storage, version)
    schema = pa.schema(table_at.schema().to_arrow())
    names = schema.names if columns is None else (
        [n for n in schema.names if columns(n)] if callable(columns) else list(columns))
    missing = [n for n in names if n not in schema.names]
    if missing:
        raise ValueError(f"{sink_uri}: the Delta table has no column {', '.join(missing)}")
    protocol = table_at.protocol()
    if protocol.min_reader_version > 1:
        # Column mapping or deletion vectors (another engine wrote to the table): its files alone
        # are not the table; deltalake's own reader reads it (or says why it cannot).
        import pyarrow.dataset as ds

        from imgclf_ray.errors import UserError
        from imgclf_ray.messages import describe

        try:
            table = table_at.to_pyarrow_dataset().to_table(columns=names, filter=ds.field(PARTITION) == run_id)
        except Exception as exc:  # noqa: BLE001 - deltalake's DeltaProtocolError: features it does not read
            features = ", ".join(protocol.reader_features or []) or "none named"
            raise UserError(f"{sink_uri}: the Delta table at version {table_at.version()} cannot be read here: it asks "
                            f"readers for version {protocol.min_reader_version} (features: {features}; "
                            f"{describe(exc)})") from None
        return _ordered(table, names)
    # The files hold no partition column, and a column added to the table after the run: nulls.
    files = read_columns(file_uris(sink_uri, run_id, version, storage, table_at), lambda n: n in names, storage)
    rows = files.num_rows
    table = pa.table([files.column(n) if n in files.column_names else
                      pa.array([run_id] * rows, schema.field(n).type) if n == PARTITION else
                      pa.nulls(rows, schema.field(n).type) for n in names],
                     schema=pa.schema([schema.field(n) for n in names]))
    return _ordered(table, names)


def file_uris(sink_uri: str, run_id: str, version: Optional[int], storage: StorageSpec = StorageSpec(),
              table_at=None) -> list[str]:
    """The data files of run ``run_id`` at table ``version`` (Hive-style ``run_id=<id>/`` folders;
    the files themselves do not hold the partition column)."""
    table_at = table_at if table_at is not None else _table(sink_uri, storage, version)
    uris = table_at.file_uris(file_pruning_predicate=[(PARTITION, "=", run_id)])
    return sorted(f"file://{u}" if u.startswith("/") else u for u in uris)


def facts(manifest: dict[str, Any]) -> dict[str, str]:
    """Commit-info entries that describe a run (strings only)."""
    import json

    keys = ("job", "schema_version", "model_id", "labels")
    return {f"imgclf.{k}": v if isinstance(v, str) else json.dumps(v)
            for k, v in manifest.items() if k in keys and v is not None}
