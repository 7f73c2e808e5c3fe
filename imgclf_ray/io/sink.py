"""Exactly-once output: data files are staged, checked, then committed with a manifest and _SUCCESS.

Over 400 lines on purpose: the commit protocol (plan, moves or the Delta commit, manifest,
_SUCCESS, deletes) and its recovery are read and reviewed together, in one file.

Layout under ``sink.uri`` (``<run>`` is ``sink.layout``: ``<run_id>`` by default, or e.g.
``date=2026-11-28/<run_id>`` to partition the runs by date)::

    <run>/part-00000-<attempt>.parquet ...  committed data files (the only *.parquet files)
    <run>/_manifest.json              files, row counts, run facts (run_id, attempt, run_date, run_path)
    <run>/_run_summary.json           counts, errors by stage and cause, stage throughput (alerting)
    <run>/_SUCCESS                    written last: a run without it is not committed
    _staging/<run_id>/<attempt>/      work in progress, files named *.parquet.staged, and the
                                      commit's plan (_commit.json) while it commits
    _locks/<run_id>.lock              the run id's lock (imgclf_ray.io.lock)

Readers trust a run only when ``_SUCCESS`` exists, and then only the files its manifest lists. What a
reader that globs ``**/*.parquet`` sees is in the README's "Guarantees": staged files never (they do
not end in ``.parquet``); while a run commits, its files appear one by one before its ``_SUCCESS``;
while a run id is replaced, the old files until the new manifest is written, then both sets for
as long as the old files take to delete — never fewer than one whole set.

With ``sink.format: delta`` the rows go into one Delta table at ``sink.uri`` instead (one Delta
commit per run, replacing that run id's rows: imgclf_ray.io.delta), and the run records
(manifest with ``files: []`` and the table version, summary, _SUCCESS) into ``_runs/<run_id>/``.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Optional

import pyarrow.parquet as pq

from imgclf_ray import faults
from imgclf_ray.errors import UserError
from imgclf_ray.ids import id_problem
from imgclf_ray.io.storage import filesystem, join, to_uri
from imgclf_ray.spec import StorageSpec

STAGED_SUFFIX = ".parquet.staged"
COMMIT_PLAN = "_commit.json"
MANIFEST_FILE = "_manifest.json"
SUCCESS_FILE = "_SUCCESS"
SUMMARY_FILE = "_run_summary.json"
RUNS_DIR = "_runs"  # the run records of a Delta sink
# Side files of output schema version 1 had no leading "_", which folder readers (pandas, pyarrow,
# polars) took for data files; a run of that version is still read by these names.
LEGACY_NAMES = {"_run_summary.json": "run_summary.json", "_clusters.json": "clusters.json",
                "_evaluation.json": "evaluation.json"}


@dataclass(frozen=True)
class Staging:
    """Where one attempt of one run writes before commit."""

    sink_uri: str
    run_id: str
    attempt: str
    storage: StorageSpec
    run_path: str  # the run's folder under sink_uri (sink.layout; _runs/<run_id> for delta)
    format: str = "parquet"  # sink.format

    @classmethod
    def new(cls, sink_uri: str, run_id: str, storage: StorageSpec = StorageSpec(),
            run_path: Optional[str] = None, attempt: Optional[str] = None, format: str = "parquet") -> "Staging":
        if format == "delta":
            run_path = f"{RUNS_DIR}/{run_id}"
        return cls(sink_uri.rstrip("/"), run_id, attempt or uuid.uuid4().hex[:12], storage, run_path or run_id,
                   format)

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


def _put_atomic(fs, path: str, blob: bytes) -> None:
    """Write a small file so that a reader sees the old or the new content, never a part (object
    stores: one PUT; local: a temporary file renamed over it)."""
    if _is_local(fs):
        import os

        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, blob)


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _remove(fs, paths) -> None:
    """Delete the given files, one by one (never a folder), ignoring those already gone."""
    for path in paths:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass


def _rmdir_if_empty(fs, path: str) -> None:
    try:
        if fs.isdir(path) and not fs.ls(path):
            fs.rmdir(path)
    except OSError:  # not empty after all, or the store has no folders
        pass


def file_name_problem(name: object) -> Optional[str]:
    """Why ``name`` cannot be a file of a run folder (None if it can): a plain name, or "_" and a
    plain name (side files: folder readers skip names starting with "_")."""
    return id_problem(name[1:] if isinstance(name, str) and name.startswith("_") else name)


def _listed(manifest: dict[str, Any]) -> list[str]:
    """The file names a manifest says its run wrote (data files and side files)."""
    names = [f["path"] for f in manifest.get("files", [])]
    names += list(manifest.get("side_files", [LEGACY_NAMES[SUMMARY_FILE]]))
    for name in names:
        problem = file_name_problem(name)
        if problem:
            raise UserError(f"a manifest of run {manifest.get('run_id')!r} lists {name!r}: {problem}; "
                            "it was not written by imgclf and nothing was deleted")
    return names


def _delete_replaced(fs, root: str, replaced: dict[str, list[str]], run_path: str, keep: set[str]) -> None:
    """Delete the files a replaced commit listed (folder under the sink -> its file names): in the
    run's own folder all but ``keep`` (the new commit's names); in another folder (another date of
    the layout) all of them and its _SUCCESS, then that folder if it is left empty."""
    for folder, listed in replaced.items():
        where = join(root, folder)
        if folder == run_path:
            _remove(fs, [join(where, n) for n in listed if n not in keep])
        else:
            _remove(fs, [join(where, SUCCESS_FILE)])
            _remove(fs, [join(where, n) for n in listed])
            _rmdir_if_empty(fs, where)


def recover(sink_uri: str, run_id: str, storage: StorageSpec = StorageSpec(), keep: str = "") -> None:
    """Finish or undo the commits of ``run_id`` that a killed driver left half done, and remove
    the staging of its dead attempts (all but ``keep``). Call only while holding the run's lock.

    Each commit first writes its plan (``_commit.json`` in its staging: the run folder, the new file
    names, the files it replaces). If the run folder's manifest is that attempt's, the commit got
    past its manifest (written only once every file is in place): it is finished — _SUCCESS
    written if it was not, the replaced files it had not yet deleted deleted. Otherwise the files
    it had moved into the run folder are deleted: the previous commit stands."""
    fs, run_staging = filesystem(join(sink_uri, "_staging", run_id), storage)
    _, root = filesystem(sink_uri, storage)
    if not fs.isdir(run_staging):
        return
    for attempt in fs.ls(run_staging, detail=False):
        if attempt.rstrip("/").rsplit("/", 1)[-1] == keep:
            continue
        try:
            plan = json.loads(fs.cat_file(join(attempt, COMMIT_PLAN)))
        except FileNotFoundError:
            plan = None
        if plan is not None and plan.get("format") == "delta":
            _recover_delta(fs, root, sink_uri, plan, storage)
        elif plan is not None:
            folder = join(root, plan["run_path"])
            current = read_run_json(to_uri(fs, folder), MANIFEST_FILE, storage) or {}
            if current.get("attempt") == plan["attempt"]:  # past its manifest: roll forward
                if not fs.exists(join(folder, SUCCESS_FILE)):  # its files and manifest are complete
                    fs.pipe_file(join(folder, SUCCESS_FILE), b"")
                _delete_replaced(fs, root, plan["replaced"], plan["run_path"],
                                 {*plan["files"], *current.get("side_files", []), MANIFEST_FILE})
            else:  # before its manifest: undo the moves
                keep_names = set(_listed(current)) if current else set()
                _remove(fs, [join(folder, n) for n in plan["files"] if n not in keep_names])
        fs.rm(attempt, recursive=True)  # our own staging: _staging/<run_id>/<attempt>/
    _rmdir_if_empty(fs, run_staging)
    _rmdir_if_empty(fs, run_staging.rsplit("/", 1)[0])


def _recover_delta(fs, root: str, sink_uri: str, plan: dict[str, Any], storage: StorageSpec) -> None:
    """A Delta commit cannot be undone, and need not be: if the attempt's commit is in the table's
    history, its run record is written now (roll forward); if not, nothing of it is visible."""
    from imgclf_ray.io import delta

    folder = join(root, plan["run_path"])
    current = read_run_json(to_uri(fs, folder), MANIFEST_FILE, storage) or {}
    if current.get("attempt") == plan["attempt"]:
        version = current.get("table_version")
    else:
        version = delta.attempt_version(sink_uri, plan["attempt"], plan["base_version"], storage)
    if version is not None:
        _finish_delta(fs, root, plan, version)


def _finish_delta(fs, root: str, plan: dict[str, Any], version: int) -> dict[str, Any]:
    """Write the run record of a Delta commit that is in the table (side files, manifest with the
    table version, _SUCCESS), then delete what the replaced record listed. Idempotent."""
    folder = join(root, plan["run_path"])
    fs.makedirs(folder, exist_ok=True)
    manifest = {**plan["manifest"], "table_version": version}
    for name, blob in plan["side_files"].items():
        _put_atomic(fs, join(folder, name), base64.b64decode(blob))
    _put_atomic(fs, join(folder, MANIFEST_FILE), json.dumps(manifest, indent=2, default=str).encode())
    faults.point("commit_manifest")
    fs.pipe_file(join(folder, SUCCESS_FILE), b"")
    faults.point("commit_success")
    _delete_replaced(fs, root, plan["replaced"], plan["run_path"], {*manifest["side_files"], MANIFEST_FILE})
    return manifest


def _replaced_commits(staging: Staging, root: str) -> dict[str, list[str]]:
    """Finish or undo what a killed attempt of the run id left, then the commits this one replaces:
    folder under the sink -> the names its manifest lists (and the manifest)."""
    recover(staging.sink_uri, staging.run_id, staging.storage, keep=staging.attempt)
    previous = {}
    for folder_uri in committed_runs(staging.sink_uri, staging.storage, staging.run_id, every=True):
        fs, folder = filesystem(folder_uri, staging.storage)
        try:
            names = _listed(read_manifest(folder_uri, staging.storage))
        except UserError:  # a damaged run (manifest missing or corrupt): its files by the commit's own names
            names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)
                           if _COMMITTED_NAME.fullmatch(p.rsplit("/", 1)[-1]))
        previous[folder[len(root):].strip("/")] = names + [MANIFEST_FILE]
    return previous


# What a commit names its data files (below): a damaged run's files are found by it.
_COMMITTED_NAME = re.compile(r"part-\d{5}-[A-Za-z0-9_.-]+\.parquet")


def _commit_delta(staging: Staging, facts: dict[str, Any], extra_files: dict[str, bytes]) -> dict[str, Any]:
    """``commit`` for a Delta sink: the plan (with the whole run record) first, then the one Delta
    commit that replaces the run's rows, then the run record."""
    from imgclf_ray.io import delta
    from imgclf_ray.io.schema import OUTPUT_SCHEMA

    fs, root = filesystem(staging.sink_uri, staging.storage)
    root = root.rstrip("/")
    previous = _replaced_commits(staging, root)
    staged = staging.staged_files()
    schema = OUTPUT_SCHEMA
    rows = 0
    for src in staged:
        with fs.open(src, "rb") as fh:
            meta = pq.ParquetFile(fh)
            rows += meta.metadata.num_rows
            schema = meta.schema_arrow
    manifest = {
        "run_id": staging.run_id, "run_path": staging.run_path, "attempt": staging.attempt,
        "committed_at": datetime.now(timezone.utc).isoformat(), "format": "delta", "rows": rows,
        "files": [], "side_files": sorted(extra_files), **facts,
    }
    # The table's version now: a commit of this attempt can only come after it.
    plan = {"attempt": staging.attempt, "run_path": staging.run_path, "format": "delta", "files": [],
            "base_version": delta.current_version(staging.sink_uri, staging.storage),
            "replaced": previous, "manifest": manifest,
            "side_files": {n: base64.b64encode(b).decode() for n, b in extra_files.items()}}
    _, staging_path = filesystem(staging.uri, staging.storage)
    fs.makedirs(staging_path, exist_ok=True)
    fs.pipe_file(join(staging_path, COMMIT_PLAN), json.dumps(plan, default=str).encode())
    version = delta.write_run(staging.sink_uri, staging.run_id, staging.attempt,
                              [to_uri(fs, p) for p in staged], schema, staging.storage, delta.facts(manifest))
    faults.point("commit_moved")
    manifest = _finish_delta(fs, root, plan, version)
    staging.discard()
    return manifest


def commit(staging: Staging, facts: dict[str, Any], extra_files: Optional[dict[str, bytes]] = None) -> dict[str, Any]:
    """Publish the staged files as run ``staging.run_id``; returns the manifest written. The caller
    holds the run's lock (imgclf_ray.io.lock).

    ``facts`` (counts, model id, plan ...) are recorded in the manifest as they are;
    ``extra_files`` (name -> bytes, e.g. _run_summary.json) are written beside it, before _SUCCESS.

    A run id already committed (in this folder or, with a dated layout, in another) is replaced:
    the new files land under names of their own, the new manifest and _SUCCESS are written, and
    only then are the files the previous manifest lists deleted, one by one. Nothing else under
    the sink is ever deleted. A Delta sink commits through the table instead (``_commit_delta``).
    """
    if staging.format == "delta":
        return _commit_delta(staging, facts, extra_files or {})
    fs, root = filesystem(staging.sink_uri, staging.storage)
    root = root.rstrip("/")
    _, run_path = filesystem(staging.run_uri, staging.storage)
    previous = _replaced_commits(staging, root)
    staged = staging.staged_files()
    names = [f"part-{i:05d}-{staging.attempt}.parquet" for i in range(len(staged))]
    plan = {"attempt": staging.attempt, "run_path": staging.run_path, "files": names, "replaced": previous}
    _, staging_path = filesystem(staging.uri, staging.storage)
    fs.makedirs(staging_path, exist_ok=True)
    fs.pipe_file(join(staging_path, COMMIT_PLAN), json.dumps(plan).encode())
    fs.makedirs(run_path, exist_ok=True)
    files = []
    for src, name in zip(staged, names):
        with fs.open(src, "rb") as fh:
            rows = pq.ParquetFile(fh).metadata.num_rows
        fs.mv(src, join(run_path, name))
        files.append({"path": name, "rows": rows, "bytes": fs.size(join(run_path, name))})
        faults.point("commit_file_moved")
    faults.point("commit_moved")
    manifest = {
        "run_id": staging.run_id,
        "run_path": staging.run_path,
        "attempt": staging.attempt,
        "committed_at": datetime.now(timezone.utc).isoformat(),
        "rows": sum(f["rows"] for f in files),
        "files": files,
        "side_files": sorted(extra_files or {}),
        **facts,
    }
    for name, blob in (extra_files or {}).items():
        _put_atomic(fs, join(run_path, name), blob)
    _put_atomic(fs, join(run_path, MANIFEST_FILE), json.dumps(manifest, indent=2, default=str).encode())
    faults.point("commit_manifest")
    fs.pipe_file(join(run_path, SUCCESS_FILE), b"")
    faults.point("commit_success")
    # Committed. Now the previous commit's files, exactly those its manifest listed.
    _delete_replaced(fs, root, previous, staging.run_path, {*names, *manifest["side_files"], MANIFEST_FILE})
    staging.discard()
    return manifest


def add_side_file(run_uri: str, name: str, blob: bytes, storage: StorageSpec = StorageSpec()) -> None:
    """Write a file into a committed run's folder and list it in its manifest (side_files), so that
    replacing the run deletes it too (e.g. _evaluation.json, written after the commit)."""
    if file_name_problem(name):
        raise ValueError(f"{name!r}: {file_name_problem(name)}")
    fs, run_path = filesystem(run_uri, storage)
    manifest = read_manifest(run_uri, storage)
    _put_atomic(fs, join(run_path, name), blob)
    if name not in manifest.get("side_files", []):
        manifest["side_files"] = sorted({*manifest.get("side_files", []), name})
        _put_atomic(fs, join(run_path, MANIFEST_FILE), json.dumps(manifest, indent=2, default=str).encode())


def committed_files(sink_uri: str, run_id: str, storage: StorageSpec = StorageSpec()) -> list[str]:
    """URIs of a committed run's data files, from its manifest; [] if the run is not committed."""
    found = committed_runs(sink_uri, storage, run_id)
    return run_files(found[run_id], storage) if run_id in found else []


def committed_runs(sink_uri: str, storage: StorageSpec = StorageSpec(), run_id: Optional[str] = None,
                   every: bool = False):
    """run id -> run folder URI of every committed run under ``sink_uri`` (whatever its layout:
    a folder with _SUCCESS, outside the reserved _* folders but _runs); with ``run_id``, at most that one.
    With ``every`` (and ``run_id``): the list of every folder that run id is committed in (one,
    unless a crash of an earlier version left two)."""
    fs, root = filesystem(sink_uri, storage)
    root = root.rstrip("/")
    if run_id is not None and not every:
        for folder in (join(root, run_id), join(root, RUNS_DIR, run_id)):
            if fs.exists(join(folder, SUCCESS_FILE)):
                return {run_id: to_uri(fs, folder)}
    if not fs.isdir(root):
        return [] if every else {}
    found, folders = {}, []
    # A Delta sink's run records are all under _runs/ (the rest is the table's files).
    where = join(root, RUNS_DIR) if fs.isdir(join(root, "_delta_log")) else root
    for path in (fs.find(where) if fs.isdir(where) else []):
        rel = path[len(root):].strip("/")
        parts = rel.split("/")
        folders_of = parts[1:-1] if parts[0] == RUNS_DIR else parts[:-1]  # Delta sinks: _runs/<run_id>
        if parts[-1] != SUCCESS_FILE or not folders_of or any(p.startswith(("_", ".")) for p in folders_of):
            continue
        if id_problem(parts[-2]) is None and (run_id is None or parts[-2] == run_id):
            found[parts[-2]] = to_uri(fs, path.rsplit("/", 1)[0])
            folders.append(found[parts[-2]])
    return folders if every else found


def check_format(sink_uri: str, format: str, storage: StorageSpec = StorageSpec()) -> None:
    """Refuse a sink that holds the other format's runs (a Delta VACUUM would delete Parquet runs'
    files; a Parquet run would sit among a table's files)."""
    from imgclf_ray.io import delta

    if format == "delta":
        delta.require()
    table = delta.is_table(sink_uri, storage)
    if format == "parquet" and table:
        raise UserError(f"{sink_uri} is a Delta table: set sink.format: delta to add runs to it, or choose "
                        "another sink.uri")
    if format == "delta" and not table and committed_runs(sink_uri, storage):
        raise UserError(f"{sink_uri} holds Parquet runs: a Delta sink needs a folder of its own "
                        "(choose another sink.uri, or keep sink.format: parquet)")


def recover_others(sink_uri: str, storage: StorageSpec = StorageSpec(), skip: str = "") -> None:
    """``recover`` every run id but ``skip`` that a killed driver left half committed (its staging
    has a commit plan), each under its own lock; a run id another attempt holds is left to it."""
    from imgclf_ray.io.lock import RunLock, RunLocked

    fs, staging = filesystem(join(sink_uri, "_staging"), storage)
    if not fs.isdir(staging):
        return
    for folder in fs.ls(staging, detail=False):
        run_id = folder.rstrip("/").rsplit("/", 1)[-1]
        if run_id == skip or id_problem(run_id) or not fs.glob(join(folder, "*", COMMIT_PLAN)):
            continue
        try:
            with RunLock(sink_uri, run_id, uuid.uuid4().hex[:12], storage):
                recover(sink_uri, run_id, storage)
        except RunLocked:
            continue


def read_manifest(run_uri: str, storage: StorageSpec = StorageSpec()) -> dict[str, Any]:
    """The manifest of a committed run folder, checked: its run id and file names are plain names.
    Raises UserError (one message) for a missing, corrupt or hostile manifest."""
    try:
        manifest = read_run_json(run_uri, MANIFEST_FILE, storage)
    except ValueError:
        raise UserError(f"{run_uri}/{MANIFEST_FILE} is corrupt (not JSON); rerun run "
                        f"{run_uri.rstrip('/').rsplit('/', 1)[-1]} to rewrite it") from None
    if manifest is None:
        raise UserError(f"{run_uri} has {SUCCESS_FILE} but no {MANIFEST_FILE}: it was not committed by imgclf, "
                        "or it was damaged; rerun its run id to rewrite it")
    if not isinstance(manifest, dict) or id_problem(manifest.get("run_id")) or not isinstance(manifest.get("files"), list):
        raise UserError(f"{run_uri}/{MANIFEST_FILE}: not an imgclf manifest (run_id must be a plain name "
                        "and files a list)")
    _listed(manifest)
    return manifest


def run_files(run_uri: str, storage: StorageSpec = StorageSpec()) -> list[str]:
    """URIs of the data files of the run folder ``run_uri``; [] if it is not committed."""
    fs, run_path = filesystem(run_uri, storage)
    if not fs.exists(join(run_path, SUCCESS_FILE)):
        return []
    manifest = read_manifest(run_uri, storage)
    if manifest.get("format") == "delta":
        from imgclf_ray.io import delta

        return delta.file_uris(_table_of(run_uri, manifest), manifest["run_id"], manifest.get("table_version"), storage)
    return [to_uri(fs, join(run_path, f["path"])) for f in manifest["files"]]


def _table_of(run_uri: str, manifest: dict[str, Any]) -> str:
    """The sink (Delta table) a Delta run record belongs to: its folder less its run path."""
    return run_uri.rstrip("/")[: -len(manifest["run_path"].strip("/")) - 1]


def read_rows(run_uri: str, columns=None, storage: StorageSpec = StorageSpec()):
    """A committed run's rows as a pyarrow.Table: ``columns`` a list of names, a test on the name,
    or None (all). From the files its manifest lists, or from its Delta table at the version its
    manifest records. An empty table when the run folder is not committed."""
    from imgclf_ray.io.tables import read_columns

    fs, run_path = filesystem(run_uri, storage)
    files = []
    if fs.exists(join(run_path, SUCCESS_FILE)):
        manifest = read_manifest(run_uri, storage)  # once, for either format
        if manifest.get("format") == "delta":
            from imgclf_ray.io import delta

            return delta.read_rows(_table_of(run_uri, manifest), manifest["run_id"], manifest.get("table_version"),
                                   columns, storage)
        files = [to_uri(fs, join(run_path, f["path"])) for f in manifest["files"]]
    return read_columns(files, columns if columns is not None else (lambda name: True), storage)


def read_run_json(run_uri: str, name: str, storage: StorageSpec = StorageSpec()) -> Optional[dict[str, Any]]:
    """A JSON file of a run folder (``_manifest.json``, ``_run_summary.json``), or None if absent
    (a run of output schema 1 is read by its side files' old names)."""
    fs, run_path = filesystem(run_uri, storage)
    for candidate in (name, LEGACY_NAMES.get(name)):
        if candidate is None:
            continue
        try:
            return json.loads(fs.cat_file(join(run_path, candidate)))
        except FileNotFoundError:
            continue
    return None


def list_runs(sink_uri: str, storage: StorageSpec = StorageSpec(), damaged: bool = False) -> list[dict[str, Any]]:
    """The committed runs under ``sink_uri`` (folders with _SUCCESS, any layout), oldest commit
    first; each is its manifest plus ``uri``. A run folder whose manifest is missing, corrupt or
    not imgclf's is left out, so that one damaged run never hides the others; with ``damaged``
    such folders follow the runs, each as {"run_id", "uri", "damaged": why}."""
    runs, broken = [], []
    for run_id, folder in committed_runs(sink_uri, storage).items():
        try:
            runs.append({**read_manifest(folder, storage), "uri": folder})
        except UserError as exc:
            broken.append({"run_id": run_id, "uri": folder, "damaged": str(exc)})
    runs.sort(key=lambda m: (str(m.get("committed_at", "")), m["run_id"]))
    return runs + broken if damaged else runs


def resolve_run(output_uri: str, run_id: Optional[str] = None, storage: StorageSpec = StorageSpec()) -> str:
    """The URI of one committed run: ``output_uri`` itself when it is a run folder, else its run
    ``run_id``, else its latest committed run with images (a night with nothing new commits an
    empty run record; the latest run is taken only when no run has images). Raises UserError when
    there is none."""
    fs, path = filesystem(output_uri, storage)
    if run_id is None and fs.exists(join(path, SUCCESS_FILE)):
        read_manifest(output_uri, storage)
        return output_uri.rstrip("/")
    if run_id is not None:
        found = committed_runs(output_uri, storage, run_id)
        if run_id not in found:
            raise UserError(f"{output_uri}: run {run_id!r} is not committed (no _SUCCESS)")
        return found[run_id]
    listed = list_runs(output_uri, storage, damaged=True)
    runs = [r for r in listed if "damaged" not in r]
    if not runs:
        if listed:  # only damaged runs: say what is wrong with one
            raise UserError(listed[0]["damaged"])
        if not fs.exists(path):
            raise UserError(f"{output_uri}: no such folder or prefix")
        raise UserError(f"{output_uri}: no committed run here")
    with_images = [r for r in runs if not r.get("nothing_new")]
    return (with_images or runs)[-1]["uri"]
