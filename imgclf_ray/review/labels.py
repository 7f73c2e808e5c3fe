"""The archive's current labels: one row per image, the latest model row over every committed
night, its latest human label that applies (the human-labels table: imgclf_ray.io.reviews), and
which of the two counts.

Computed as the engine's tasks (``runner.engine.Tasks``: calls in this process, or Ray tasks on a
cluster) so that an archive larger than a machine's memory is never gathered in one place: a task
per data file of every committed night splits its rows by a stable hash of the image id into P
partitions; a task per partition keeps each image's latest row (and its label the night before),
joins its human labels and returns that partition's current labels. ``imgclf labels`` and
``read_labels`` concatenate the partitions (``read_labels(..., ray=True)``: a Ray Dataset of them,
never on the driver); ``imgclf review select`` reduces each to its best candidates first
(``imgclf_ray.review.select``).
"""

from __future__ import annotations

import zlib
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgclf_ray.errors import UserError
from imgclf_ray.io.reviews import last_per_image, latest_reviews, reviews
from imgclf_ray.io.sink import Sink
from imgclf_ray.spec import StorageSpec

# What `imgclf labels --to csv|jsonl` writes of each image (class and path scores left out).
LABEL_COLUMNS = ["image_id", "uri", "etag", "label", "labels", "label_path", "label_source", "model_label",
                 "score", "annotator", "reviewed_at", "batch_id", "run_id", "model_id", "status"]

# The model columns the current labels read from every committed night.
MODEL_COLUMNS = ["image_id", "uri", "etag", "status", "label", "labels", "score", "class_scores",
                 "label_path", "path_scores", "model_id", "run_id", "processed_at"]

# What a review selection reads besides, where the nights wrote them: the curation flags (is_*),
# the label scores, the embedding and the duplicate groups (strategies label_issues and diverse).
SELECTION_COLUMNS = ["label_quality", "embedding", "phash", "duplicate_group", "near_duplicate_group"]

ROWS_PER_PARTITION = 500_000  # of the hash shuffle by image id: one partition per CPU, or more
MIN_PARTITION_ROWS = 50_000  # but no CPU gets a partition of fewer rows (a small archive, a large cluster)


def latest_night(sink: Sink, runs: list[dict]) -> dict:
    """The manifest of the sink's latest night with images (its task and labels are the ones a
    review batch shows and an answer may name); UserError when there is none."""
    with_rows = [r for r in runs if r.get("rows")]
    if not with_rows:
        raise UserError(f"{sink.uri}: no committed night with images to review")
    return with_rows[-1]


def night_files(sink: Sink, runs: list[dict]) -> list[tuple[str, int, str]]:
    """(data file, night's place in commit order, run id) of every committed night with rows."""
    out = []
    for order, run in enumerate(runs):
        if run.get("nothing_new") or not run.get("rows"):
            continue
        out += [(uri, order, run["run_id"]) for uri in sink.run(run["uri"]).files()]
    return out


def partition_of(ids: pa.ChunkedArray, partitions: int) -> np.ndarray:
    """A stable partition of each image id (the same in every process: crc32, not Python's hash)."""
    return np.fromiter((zlib.crc32(i.encode()) % partitions for i in ids.to_pylist()), np.int64, len(ids))


def split_night(uri: str, night: int, run_id: str, columns: Optional[list[str]], storage: StorageSpec,
                partitions: int):
    """One data file's rows (``columns``; None: MODEL_COLUMNS, SELECTION_COLUMNS and the quality
    flags ``is_*``, those the file has) with their night, in ``partitions`` parts by image id (a
    task: a tuple of tables, or the table itself for one partition)."""
    from imgclf_ray.io.tables import read_columns

    from imgclf_ray.io.storage import describe_os_error

    wanted = set(columns or MODEL_COLUMNS + SELECTION_COLUMNS)
    try:
        t = read_columns([uri], lambda name: name in wanted or (columns is None and name.startswith("is_")), storage)
    except OSError as exc:
        raise UserError(f"{uri}: a committed night's data file cannot be read ({describe_os_error(exc)})") from None
    if "run_id" in wanted and "run_id" not in t.column_names:  # a Delta sink's partition column
        t = t.append_column("run_id", pa.array([run_id] * t.num_rows, pa.string()))
    t = t.append_column("_night", pa.array(np.full(t.num_rows, night, np.int64)))
    part = partition_of(t.column("image_id"), partitions)
    out = tuple(t.filter(pa.array(part == p)) for p in range(partitions))
    return out if partitions > 1 else out[0]


def current_part(found: pa.Table, full: bool, *parts: pa.Table) -> pa.Table:
    """One partition's images (a task): each one's latest model row; when ``full``, with
    ``previous_label`` (its label the night before) and its current label (``with_human_labels``:
    ``found``, the sink's reviews)."""
    parts = tuple(p for p in parts if p.num_rows)
    if not parts:
        return pa.table({})
    table = pa.concat_tables(parts, promote_options="default")
    model = last_per_image(table, "_night").drop_columns(["_night"])
    if not full:
        return model
    model = model.append_column("previous_label", _previous_labels(table, model))
    return with_human_labels(model, found)


def _previous_labels(table: pa.Table, latest: pa.Table) -> pa.Array:
    """Each image's label in its second-latest night (by ``_night``), in ``latest``'s row order."""
    t = table.select(["image_id", "label", "_night"])
    t = t.take(pc.sort_indices(t, [("image_id", "ascending"), ("_night", "descending")]))
    ids = t.column("image_id").to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    second = np.zeros(len(ids), dtype=bool)
    second[1:] = ~first[1:] & first[:-1]
    found = dict(zip(ids[second].tolist(), t.column("label").filter(pa.array(second)).to_pylist()))
    return pa.array([found.get(i) for i in latest.column("image_id").to_pylist()], pa.string())


def with_human_labels(model: pa.Table, found: pa.Table) -> pa.Table:
    """``model`` (latest model rows) with the current label of each image: ``label``/``labels``/
    ``label_path`` the latest human answer when one applies (``label_source`` "human"), else the
    model's ("model"); ``model_label``, ``score`` and ``class_scores`` stay the model's."""
    ids = model.column("image_id").to_pylist()
    human = latest_reviews(found, dict(zip(ids, model.column("etag").to_pylist())))
    by_id = {r["image_id"]: r for r in human.select(
        ["image_id", "label", "labels", "label_path", "annotator", "reviewed_at", "batch_id"]).to_pylist()}
    hits = [by_id.get(i) for i in ids]

    def pick(column: str, kind: pa.DataType) -> pa.Array:
        mine = model.column(column).to_pylist() if column in model.column_names else [None] * len(ids)
        return pa.array([h[column] if h else m for h, m in zip(hits, mine)], kind)

    out = model.rename_columns([f"model_{c}" if c in ("label", "labels", "label_path") else c
                                for c in model.column_names])
    out = out.append_column("label", pick("label", pa.string()))
    model_lists = model.column("labels").to_pylist() if "labels" in model.column_names else [None] * len(ids)
    out = out.append_column("labels", pa.array([(h["labels"] if h else m) if m is not None else None
                                                for h, m in zip(hits, model_lists)], pa.list_(pa.string())))
    out = out.append_column("label_path", pick("label_path", pa.list_(pa.string())))
    out = out.append_column("label_source", pa.array(["human" if h else "model" for h in hits], pa.string()))
    for column, kind in (("annotator", pa.string()), ("reviewed_at", pa.timestamp("us", tz="UTC")),
                         ("batch_id", pa.string())):
        out = out.append_column(column, pa.array([h[column] if h else None for h in hits], kind))
    return out


def in_process():
    """The engine's tasks as calls in this process (runner.local.LocalTasks)."""
    from imgclf_ray.runner.local import LocalTasks

    return LocalTasks()


def partitions(runs: list[dict], tasks: Any) -> int:
    """How many partitions the archive of ``runs`` is split into: one per CPU of ``tasks``, or
    more, so that each holds about ROWS_PER_PARTITION rows."""
    rows = sum(int(r.get("rows") or 0) for r in runs)
    return max(1, min(tasks.cpus, -(-rows // MIN_PARTITION_ROWS)), -(-rows // ROWS_PER_PARTITION))


def current_label_parts(sink: Sink, tasks: Any, runs: Optional[list[dict]] = None,
                        columns: Optional[list[str]] = None, p: Optional[int] = None) -> list:
    """References (``tasks``) to the current labels of each of ``p`` partitions (default:
    ``partitions``) of the archive's images (``columns`` of the model rows; None: what a
    selection reads, with ``previous_label``)."""
    runs = sink.list_runs() if runs is None else runs
    files = night_files(sink, runs)
    p = p or partitions(runs, tasks)
    split = [tasks.submit(split_night, uri, night, run_id, columns, sink.storage, p, num_returns=p)
             for uri, night, run_id in files]
    if p == 1:  # one return: the table itself
        split = [[s] for s in split]
    found = tasks.put(reviews(sink) if columns is None else None)
    return [tasks.submit(current_part, found, columns is None, *[s[i] for s in split]) for i in range(p)]


def concat(parts: list[pa.Table]) -> pa.Table:
    """The partitions' tables as one (empty partitions left out)."""
    parts = [t for t in parts if t.num_rows]
    return pa.concat_tables(parts, promote_options="default") if parts else pa.table({})


def latest_model_rows(sink: Sink, columns: list[str], runs: Optional[list[dict]] = None, tasks: Any = None
                      ) -> pa.Table:
    """``columns`` of each image's row of the latest committed night that processed it."""
    table = concat((tasks or in_process()).get(current_label_parts(sink, tasks or in_process(), runs, columns)))
    return table.select(columns) if table.num_rows else pa.table({c: pa.array([], pa.string()) for c in columns})


def current_labels(sink: Sink, runs: Optional[list[dict]] = None, tasks: Any = None) -> pa.Table:
    """One row per image the sink's nights labelled (``with_human_labels``), in this process;
    ``runs``: the sink's committed runs, when the caller listed them; ``tasks``: the engine's
    tasks to compute them with (default: calls in this process)."""
    tasks = tasks or in_process()
    return concat(tasks.get(current_label_parts(sink, tasks, runs)))


CURRENT = "@labels"  # in place of a run in imgclf compare: a sink's current labels


def current_counts(sink_uri: str, storage: StorageSpec) -> dict[str, Any]:
    """The sink's current labels counted as ``imgclf compare`` counts a run: each image's
    reviewer's label where one applies, else its latest model label; the model's scores."""
    from imgclf_ray.report.compare import counts

    t = read_labels(sink_uri, storage)
    if t.num_rows:
        t = t.append_column("error", pa.nulls(t.num_rows, pa.string()))
    return counts(t, CURRENT, None)


def read_labels(sink_uri: str, storage: StorageSpec = StorageSpec(), ray: bool = False):
    """The archive's current labels (``current_labels``) of the sink at ``sink_uri``: a
    pyarrow.Table, or with ``ray`` a Ray Dataset made of the partitions where Ray's tasks computed
    them (Ray initialised, or started here: for archives larger than the driver's memory)."""
    sink = Sink(sink_uri, storage)
    if not ray:
        return current_labels(sink)
    import ray as ray_module
    from imgclf_ray.runner.build import RayTasks

    if not ray_module.is_initialized():
        ray_module.init()
    return ray_module.data.from_arrow_refs(current_label_parts(sink, RayTasks()))
