"""The state store of incremental jobs: what earlier runs processed, so that a nightly run does
only what is new or changed.

One file per committed attempt, ``<state>/processed-<run_id>~<attempt>.state`` (Parquet content; the
name never matches a ``*.parquet`` glob over the sink): uri, frame, size, etag, model_id and run_id of
every row that attempt labelled ``ok`` (error rows are not recorded, so they are tried again the
next night). A record counts only while the committed manifest of its run names the same attempt:
a driver killed before its commit leaves a record that never counts, a run id committed again by
another attempt makes the older record void, and a committed run always has its record (it is
written before the commit). The table is keyed by uri, so it can be partitioned by uri hash later.
"""

from __future__ import annotations

from typing import Optional

import pyarrow as pa

from imgclf_ray.errors import UserError
from imgclf_ray.io.storage import filesystem, join
from imgclf_ray.io.tables import read_columns
from imgclf_ray.spec import StorageSpec

PREFIX, SUFFIX, LEGACY_SUFFIX = "processed-", ".state", ".parquet"
STATE_COLUMNS = ["uri", "frame", "size", "etag", "model_id", "run_id"]


def state_file(state_uri: str, run_id: str, attempt: str) -> str:
    return join(state_uri, f"{PREFIX}{run_id}~{attempt}{SUFFIX}")


def _parse(name: str) -> Optional[tuple[str, Optional[str]]]:
    """(run id, attempt) of a state file name; attempt None for the older one-file-per-run records."""
    if not name.startswith(PREFIX):
        return None
    if name.endswith(SUFFIX) and "~" in name:
        run_id, _, attempt = name[len(PREFIX):-len(SUFFIX)].rpartition("~")
        return run_id, attempt
    if name.endswith(LEGACY_SUFFIX):
        return name[len(PREFIX):-len(LEGACY_SUFFIX)], None
    return None


def committed_records(state_uri: str, sink_uri: str, storage: StorageSpec,
                      replacing: Optional[str] = None) -> list[str]:
    """The state files that count, oldest commit first (later commits win). ``replacing``: the run
    id about to be run again, whose output will be replaced, so its own record does not count
    (else rerunning a committed night would drop its images)."""
    from imgclf_ray.io.sink import committed_runs, read_manifest
    from imgclf_ray.io.storage import to_uri

    fs, root = filesystem(state_uri, storage)
    if not fs.isdir(root):
        return []
    committed = committed_runs(sink_uri, storage)  # one listing of the sink, whatever its layout
    manifests: dict[str, dict] = {}
    runs = []
    for path in fs.find(root):
        parsed = _parse(path.rsplit("/", 1)[-1])
        if parsed is None or parsed[0] not in committed or parsed[0] == replacing:
            continue  # not a record, its run never committed, or it is being replaced
        run_id, attempt = parsed
        if run_id not in manifests:
            try:
                manifests[run_id] = read_manifest(committed[run_id], storage)
            except UserError:  # a damaged run folder: its images count as not processed (done again)
                manifests[run_id] = {}
        if manifests[run_id].get("attempt") == attempt:  # the record of the attempt that committed
            runs.append((str(manifests[run_id].get("committed_at", "")), to_uri(fs, path)))
    return [uri for _, uri in sorted(runs)]


def load(state_uri: str, sink_uri: str, storage: StorageSpec, replacing: Optional[str] = None) -> dict[str, tuple]:
    """uri -> (size, etag, model_id) as the latest committed run recorded it; {} without state.
    Held in this process: runner.selection does the same selection distributed."""
    seen: dict[str, tuple] = {}
    for uri in committed_records(state_uri, sink_uri, storage, replacing):
        remember(seen, read_columns([uri], STATE_COLUMNS, storage))
    return seen


def remember(seen: dict[str, tuple], t: pa.Table) -> None:
    """Add the records of ``t`` (uri, size, etag, model_id columns) to ``seen``; later rows win."""
    seen.update(zip(t.column("uri").to_pylist(), zip(t.column("size").to_pylist(), t.column("etag").to_pylist(),
                                                      t.column("model_id").to_pylist())))


def pending(manifest: pa.Table, seen: dict[str, tuple], model_id: Optional[str],
            reprocess_on_model_change: bool = True) -> tuple[pa.Table, dict[str, int]]:
    """The manifest rows to process now, and the count of each reason: new, changed (size or
    etag), model_changed (processed by another model), other_model (processed by another model,
    kept: not ``reprocess_on_model_change``), unchanged (skipped)."""
    why = {"new": 0, "changed": 0, "model_changed": 0, "other_model": 0, "unchanged": 0}
    keep = []
    for uri, size, etag in zip(manifest.column("uri").to_pylist(), manifest.column("size").to_pylist(),
                               manifest.column("etag").to_pylist()):
        before = seen.get(uri)
        if before is None:
            reason = "new"
        elif (before[0], before[1]) != (size, etag):
            reason = "changed"
        elif before[2] != model_id:
            reason = "model_changed" if reprocess_on_model_change else "other_model"
        else:
            reason = "unchanged"
        why[reason] += 1
        keep.append(reason not in ("unchanged", "other_model"))
    return manifest.filter(pa.array(keep, pa.bool_())), why


def forget_others(state_uri: str, run_id: str, attempt: str, storage: StorageSpec) -> None:
    """Delete the records of ``run_id`` written by other attempts (void once ``attempt`` committed)."""
    fs, root = filesystem(state_uri, storage)
    if not fs.isdir(root):
        return
    for path in fs.ls(root, detail=False):
        parsed = _parse(path.rsplit("/", 1)[-1])
        if parsed is not None and parsed[0] == run_id and parsed[1] != attempt:
            fs.rm_file(path)
