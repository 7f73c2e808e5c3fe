"""`imgclf review select`: the images a human should review next, as a review batch.

A batch is a folder ``<sink>/_reviews/batches/<batch_id>/``: ``tasks.json`` (Label Studio tasks,
the model's answer and score as pre-annotations), ``labeling-config.xml`` (the labeling interface
to create the Label Studio project with: Choices, ``choice="multiple"`` for multilabel; a
hierarchical model's batches are refused for now), ``batch.csv`` (the same images for a reviewer
without Label Studio) and, written last, ``_batch.json`` (the record: strategy, its parameters, seed, model ids, labels, the images).
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional
from xml.sax.saxutils import quoteattr

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgclf_ray.errors import UserError
from imgclf_ray.io.sink import Sink
from imgclf_ray.io.sink.layout import put_atomic
from imgclf_ray.io.storage import join
from imgclf_ray.io.reviews import BATCHES_DIR, LOCK_NAME, reviews
from imgclf_ray.review.labels import current_labels, latest_night

BATCH_FILE = "_batch.json"
FROM_NAME, TO_NAME = "label", "image"  # the labeling config's control and image names


# -- strategies: how uncertain each candidate is (higher: reviewed first) --------------------------

def _matrix(scores: list) -> np.ndarray:
    width = max((len(s) for s in scores if s is not None), default=0)
    out = np.zeros((len(scores), width), dtype=np.float64)
    for i, s in enumerate(scores):
        if s is not None:
            out[i, :len(s)] = s
    return out


def uncertainty(rows: pa.Table, task: str, measure: str, rng: np.random.Generator) -> np.ndarray:
    """How uncertain the model is about each row, higher first. multiclass and binary: ``margin``
    (1 - (p1 - p2)), ``entropy`` (of the class scores) or ``least_confidence`` (1 - p1);
    multilabel: the score of the label nearest 0.5 (1 - 2 |p - 0.5|)."""
    p = _matrix(rows.column("class_scores").to_pylist())
    if task == "multilabel":
        return 1.0 - 2.0 * np.abs(p - 0.5).min(axis=1) if p.shape[1] else np.zeros(len(p))
    top = -np.sort(-p, axis=1)
    if measure == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    if measure == "least_confidence":
        return 1.0 - top[:, 0]
    second = top[:, 1] if top.shape[1] > 1 else np.zeros(len(top))
    return 1.0 - (top[:, 0] - second)


def random_order(rows: pa.Table, task: str, measure: str, rng: np.random.Generator) -> np.ndarray:
    """The baseline: a seeded random order."""
    return rng.random(rows.num_rows)


@dataclass(frozen=True)
class Strategy:
    priority: Callable[[pa.Table, str, str, np.random.Generator], np.ndarray]
    measures: tuple[str, ...] = ()


# One table: a new strategy is a line here.
STRATEGIES = {
    "uncertainty": Strategy(uncertainty, ("margin", "entropy", "least_confidence")),
    "random": Strategy(random_order),
}


# -- selection ----------------------------------------------------------------------------------

def _batches_of(sink: Sink) -> list[dict[str, Any]]:
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


def candidates(sink: Sink, include_flagged: bool = False) -> tuple[pa.Table, dict[str, Any]]:
    """The images a batch may take: labelled by the model (status ok), with no human label that
    applies, in no earlier batch; quality-flagged ones (``is_*`` true) left out unless asked.
    Returns them and the latest night's manifest facts (task, labels)."""
    runs = sink.list_runs()
    facts = latest_night(sink, runs)
    current = current_labels(sink, runs)
    if facts.get("task") == "hierarchical":
        raise UserError(f"{sink.uri}: review batches of a hierarchical model are not supported yet")
    taken = {i for b in _batches_of(sink) for i in b.get("image_ids", [])}
    reviewed = set(reviews(sink).column("image_id").to_pylist())
    keep = pc.and_(pc.equal(current.column("status"), "ok"), pc.equal(current.column("label_source"), "model"))
    rows = current.filter(keep)
    ids = rows.column("image_id").to_pylist()
    mask = [i not in taken and i not in reviewed for i in ids]
    if not include_flagged:
        flags = [c for c in rows.column_names if c.startswith("is_")]
        for c in flags:
            mask = [m and not v for m, v in zip(mask, rows.column(c).to_pylist())]
    return rows.filter(pa.array(mask, pa.bool_())), facts


def select(sink: Sink, budget: int, strategy: str = "uncertainty", measure: str = "margin",
           seed: int = 0) -> tuple[pa.Table, dict[str, Any]]:
    """The ``budget`` candidates the strategy puts first (ties by image id), with a ``priority``
    column, and the latest night's manifest facts."""
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy {strategy}: unknown; known: {', '.join(sorted(STRATEGIES))}")
    entry = STRATEGIES[strategy]
    if entry.measures and measure not in entry.measures:
        raise UserError(f"--measure {measure}: {strategy} takes {', '.join(entry.measures)}")
    rows, facts = candidates(sink)
    if not rows.num_rows:
        return rows.append_column("priority", pa.array([], pa.float64())), facts
    priority = entry.priority(rows, facts.get("task") or "multiclass", measure, np.random.default_rng(seed))
    ids = np.asarray(rows.column("image_id").to_pylist(), dtype=object)
    order = np.lexsort((ids, -priority))[:budget]
    return rows.take(pa.array(order, pa.int64())).append_column("priority", pa.array(priority[order], pa.float64())), facts


# -- the batch's files --------------------------------------------------------------------------

def labeling_config(task: str, labels: list[str]) -> str:
    """The Label Studio labeling interface for the batch's tasks (Choices: one, or several for a
    multilabel model)."""
    kind = "multiple" if task == "multilabel" else "single"
    items = "".join(f"    <Choice value={quoteattr(label)}/>\n" for label in labels)
    body = f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="{kind}" showInline="true">\n{items}  </Choices>\n'
    return f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n{body}</View>\n'


def tasks_json(rows: pa.Table, task: str, batch_id: str, document_root: Optional[str]) -> bytes:
    """Label Studio's import: one task per image, the model's answer as a prediction."""
    from imgclf_ray.report.export import image_url

    out = []
    for row in rows.to_pylist():
        out.append({
            "data": {"image": image_url(row["uri"], document_root), "image_id": row["image_id"], "uri": row["uri"],
                     "etag": row["etag"], "batch_id": batch_id, "model_label": row["model_label"],
                     "model_score": row["score"]},
            "predictions": [{"model_version": row["model_id"] or "imgclf", "score": row["score"],
                             "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                                         "value": {"choices": list(row.get("model_labels") or [row["model_label"]])}}]}],
        })
    return json.dumps(out, indent=1).encode()


def batch_csv(rows: pa.Table, batch_id: str) -> bytes:
    """The batch for a reviewer without Label Studio: fill ``label``, then ingest the file."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["image_id", "uri", "etag", "batch_id", "model_label", "model_score", "priority", "label"])
    for r in rows.to_pylist():
        writer.writerow([r["image_id"], r["uri"], r["etag"], batch_id, r["model_label"], r["score"], r["priority"], ""])
    return out.getvalue().encode()


def commit_batch(sink: Sink, budget: int, strategy: str = "uncertainty", measure: str = "margin", seed: int = 0,
                 document_root: Optional[str] = None) -> dict[str, Any]:
    """Select and write a review batch under the sink's reviews lock; returns its record."""
    from imgclf_ray.io.lock import RunLock

    with RunLock.on(sink, LOCK_NAME, uuid.uuid4().hex[:12], name=LOCK_NAME):
        rows, facts = select(sink, budget, strategy, measure, seed)
        if not rows.num_rows:
            raise UserError(f"{sink.uri}: no image left to review (every labelled image is reviewed or "
                            "in an earlier batch)")
        now = datetime.now(timezone.utc)
        batch_id = f"{strategy}-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        task, labels = facts.get("task") or "multiclass", facts.get("labels") or []
        files = {"tasks.json": tasks_json(rows, task, batch_id, document_root),  # refusals first
                 "labeling-config.xml": labeling_config(task, labels).encode(), "batch.csv": batch_csv(rows, batch_id)}
        folder = join(sink.root, BATCHES_DIR, batch_id)
        sink.fs.makedirs(folder, exist_ok=True)
        for name, blob in files.items():
            put_atomic(sink.fs, join(folder, name), blob)
        record = {"batch_id": batch_id, "created_at": now.isoformat(), "strategy": strategy,
                  "measure": measure if STRATEGIES[strategy].measures else None, "seed": seed, "budget": budget,
                  "images": rows.num_rows, "task": task, "labels": labels,
                  "model_ids": sorted({m for m in rows.column("model_id").to_pylist() if m}),
                  "image_ids": rows.column("image_id").to_pylist(), "uri": join(sink.uri, BATCHES_DIR, batch_id)}
        put_atomic(sink.fs, join(folder, BATCH_FILE), json.dumps(record, indent=1).encode())  # last: the commit
    return record
