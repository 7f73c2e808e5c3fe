"""The archive's labels: the human-labels table a sink keeps, and its current labels (one row per
image: the latest model row over every committed night, its latest human label, and which counts).

Reviews live under ``<sink>/_reviews/`` (a folder readers of ``**/*.parquet`` skip, in files that
do not end in ``.parquet``, as the incremental state's):

    _reviews/labels/<ingest>.reviews       one Parquet file per `imgclf review ingest` (REVIEW_SCHEMA)
    _reviews/batches/<batch>/              one folder per `imgclf review select` (imgclf_ray.review.select)

Every write is one atomic file (a PUT on an object store, a rename on a local disk) under the sink's
``_reviews`` lock, so an interrupted ingest or selection leaves nothing half-written.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgclf_ray.io.sink import Sink
from imgclf_ray.io.storage import join, to_uri
from imgclf_ray.spec import StorageSpec

REVIEWS_DIR = "_reviews"
LABELS_DIR = f"{REVIEWS_DIR}/labels"
BATCHES_DIR = f"{REVIEWS_DIR}/batches"
REVIEWS_SUFFIX = ".reviews"
LOCK_NAME = "_reviews"  # _locks/_reviews.lock: selections and ingests of one sink, one at a time

REVIEW_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("uri", pa.string()),
    pa.field("etag", pa.string()),  # the image's content when the task was made: a review of other content is stale
    pa.field("label", pa.string()),  # the answer: the class (multiclass, binary), the leaf (hierarchical)
    pa.field("labels", pa.list_(pa.string())),  # every class chosen (multilabel; one for the others)
    pa.field("label_path", pa.list_(pa.string())),  # hierarchical: root to leaf
    pa.field("annotator", pa.string()),
    pa.field("reviewed_at", pa.timestamp("us", tz="UTC")),
    pa.field("batch_id", pa.string()),
    pa.field("model_label", pa.string()),  # what the reviewer was shown
    pa.field("model_score", pa.float32()),
    pa.field("stale", pa.bool_()),  # the image's content had changed when the review came in
    pa.field("review_key", pa.string(), nullable=False),  # one answer: ingesting it again adds nothing
    pa.field("source", pa.string()),  # label-studio, label-studio-min, csv
    pa.field("ingest_id", pa.string()),
    pa.field("ingested_at", pa.timestamp("us", tz="UTC")),
])

# What `imgclf labels --to csv|jsonl` writes of each image (class and path scores left out).
LABEL_COLUMNS = ["image_id", "uri", "etag", "label", "labels", "label_path", "label_source", "model_label",
                 "score", "annotator", "reviewed_at", "batch_id", "run_id", "model_id", "status"]

# The model columns the current labels read from every committed night.
MODEL_COLUMNS = ["image_id", "uri", "etag", "status", "label", "labels", "score", "class_scores",
                 "label_path", "path_scores", "model_id", "run_id", "processed_at"]


def reviews(sink: Sink) -> pa.Table:
    """Every review ingested into the sink (REVIEW_SCHEMA; empty when none)."""
    from imgclf_ray.io.tables import read_columns

    where = join(sink.root, LABELS_DIR)
    if not sink.fs.isdir(where):
        return REVIEW_SCHEMA.empty_table()
    files = sorted(p for p in sink.fs.ls(where, detail=False) if p.endswith(REVIEWS_SUFFIX))
    if not files:
        return REVIEW_SCHEMA.empty_table()
    return read_columns([to_uri(sink.fs, p) for p in files], REVIEW_SCHEMA.names, sink.storage).cast(REVIEW_SCHEMA)


def latest_model_rows(sink: Sink, columns: Optional[list[str]] = None) -> pa.Table:
    """Each image's row of the latest committed night that processed it (the nights in commit
    order; a night with nothing new adds no row)."""
    columns = columns or MODEL_COLUMNS
    parts = []
    for order, run in enumerate(sink.list_runs()):
        if run.get("nothing_new") or not run.get("rows"):
            continue
        rows = sink.run(run["uri"]).rows(lambda name: name in columns)
        parts.append(rows.append_column("_night", pa.array(np.full(rows.num_rows, order, np.int64))))
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    table = pa.concat_tables(parts, promote_options="default")
    return _last_per_image(table, "_night").drop_columns(["_night"])


def _last_per_image(table: pa.Table, *order: str) -> pa.Table:
    """The row with the greatest ``order`` columns of each image_id (stable: the later row wins a tie)."""
    if not table.num_rows:
        return table
    table = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    keys = [("image_id", "ascending"), *[(c, "descending") for c in order], ("_row", "descending")]
    table = table.take(pc.sort_indices(table, keys))
    ids = table.column("image_id").to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return table.filter(pa.array(first)).drop_columns(["_row"])


def latest_reviews(table: pa.Table, current_etags: dict[str, Optional[str]]) -> pa.Table:
    """Each image's latest review that applies to its current content (an image whose etag has
    changed since keeps its reviews, marked stale, but none of them applies)."""
    if not table.num_rows:
        return table
    etags = [current_etags.get(i) for i in table.column("image_id").to_pylist()]
    fresh = [(not s) and (e is None or c is None or e == c)
             for s, e, c in zip(table.column("stale").to_pylist(), table.column("etag").to_pylist(), etags)]
    table = table.filter(pa.array(fresh, pa.bool_()))
    return _last_per_image(table, "reviewed_at", "ingested_at")


def current_labels(sink: Sink) -> pa.Table:
    """One row per image the sink's nights labelled: ``label``/``labels``/``label_path`` are the
    latest human answer when one applies (``label_source`` "human"), else the latest model row's
    ("model"); ``model_label``, ``score`` and ``class_scores`` are always the model's."""
    model = latest_model_rows(sink)
    etags = dict(zip(model.column("image_id").to_pylist(), model.column("etag").to_pylist())) if model.num_rows else {}
    human = latest_reviews(reviews(sink), etags)
    by_id = {r["image_id"]: r for r in human.select(
        ["image_id", "label", "labels", "label_path", "annotator", "reviewed_at", "batch_id"]).to_pylist()}
    ids = model.column("image_id").to_pylist() if model.num_rows else []
    found = [by_id.get(i) for i in ids]

    def pick(column: str, kind: pa.DataType) -> pa.Array:
        mine = model.column(column).to_pylist() if column in model.column_names else [None] * len(ids)
        return pa.array([h[column] if h else m for h, m in zip(found, mine)], kind)

    out = model.rename_columns([f"model_{c}" if c in ("label", "labels", "label_path") else c
                                for c in model.column_names])
    out = out.append_column("label", pick("label", pa.string()))
    out = out.append_column("labels", pick("labels", pa.list_(pa.string())))
    out = out.append_column("label_path", pick("label_path", pa.list_(pa.string())))
    out = out.append_column("label_source", pa.array(["human" if h else "model" for h in found], pa.string()))
    for column, kind in (("annotator", pa.string()), ("reviewed_at", pa.timestamp("us", tz="UTC")),
                         ("batch_id", pa.string())):
        out = out.append_column(column, pa.array([h[column] if h else None for h in found], kind))
    return out


def read_labels(sink_uri: str, storage: StorageSpec = StorageSpec()) -> pa.Table:
    """The archive's current labels (``current_labels``) of the sink at ``sink_uri``."""
    return current_labels(Sink(sink_uri, storage))
