"""The commit protocol and its recovery, for both formats: read and reviewed together.

Each commit first writes its plan (``_commit.json`` in its staging: the run folder, the new file
names, the files it replaces, the whole run record). Parquet: the staged files are moved into the
run folder; Delta: one table commit replaces the run's rows. Then, for both, ``_publish``: the side
files, the manifest, ``_SUCCESS``, and only then the files the replaced commits listed, deleted
one by one. ``recover`` finishes (past the manifest, or a Delta commit in the table) or undoes
(moves before the manifest) what a killed attempt left.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

import pyarrow.parquet as pq

from imgclf_ray import faults
from imgclf_ray.errors import UserError
from imgclf_ray.ids import id_problem
from imgclf_ray.io.sink.layout import (COMMIT_PLAN, COMMITTED_NAME, MANIFEST_FILE, RUNS_DIR, STAGED_SUFFIX,
                                       SUCCESS_FILE, committed_name, file_name_problem, listed, put_atomic,
                                       remove, rmdir_if_empty)
from imgclf_ray.io.storage import join, to_uri

if TYPE_CHECKING:
    from imgclf_ray.io.sink import Sink


@dataclass
class Staging:
    """Where one attempt of one run writes before commit (``Sink.staging``)."""

    sink: "Sink"
    run_id: str
    attempt: str
    run_path: str  # the run's folder under the sink (sink.layout; _runs/<run_id> for delta)

    @classmethod
    def new(cls, sink_uri: str, run_id: str, storage=None, run_path: Optional[str] = None,
            attempt: Optional[str] = None, format: str = "parquet") -> "Staging":
        from imgclf_ray.io.sink import Sink

        return Sink(sink_uri, storage, format).staging(run_id, run_path, attempt)

    @property
    def sink_uri(self) -> str:
        return self.sink.uri

    @property
    def storage(self):
        return self.sink.storage

    @property
    def format(self) -> str:
        return self.sink.format

    @property
    def path(self) -> str:
        return join(self.sink.root, "_staging", self.run_id, self.attempt)

    @property
    def uri(self) -> str:
        return join(self.sink.uri, "_staging", self.run_id, self.attempt)

    @property
    def run_uri(self) -> str:
        return join(self.sink.uri, self.run_path)

    def staged_files(self, suffix: str = STAGED_SUFFIX) -> list[str]:
        """The staged files (or, with ``suffix``, the other files a writer kept beside them)."""
        fs = self.sink.fs
        if not fs.exists(self.path):
            return []
        return sorted(p for p in fs.find(self.path) if p.endswith(suffix))

    def discard(self) -> None:
        """Remove this attempt's staged files, and the staging folders it leaves empty."""
        fs, path = self.sink.fs, self.path
        if fs.exists(path):
            fs.rm(path, recursive=True)
        for parent in (path.rsplit("/", 1)[0], path.rsplit("/", 2)[0]):  # _staging/<run_id>, _staging
            rmdir_if_empty(fs, parent)


def new_staging(sink: "Sink", run_id: str, run_path: Optional[str], attempt: Optional[str]) -> Staging:
    if sink.format == "delta":
        run_path = f"{RUNS_DIR}/{run_id}"
    return Staging(sink, run_id, attempt or uuid.uuid4().hex[:12], run_path or run_id)


def _delete_replaced(sink: "Sink", replaced: dict[str, list[str]], run_path: str, keep: set[str]) -> None:
    """Delete the files a replaced commit listed (folder under the sink -> its file names): in the
    run's own folder all but ``keep`` (the new commit's names); in another folder (another date of
    the layout) all of them and its _SUCCESS, then that folder if it is left empty."""
    fs = sink.fs
    for folder, names in replaced.items():
        where = join(sink.root, folder)
        if folder == run_path:
            remove(fs, [join(where, n) for n in names if n not in keep])
        else:
            remove(fs, [join(where, SUCCESS_FILE)])
            remove(fs, [join(where, n) for n in names])
            rmdir_if_empty(fs, where)


def _publish(sink: "Sink", plan: dict[str, Any], manifest: dict[str, Any], side_files: dict[str, bytes]) -> None:
    """The run record once the data is in place (both formats; idempotent, so recovery repeats it):
    side files, manifest, _SUCCESS, then what the replaced commits listed deleted."""
    fs, folder = sink.fs, join(sink.root, plan["run_path"])
    fs.makedirs(folder, exist_ok=True)
    for name, blob in side_files.items():
        put_atomic(fs, join(folder, name), blob)
    put_atomic(fs, join(folder, MANIFEST_FILE), json.dumps(manifest, indent=2, default=str).encode())
    faults.point("commit_manifest")
    _complete(sink, plan, set(manifest["side_files"]))


def _complete(sink: "Sink", plan: dict[str, Any], side_files: set[str]) -> None:
    """A commit whose manifest is written: _SUCCESS (if missing), then the files of the commits it
    replaces deleted — all but its own (data files, side files, manifest)."""
    folder = join(sink.root, plan["run_path"])
    if not sink.fs.exists(join(folder, SUCCESS_FILE)):
        sink.fs.pipe_file(join(folder, SUCCESS_FILE), b"")
    faults.point("commit_success")
    _delete_replaced(sink, plan["replaced"], plan["run_path"], {*plan["files"], *side_files, MANIFEST_FILE})


def _replaced_commits(staging: Staging) -> dict[str, list[str]]:
    """Finish or undo what a killed attempt of the run id left, then the commits this one replaces:
    folder under the sink -> the names its manifest lists (and the manifest)."""
    sink = staging.sink
    # Again, although the run recovered when it took its lock: an attempt that lost its lease
    # meanwhile (a stalled driver on an object store) may have moved files in since.
    recover(sink, staging.run_id, keep=staging.attempt)
    previous = {}
    for folder_uri in sink.committed_runs(staging.run_id, every=True):
        folder = sink.run(folder_uri)
        try:
            names = listed(folder.manifest())
        except UserError:  # a damaged run (manifest missing or corrupt): its files by the commit's own names
            names = sorted(p.rsplit("/", 1)[-1] for p in sink.fs.ls(folder.path, detail=False)
                           if COMMITTED_NAME.fullmatch(p.rsplit("/", 1)[-1]))
        previous[folder.path[len(sink.root):].strip("/")] = names + [MANIFEST_FILE]
    return previous


def _rows_of(sink: "Sink", staged: list[str], rows: Optional[dict[str, int]]) -> list[int]:
    """Each staged file's row count: as the caller counted them (file name -> rows: the
    read-back), else from the file's footer."""
    counts = []
    for src in staged:
        name = src.rsplit("/", 1)[-1]
        if rows is not None and name in rows:
            counts.append(rows[name])
            continue
        with sink.fs.open(src, "rb") as fh:
            counts.append(pq.ParquetFile(fh).metadata.num_rows)
    return counts


def commit(staging: Staging, facts: dict[str, Any], extra_files: Optional[dict[str, bytes]] = None,
           rows: Optional[dict[str, int]] = None) -> dict[str, Any]:
    """Publish the staged files as run ``staging.run_id``; returns the manifest written. The caller
    holds the run's lock (imgclf_ray.io.lock).

    ``facts`` (counts, model id, plan ...) are recorded in the manifest as they are;
    ``extra_files`` (name -> bytes, e.g. _run_summary.json) are written beside it, before _SUCCESS;
    ``rows``: staged file name -> its row count, when the caller counted them already (the
    read-back); a file not in it has its footer read.

    A run id already committed (in this folder or, with a dated layout, in another) is replaced:
    the new files land under names of their own, the new manifest and _SUCCESS are written, and
    only then are the files the previous manifest lists deleted, one by one. Nothing else under
    the sink is ever deleted. A Delta sink commits through the table instead.
    """
    sink = staging.sink
    previous = _replaced_commits(staging)
    staged = staging.staged_files()
    counts = _rows_of(sink, staged, rows)
    delta = sink.format == "delta"
    names = [] if delta else [committed_name(i, staging.attempt) for i in range(len(staged))]
    manifest = {"run_id": staging.run_id, "run_path": staging.run_path, "attempt": staging.attempt,
                "committed_at": datetime.now(timezone.utc).isoformat(), **({"format": "delta"} if delta else {}),
                "rows": sum(counts), "files": [], "side_files": sorted(extra_files or {}), **facts}
    plan = {"attempt": staging.attempt, "run_path": staging.run_path, "files": names, "replaced": previous}
    if delta:  # a Delta commit is finished by whoever finds it in the table: the whole run record here
        from imgclf_ray.io import delta as table

        plan.update(format="delta", manifest=manifest, base_version=table.current_version(sink.uri, sink.storage),
                    side_files={n: base64.b64encode(b).decode() for n, b in (extra_files or {}).items()})
    sink.fs.makedirs(staging.path, exist_ok=True)
    sink.fs.pipe_file(join(staging.path, COMMIT_PLAN), json.dumps(plan, default=str).encode())
    if delta:
        manifest["table_version"] = _table_commit(staging, staged, manifest)
    else:
        manifest["files"] = _move(staging, staged, names, counts)
    faults.point("commit_moved")
    _publish(sink, plan, manifest, extra_files or {})
    staging.discard()
    return manifest


def _move(staging: Staging, staged: list[str], names: list[str], counts: list[int]) -> list[dict[str, Any]]:
    fs, run_path = staging.sink.fs, join(staging.sink.root, staging.run_path)
    fs.makedirs(run_path, exist_ok=True)
    files = []
    for src, name, n in zip(staged, names, counts):
        fs.mv(src, join(run_path, name))
        files.append({"path": name, "rows": n, "bytes": fs.size(join(run_path, name))})
        faults.point("commit_file_moved")
    return files


def _table_commit(staging: Staging, staged: list[str], manifest: dict[str, Any]) -> int:
    """The one Delta commit that replaces the run's rows; its table version."""
    from imgclf_ray.io import delta
    from imgclf_ray.io.schema import OUTPUT_SCHEMA

    sink = staging.sink
    schema = OUTPUT_SCHEMA
    if staged:
        with sink.fs.open(staged[-1], "rb") as fh:
            schema = pq.ParquetFile(fh).schema_arrow
    return delta.write_run(sink.uri, staging.run_id, staging.attempt, [to_uri(sink.fs, p) for p in staged],
                           schema, sink.storage, delta.facts(manifest))


def recover(sink: "Sink", run_id: str, keep: str = "") -> None:
    """Finish or undo the commits of ``run_id`` that a killed driver left half done, and remove
    the staging of its dead attempts (all but ``keep``). Call only while holding the run's lock.

    If the run folder's manifest is the attempt's, the commit got past its manifest (written only
    once every file is in place): it is finished — _SUCCESS written if it was not, the replaced
    files it had not yet deleted deleted. Otherwise the files it had moved into the run folder
    are deleted: the previous commit stands. A Delta commit in the table's history is finished."""
    fs, run_staging = sink.fs, join(sink.root, "_staging", run_id)
    if not fs.isdir(run_staging):
        return
    for attempt in fs.ls(run_staging, detail=False):
        if attempt.rstrip("/").rsplit("/", 1)[-1] == keep:
            continue
        try:
            plan = json.loads(fs.cat_file(join(attempt, COMMIT_PLAN)))
        except FileNotFoundError:
            plan = None
        if plan is not None:
            _recover_attempt(sink, plan)
        fs.rm(attempt, recursive=True)  # our own staging: _staging/<run_id>/<attempt>/
    rmdir_if_empty(fs, run_staging)
    rmdir_if_empty(fs, run_staging.rsplit("/", 1)[0])


def _recover_attempt(sink: "Sink", plan: dict[str, Any]) -> None:
    folder = sink.run(to_uri(sink.fs, join(sink.root, plan["run_path"])))
    current = folder.json(MANIFEST_FILE) or {}
    if plan.get("format") == "delta":
        # A Delta commit cannot be undone, and need not be: if the attempt's commit is in the
        # table's history, its run record is written now (roll forward); if not, nothing of it is visible.
        from imgclf_ray.io import delta

        version = (current.get("table_version") if current.get("attempt") == plan["attempt"]
                   else delta.attempt_version(sink.uri, plan["attempt"], plan["base_version"], sink.storage))
        if version is not None:
            side_files = {n: base64.b64decode(b) for n, b in plan["side_files"].items()}
            _publish(sink, plan, {**plan["manifest"], "table_version": version}, side_files)
    elif current.get("attempt") == plan["attempt"]:  # past its manifest (its files all in): roll forward
        _complete(sink, plan, set(current.get("side_files", [])))
    else:  # before its manifest: undo the moves
        keep_names = set(listed(current)) if current else set()
        remove(sink.fs, [join(folder.path, n) for n in plan["files"] if n not in keep_names])


def recover_others(sink: "Sink", skip: str = "") -> None:
    """``recover`` every run id but ``skip`` that a killed driver left half committed (its staging
    has a commit plan), each under its own lock; a run id another attempt holds is left to it."""
    from imgclf_ray.io.lock import RunLock, RunLocked

    fs, staging = sink.fs, join(sink.root, "_staging")
    if not fs.isdir(staging):
        return
    for folder in fs.ls(staging, detail=False):
        run_id = folder.rstrip("/").rsplit("/", 1)[-1]
        if run_id == skip or id_problem(run_id) or not fs.glob(join(folder, "*", COMMIT_PLAN)):
            continue
        try:
            with RunLock.on(sink, run_id, uuid.uuid4().hex[:12]):
                recover(sink, run_id)
        except RunLocked:
            continue


def add_side_file(run_uri: str, name: str, blob: bytes, storage=None) -> None:
    """Write a file into a committed run's folder and list it in its manifest (side_files), so that
    replacing the run deletes it too (e.g. _evaluation.json, written after the commit)."""
    from imgclf_ray.io.sink.read import RunFolder
    from imgclf_ray.spec import StorageSpec

    if file_name_problem(name):
        raise ValueError(f"{name!r}: {file_name_problem(name)}")
    folder = RunFolder.at(run_uri, storage or StorageSpec())
    manifest = folder.manifest()
    put_atomic(folder.fs, join(folder.path, name), blob)
    if name not in manifest.get("side_files", []):
        manifest["side_files"] = sorted({*manifest.get("side_files", []), name})
        put_atomic(folder.fs, join(folder.path, MANIFEST_FILE), json.dumps(manifest, indent=2, default=str).encode())
