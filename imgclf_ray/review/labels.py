"""The archive's current labels: one row per image, the latest model row over every committed
night, its latest human label that applies (the human-labels table: imgclf_ray.io.reviews), and
which of the two counts."""

from __future__ import annotations

from typing import Optional

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


def latest_night(sink: Sink, runs: list[dict]) -> dict:
    """The manifest of the sink's latest night with images (its task and labels are the ones a
    review batch shows and an answer may name); UserError when there is none."""
    with_rows = [r for r in runs if r.get("rows")]
    if not with_rows:
        raise UserError(f"{sink.uri}: no committed night with images to review")
    return with_rows[-1]


# What a review selection reads besides, where the nights wrote them: the curation flags (is_*),
# the label scores, the embedding and the duplicate groups (strategies label_issues and diverse).
SELECTION_COLUMNS = ["label_quality", "embedding", "phash", "duplicate_group", "near_duplicate_group"]


def latest_model_rows(sink: Sink, columns: Optional[list[str]] = None, runs: Optional[list[dict]] = None) -> pa.Table:
    """Each image's row of the latest committed night that processed it (the nights in commit
    order, ``runs`` when the caller listed them; a night with nothing new adds no row). Without
    ``columns``: MODEL_COLUMNS, what a selection reads besides, and ``previous_label``: the label
    of the image's row in the night before (null when one night labelled it)."""
    flags = columns is None
    columns = columns or MODEL_COLUMNS + SELECTION_COLUMNS
    parts = []
    for order, run in enumerate(sink.list_runs() if runs is None else runs):
        if run.get("nothing_new") or not run.get("rows"):
            continue
        rows = sink.run(run["uri"]).rows(lambda name: name in columns or (flags and name.startswith("is_")))
        parts.append(rows.append_column("_night", pa.array(np.full(rows.num_rows, order, np.int64))))
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    table = pa.concat_tables(parts, promote_options="default")
    latest = last_per_image(table, "_night").drop_columns(["_night"])
    return latest.append_column("previous_label", _previous_labels(table, latest)) if flags else latest


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


def current_labels(sink: Sink, runs: Optional[list[dict]] = None) -> pa.Table:
    """One row per image the sink's nights labelled: ``label``/``labels``/``label_path`` are the
    latest human answer when one applies (``label_source`` "human"), else the latest model row's
    ("model"); ``model_label``, ``score`` and ``class_scores`` are always the model's. ``runs``:
    the sink's committed runs, when the caller listed them."""
    model = latest_model_rows(sink, runs=runs)
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
