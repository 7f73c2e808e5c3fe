"""Which runs a sink holds: discovery (any layout), listing, resolving one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from imgclf_ray.errors import UserError
from imgclf_ray.ids import id_problem
from imgclf_ray.io.sink.layout import RUNS_DIR, SUCCESS_FILE
from imgclf_ray.io.storage import join, to_uri

if TYPE_CHECKING:
    from imgclf_ray.io.sink import Sink


def committed_runs(sink: "Sink", run_id: Optional[str] = None, every: bool = False):
    """run id -> run folder URI of every committed run (whatever its layout: a folder with
    _SUCCESS, outside the reserved _* folders but _runs); with ``run_id``, at most that one. With
    ``every`` (and ``run_id``): the list of every folder that run id is committed in (one, unless
    a crash of an earlier version left two)."""
    fs, root = sink.fs, sink.root
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
        parts = path[len(root):].strip("/").split("/")
        folders_of = parts[1:-1] if parts[0] == RUNS_DIR else parts[:-1]  # Delta sinks: _runs/<run_id>
        if parts[-1] != SUCCESS_FILE or not folders_of or any(p.startswith(("_", ".")) for p in folders_of):
            continue
        if id_problem(parts[-2]) is None and (run_id is None or parts[-2] == run_id):
            found[parts[-2]] = to_uri(fs, path.rsplit("/", 1)[0])
            folders.append(found[parts[-2]])
    return folders if every else found


def list_runs(sink: "Sink", damaged: bool = False) -> list[dict[str, Any]]:
    """The committed runs (folders with _SUCCESS, any layout), oldest commit first; each is its
    manifest plus ``uri``. A run folder whose manifest is missing, corrupt or not imgclf's is left
    out, so that one damaged run never hides the others; with ``damaged`` such folders follow the
    runs, each as {"run_id", "uri", "damaged": why}."""
    runs, broken = [], []
    for run_id, folder in committed_runs(sink).items():
        try:
            runs.append({**sink.run(folder).manifest(), "uri": folder})
        except UserError as exc:
            broken.append({"run_id": run_id, "uri": folder, "damaged": str(exc)})
    runs.sort(key=lambda m: (str(m.get("committed_at", "")), m["run_id"]))
    return runs + broken if damaged else runs


def resolve_run(sink: "Sink", run_id: Optional[str] = None) -> str:
    """The URI of one committed run: the sink's URI itself when it is a run folder, else its run
    ``run_id``, else its latest committed run with images (a night with nothing new commits an
    empty run record; the latest run is taken only when no run has images). Raises UserError when
    there is none."""
    if run_id is None and sink.fs.exists(join(sink.root, SUCCESS_FILE)):
        sink.run(sink.uri).manifest()
        return sink.uri
    if run_id is not None:
        found = committed_runs(sink, run_id)
        if run_id not in found:
            there = sink.fs.exists(join(sink.root, run_id)) if "/" not in run_id else False
            raise UserError(f"{sink.uri}: run {run_id!r} is not committed (no _SUCCESS)" if there else
                            f"{sink.uri}: no run {run_id!r} (`imgclf runs {sink.uri}` lists them)")
        return found[run_id]
    listed = list_runs(sink, damaged=True)
    runs = [r for r in listed if "damaged" not in r]
    if not runs:
        if listed:  # only damaged runs: say what is wrong with one
            raise UserError(listed[0]["damaged"])
        if not sink.fs.exists(sink.root):
            raise UserError(f"{sink.uri}: no such folder or prefix")
        raise UserError(f"{sink.uri}: no committed run here")
    with_images = [r for r in runs if not r.get("nothing_new")]
    return (with_images or runs)[-1]["uri"]
