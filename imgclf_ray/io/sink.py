"""Exactly-once output: data files are staged, checked, then committed with a manifest and _SUCCESS.

Layout under ``sink.uri`` (``<run>`` is ``sink.layout``: ``<run_id>`` by default, or e.g.
``date=2026-11-28/<run_id>`` to partition the runs by date)::

    <run>/part-00000.parquet ...      committed data files (the only *.parquet files outside _staging)
    <run>/_manifest.json              files, row counts, run facts (run_id, run_date, run_path)
    <run>/run_summary.json            counts, errors by stage and cause, stage throughput (alerting)
    <run>/_SUCCESS                    written last: a run without it is not committed
    _staging/<run_id>/<attempt>/      work in progress, files named *.parquet.staged

Readers trust a run only when ``_SUCCESS`` exists, and then only the files its manifest lists; a
reader that simply globs ``**/*.parquet`` sees committed files only, since staged files do not end
in ``.parquet``. Committing a run id that already exists replaces its files: the old ``_SUCCESS`` goes
first, so no reader ever takes a mix of old and new files for a committed run.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Optional

import pyarrow.parquet as pq

from imgclf_ray.io.storage import filesystem, join, to_uri
from imgclf_ray.spec import StorageSpec

STAGED_SUFFIX = ".parquet.staged"
MANIFEST_FILE = "_manifest.json"
SUCCESS_FILE = "_SUCCESS"
SUMMARY_FILE = "run_summary.json"


@dataclass(frozen=True)
class Staging:
    """Where one attempt of one run writes before commit."""

    sink_uri: str
    run_id: str
    attempt: str
    storage: StorageSpec
    run_path: str  # the run's folder under sink_uri (sink.layout)
    started: float = 0.0  # Unix time the attempt began

    @classmethod
    def new(cls, sink_uri: str, run_id: str, storage: StorageSpec = StorageSpec(),
            run_path: Optional[str] = None) -> "Staging":
        return cls(sink_uri.rstrip("/"), run_id, uuid.uuid4().hex[:12], storage, run_path or run_id, time.time())

    @property
    def uri(self) -> str:
        return join(self.sink_uri, "_staging", self.run_id, self.attempt)

    @property
    def run_uri(self) -> str:
        return join(self.sink_uri, self.run_path)

    def staged_files(self) -> list[str]:
        fs, path = filesystem(self.uri, self.storage)
        if not fs.exists(path):
            return []
        return sorted(p for p in fs.find(path) if p.endswith(STAGED_SUFFIX))

    def discard(self) -> None:
        """Remove this attempt's staged files, and the staging folders it leaves empty."""
        fs, path = filesystem(self.uri, self.storage)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        for parent in (path.rsplit("/", 1)[0], path.rsplit("/", 2)[0]):  # _staging/<run_id>, _staging
            try:
                if fs.isdir(parent) and not fs.ls(parent):
                    fs.rmdir(parent)
            except OSError:  # another attempt is writing there, or the store has no folders
                pass


def run_path(layout: str, run_id: str, run_date: date, name: str) -> str:
    """A run's folder under the sink, from ``sink.layout``."""
    return layout.format(run_id=run_id, date=run_date.isoformat(), year=f"{run_date.year:04d}",
                         month=f"{run_date.month:02d}", day=f"{run_date.day:02d}", name=name)


def staged_filename(write_uuid: str, task_index: int) -> str:
    """Template for one write task's files; ``{i}`` numbers the files of that task."""
    return f"{write_uuid}_{task_index:06d}-{{i}}{STAGED_SUFFIX}"


def commit(staging: Staging, facts: dict[str, Any], extra_files: Optional[dict[str, bytes]] = None) -> dict[str, Any]:
    """Publish the staged files as run ``staging.run_id``; returns the manifest written.

    ``facts`` (counts, model id, plan ...) are recorded in the manifest as they are;
    ``extra_files`` (name -> bytes, e.g. run_summary.json) are written beside it, before _SUCCESS.
    """
    fs, _ = filesystem(staging.sink_uri, staging.storage)
    _, run_path = filesystem(staging.run_uri, staging.storage)
    staged = staging.staged_files()
    # Invalidate a previous commit of this run id before touching its files.
    for name in (SUCCESS_FILE, MANIFEST_FILE):
        if fs.exists(join(run_path, name)):
            fs.rm(join(run_path, name))
    if fs.exists(run_path):
        fs.rm(run_path, recursive=True)
    fs.makedirs(run_path, exist_ok=True)
    files = []
    for i, src in enumerate(staged):
        name = f"part-{i:05d}.parquet"
        with fs.open(src, "rb") as fh:
            rows = pq.ParquetFile(fh).metadata.num_rows
        fs.mv(src, join(run_path, name))
        files.append({"path": name, "rows": rows, "bytes": fs.size(join(run_path, name))})
    manifest = {
        "run_id": staging.run_id,
        "run_path": staging.run_path,
        "committed_at": datetime.now(timezone.utc).isoformat(),
        "rows": sum(f["rows"] for f in files),
        "files": files,
        **facts,
    }
    for name, blob in (extra_files or {}).items():
        fs.pipe_file(join(run_path, name), blob)
    fs.pipe_file(join(run_path, MANIFEST_FILE), json.dumps(manifest, indent=2, default=str).encode())
    fs.pipe_file(join(run_path, SUCCESS_FILE), b"")
    staging.discard()
    _remove_dead_attempts(staging)
    return manifest


def _modified(info: dict[str, Any]) -> float:
    """Modification time (Unix seconds) from an fsspec info dict (local mtime, S3 LastModified)."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified", 0)))
    return value.timestamp() if isinstance(value, datetime) else float(value or 0)


def _remove_dead_attempts(staging: Staging) -> None:
    """Remove attempts of this run id that a killed driver left behind: those whose files all
    predate this (committed) attempt. An attempt still writing has newer files and is left alone."""
    fs, run_staging = filesystem(join(staging.sink_uri, "_staging", staging.run_id), staging.storage)
    if not fs.exists(run_staging):
        return
    for attempt in fs.ls(run_staging, detail=False):
        files = fs.find(attempt, detail=True)
        if all(_modified(info) < staging.started for info in files.values()):
            fs.rm(attempt, recursive=True)
    for folder in (run_staging, run_staging.rsplit("/", 1)[0]):  # _staging/<run_id>, _staging
        try:
            if fs.isdir(folder) and not fs.ls(folder):
                fs.rmdir(folder)
        except OSError:  # another run is staging there
            pass


def committed_files(sink_uri: str, run_id: str, storage: StorageSpec = StorageSpec()) -> list[str]:
    """URIs of a committed run's data files, from its manifest; [] if the run is not committed."""
    found = committed_runs(sink_uri, storage, run_id)
    return run_files(found[run_id], storage) if run_id in found else []


def committed_runs(sink_uri: str, storage: StorageSpec = StorageSpec(), run_id: Optional[str] = None) -> dict[str, str]:
    """run id -> run folder URI of every committed run under ``sink_uri`` (whatever its layout:
    a folder with _SUCCESS, outside the reserved _* folders); with ``run_id``, at most that one,
    found without a listing when it sits at the top (the default layout)."""
    fs, root = filesystem(sink_uri, storage)
    root = root.rstrip("/")
    if run_id is not None and fs.exists(join(root, run_id, SUCCESS_FILE)):
        return {run_id: to_uri(fs, join(root, run_id))}
    if not fs.isdir(root):
        return {}
    found = {}
    for path in fs.find(root):
        rel = path[len(root):].strip("/")
        parts = rel.split("/")
        if parts[-1] != SUCCESS_FILE or len(parts) < 2 or any(p.startswith(("_", ".")) for p in parts[:-1]):
            continue
        if run_id is None or parts[-2] == run_id:
            found[parts[-2]] = to_uri(fs, path.rsplit("/", 1)[0])
    return found


def run_files(run_uri: str, storage: StorageSpec = StorageSpec()) -> list[str]:
    """URIs of the data files of the run folder ``run_uri``; [] if it is not committed."""
    fs, run_path = filesystem(run_uri, storage)
    if not fs.exists(join(run_path, SUCCESS_FILE)):
        return []
    manifest = json.loads(fs.cat_file(join(run_path, MANIFEST_FILE)))
    return [to_uri(fs, join(run_path, f["path"])) for f in manifest["files"]]


def read_run_json(run_uri: str, name: str, storage: StorageSpec = StorageSpec()) -> Optional[dict[str, Any]]:
    """A JSON file of a run folder (``_manifest.json``, ``run_summary.json``), or None if absent."""
    fs, run_path = filesystem(run_uri, storage)
    try:
        return json.loads(fs.cat_file(join(run_path, name)))
    except FileNotFoundError:
        return None


def list_runs(sink_uri: str, storage: StorageSpec = StorageSpec()) -> list[dict[str, Any]]:
    """The committed runs under ``sink_uri`` (folders with _SUCCESS, any layout), oldest commit
    first; each is its manifest plus ``uri``."""
    runs = [{**read_run_json(folder, MANIFEST_FILE, storage), "uri": folder}
            for folder in committed_runs(sink_uri, storage).values()]
    return sorted(runs, key=lambda m: (m.get("committed_at", ""), m["run_id"]))


def resolve_run(output_uri: str, run_id: Optional[str] = None, storage: StorageSpec = StorageSpec()) -> str:
    """The URI of one committed run: ``output_uri`` itself when it is a run folder, else its run
    ``run_id``, else its latest committed run. Raises UserError when there is none."""
    from imgclf_ray.errors import UserError

    fs, path = filesystem(output_uri, storage)
    if run_id is None and fs.exists(join(path, SUCCESS_FILE)):
        return output_uri.rstrip("/")
    if run_id is not None:
        found = committed_runs(output_uri, storage, run_id)
        if run_id not in found:
            raise UserError(f"{output_uri}: run {run_id!r} is not committed (no _SUCCESS)")
        return found[run_id]
    runs = list_runs(output_uri, storage)
    if not runs:
        raise UserError(f"{output_uri}: no committed run here")
    return runs[-1]["uri"]
