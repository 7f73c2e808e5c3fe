"""The human-labels table a sink keeps (``imgclf review ingest`` writes it; ``imgclf labels``,
training with ``data.labels: {kind: reviewed}`` and review selection read it).

Under ``<sink>/_reviews/`` (a folder readers of ``**/*.parquet`` skip, in files that do not end in
``.parquet``, as the incremental state's):

    _reviews/labels/<ingest>.reviews       one Parquet file per ingest (REVIEW_SCHEMA)
    _reviews/batches/<batch>/              one folder per selection (imgclf_ray.review.select)

Ingests and selections take the sink's ``_reviews`` lock. An ingest writes one file atomically (a
PUT on an object store, a rename on a local disk); a selection writes its batch's record last, and a
folder without one is no batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgclf_ray.io.storage import join, to_uri

if TYPE_CHECKING:
    from imgclf_ray.io.sink import Sink

REVIEWS_DIR = "_reviews"
LABELS_DIR = f"{REVIEWS_DIR}/labels"
BATCHES_DIR = f"{REVIEWS_DIR}/batches"
REVIEWS_SUFFIX = ".reviews"
BATCH_FILE = "_batch.json"  # a batch's record, written last
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


def reviews(sink: "Sink") -> pa.Table:
    """Every review ingested into the sink (REVIEW_SCHEMA; empty when none)."""
    from imgclf_ray.io.tables import read_columns

    where = join(sink.root, LABELS_DIR)
    if not sink.fs.isdir(where):
        return REVIEW_SCHEMA.empty_table()
    files = sorted(p for p in sink.fs.ls(where, detail=False) if p.endswith(REVIEWS_SUFFIX))
    if not files:
        return REVIEW_SCHEMA.empty_table()
    return read_columns([to_uri(sink.fs, p) for p in files], REVIEW_SCHEMA.names, sink.storage).cast(REVIEW_SCHEMA)


def batch_records(sink: "Sink") -> list[dict]:
    """The records of the sink's review batches (a folder without one is an interrupted selection)."""
    import json

    where = join(sink.root, BATCHES_DIR)
    if not sink.fs.isdir(where):
        return []
    out = []
    for folder in sorted(sink.fs.ls(where, detail=False)):
        try:
            record = json.loads(sink.fs.cat_file(join(folder, BATCH_FILE)))
        except (OSError, ValueError):  # no record (an interrupted selection), or not a batch's folder
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def gold_batch(sink: "Sink") -> Optional[dict]:
    """The record of the sink's gold set (``imgclf review gold``), None when it has none."""
    return next((b for b in batch_records(sink) if b.get("gold")), None)


def last_per_image(table: pa.Table, *order: str) -> pa.Table:
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


def latest_reviews(table: pa.Table, current_etags: dict[str, Optional[str]], key: str = "image_id") -> pa.Table:
    """Each image's latest review that applies to its current content (``current_etags``: by
    ``key``, image_id or uri; an image whose etag has changed since keeps its reviews, marked
    stale, but none of them applies)."""
    if not table.num_rows:
        return table
    etags = [current_etags.get(i) for i in table.column(key).to_pylist()]
    fresh = [(not s) and (e is None or c is None or e == c)
             for s, e, c in zip(table.column("stale").to_pylist(), table.column("etag").to_pylist(), etags)]
    table = table.filter(pa.array(fresh, pa.bool_()))
    return last_per_image(table, "reviewed_at", "ingested_at")
