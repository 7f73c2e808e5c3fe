"""The state store of incremental jobs: what earlier runs processed, so that a nightly run does
only what is new or changed.

One Parquet file per run, ``<state>/processed-<run_id>.parquet``: uri, frame, size, etag, model_id
and run_id of every row that run labelled ``ok`` (error rows are not recorded, so they are tried
again the next night). The file is written *before* the run is committed and counts only once the
run's ``_SUCCESS`` exists: a driver killed between the two leaves a file that is ignored, and a
committed run always has its state. A run id written again replaces its file.
"""

from __future__ import annotations

import io
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgclf_ray.io.schema import STATUS_OK
from imgclf_ray.io.storage import filesystem, join
from imgclf_ray.io.tables import read_columns
from imgclf_ray.spec import StorageSpec

PREFIX, SUFFIX = "processed-", ".parquet"
STATE_COLUMNS = ["uri", "frame", "size", "etag", "model_id", "run_id"]


def state_file(state_uri: str, run_id: str) -> str:
    return join(state_uri, f"{PREFIX}{run_id}{SUFFIX}")


def record(state_uri: str, run_id: str, t: pa.Table, storage: StorageSpec) -> int:
    """Write the run's processed rows (``t``: its staged output, at least STATE_COLUMNS and
    status); returns how many."""
    t = t.filter(pc.equal(t.column("status"), STATUS_OK)).select(STATE_COLUMNS)
    sink = io.BytesIO()
    pq.write_table(t, sink)
    fs, path = filesystem(state_file(state_uri, run_id), storage)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, sink.getvalue())
    return t.num_rows


def load(state_uri: str, sink_uri: str, storage: StorageSpec) -> dict[str, tuple]:
    """uri -> (size, etag, model_id) as the latest committed run recorded it; {} without state."""
    from imgclf_ray.io.sink import MANIFEST_FILE, committed_runs, read_run_json
    from imgclf_ray.io.storage import to_uri

    fs, root = filesystem(state_uri, storage)
    if not fs.isdir(root):
        return {}
    committed = committed_runs(sink_uri, storage)  # one listing of the sink, whatever its layout
    runs = []
    for path in fs.find(root):
        name = path.rsplit("/", 1)[-1]
        if not (name.startswith(PREFIX) and name.endswith(SUFFIX)):
            continue
        run_uri = committed.get(name[len(PREFIX):-len(SUFFIX)])
        if run_uri is not None:  # a file whose run never committed is ignored
            when = (read_run_json(run_uri, MANIFEST_FILE, storage) or {}).get("committed_at", "")
            runs.append((when, to_uri(fs, path)))
    seen: dict[str, tuple] = {}
    for _, uri in sorted(runs):  # later commits win
        t = read_columns([uri], STATE_COLUMNS, storage)
        seen.update(zip(t.column("uri").to_pylist(), zip(t.column("size").to_pylist(), t.column("etag").to_pylist(),
                                                          t.column("model_id").to_pylist())))
    return seen


def pending(manifest: pa.Table, seen: dict[str, tuple], model_id: Optional[str],
            reprocess_on_model_change: bool = True) -> tuple[pa.Table, dict[str, int]]:
    """The manifest rows to process now, and the count of each reason: new, changed (size or
    etag), model_changed (processed by another model), unchanged (skipped)."""
    why = {"new": 0, "changed": 0, "model_changed": 0, "unchanged": 0}
    keep = []
    for uri, size, etag in zip(manifest.column("uri").to_pylist(), manifest.column("size").to_pylist(),
                               manifest.column("etag").to_pylist()):
        before = seen.get(uri)
        if before is None:
            reason = "new"
        elif (before[0], before[1]) != (size, etag):
            reason = "changed"
        elif reprocess_on_model_change and before[2] != model_id:
            reason = "model_changed"
        else:
            reason = "unchanged"
        why[reason] += 1
        keep.append(reason != "unchanged")
    return manifest.filter(pa.array(keep, pa.bool_())), why
