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

from imgclf_ray import faults
from imgclf_ray.errors import UserError
from imgclf_ray.io.sink import Sink
from imgclf_ray.io.sink.layout import put_atomic
from imgclf_ray.io.storage import join
from imgclf_ray.io.reviews import BATCH_FILE, BATCHES_DIR, LOCK_NAME, batch_records, gold_batch, reviews
from imgclf_ray.review.labels import current_labels, latest_night

FROM_NAME, TO_NAME = "label", "image"
NOT_QUALITY_FLAGS = ("is_label_issue", "is_duplicate", "is_near_duplicate")  # the labeling config's control and image names


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


def label_issue_order(rows: pa.Table, task: str, measure: str, rng: np.random.Generator) -> np.ndarray:
    """Where a label exists already (source.labels: the folder's, a table's), the least likely to
    be right first: 1 - ``label_quality`` (cleanlab's self-confidence, curate.checks: [label_issue]);
    images without one are not candidates."""
    if "label_quality" not in rows.column_names or not pc.sum(pc.is_valid(rows.column("label_quality"))).as_py():
        raise UserError("--strategy label_issues: no night of this sink scored its labels; run the job with "
                        "source.labels and curate.checks: [label_issue]")
    quality = rows.column("label_quality").to_numpy(zero_copy_only=False).astype(np.float64)
    return np.where(np.isnan(quality), -np.inf, 1.0 - quality)


def disagreement(rows: pa.Table, task: str, measure: str, rng: np.random.Generator) -> np.ndarray:
    """Where two nights (two models) disagree on an image's label: those first, each group by its
    margin uncertainty; an image one night labelled only comes after."""
    previous = rows.column("previous_label").to_pylist()
    if not any(p is not None for p in previous):
        raise UserError("--strategy disagreement: no image was labelled by two nights yet (a night with a new "
                        "model labels the archive again: incremental.reprocess_on_model_change)")
    differ = np.array([p is not None and p != m for p, m in zip(previous, rows.column("model_label").to_pylist())])
    return differ * 2.0 + uncertainty(rows, task, "margin", rng)


def _features(rows: pa.Table) -> np.ndarray:
    """What diversity is measured on: the run's embedding when every row has one (cluster jobs
    store it), else the class-score vectors (the model's own view of the images)."""
    if "embedding" in rows.column_names and rows.column("embedding").null_count == 0 and rows.num_rows:
        return np.asarray(rows.column("embedding").to_pylist(), dtype=np.float64)
    return _matrix(rows.column("class_scores").to_pylist())


def k_center(features: np.ndarray, budget: int) -> list[int]:
    """Greedy k-center (the core-set selection): the first row, then each time the row farthest
    from every row chosen (Euclidean, on L2-normalised features); ties to the earlier row."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    chosen = [0]
    nearest = np.linalg.norm(x - x[0], axis=1)
    while len(chosen) < min(budget, len(x)):
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[nxt], axis=1))
    return chosen


def diverse_pick(rows: pa.Table, order: np.ndarray, budget: int, pool: int) -> np.ndarray:
    """From the ``pool`` x budget most uncertain rows, one per (near-)duplicate group (the run's
    duplicate and near-duplicate groups, else equal perceptual hashes), then k-center greedy on
    the features: a batch that covers the uncertain region instead of one corner of it."""
    top = order[:pool * budget]
    seen: set = set()
    kept = []
    groups = [c for c in ("duplicate_group", "near_duplicate_group", "phash") if c in rows.column_names]
    values = {c: rows.column(c).to_pylist() for c in groups}
    for i in top:
        keys = {(c, values[c][i]) for c in groups if values[c][i] is not None}
        if keys & seen:
            continue
        seen |= keys
        kept.append(i)
    kept = np.asarray(kept, dtype=np.int64)
    if len(kept) <= budget:
        return kept
    return kept[k_center(_features(rows.take(pa.array(kept))), budget)]


@dataclass(frozen=True)
class Strategy:
    priority: Callable[[pa.Table, str, str, np.random.Generator], np.ndarray]  # higher: reviewed first
    measures: tuple[str, ...] = ()
    diverse: bool = False  # the batch is drawn from the top of the order by diverse_pick


# One table: a new strategy is a line here.
STRATEGIES = {
    "uncertainty": Strategy(uncertainty, ("margin", "entropy", "least_confidence")),
    "diverse": Strategy(uncertainty, ("margin", "entropy", "least_confidence"), diverse=True),
    "label_issues": Strategy(label_issue_order),
    "disagreement": Strategy(disagreement),
    "random": Strategy(random_order),
}


# -- selection ----------------------------------------------------------------------------------

def candidates(sink: Sink, include_flagged: bool = False) -> tuple[pa.Table, dict[str, Any]]:
    """The images a batch may take: labelled by the model (status ok), with no human label that
    applies, in no earlier batch; those an image-quality check flagged (``is_*`` true: blurry,
    dark ..., not duplicates or label issues) left out unless asked.
    Returns them and the latest night's manifest facts (task, labels)."""
    runs = sink.list_runs()
    facts = latest_night(sink, runs)
    current = current_labels(sink, runs)
    if facts.get("task") == "hierarchical":
        raise UserError(f"{sink.uri}: review batches of a hierarchical model are not supported yet")
    taken = {i for b in batch_records(sink) for i in b.get("image_ids", [])}
    reviewed = set(reviews(sink).column("image_id").to_pylist())
    keep = pc.and_(pc.equal(current.column("status"), "ok"), pc.equal(current.column("label_source"), "model"))
    rows = current.filter(keep)
    ids = rows.column("image_id").to_pylist()
    mask = [i not in taken and i not in reviewed for i in ids]
    if not include_flagged:  # the image-quality flags: a label issue is what a review fixes, and of a
        # duplicate group the diverse strategy takes one image (excluding them would leave all out)
        flags = [c for c in rows.column_names if c.startswith("is_") and c not in NOT_QUALITY_FLAGS]
        for c in flags:
            mask = [m and not v for m, v in zip(mask, rows.column(c).to_pylist())]
    return rows.filter(pa.array(mask, pa.bool_())), facts


def select(sink: Sink, budget: int, strategy: str = "uncertainty", measure: str = "margin",
           seed: int = 0, pool: int = 5) -> tuple[pa.Table, dict[str, Any]]:
    """The ``budget`` candidates the strategy puts first (ties by image id; ``diverse``: drawn from
    the ``pool`` x budget first), with a ``priority`` column, and the latest night's manifest facts."""
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
    order = np.lexsort((ids, -priority))
    order = order[np.isfinite(priority[order])]  # -inf: not a candidate of this strategy
    chosen = diverse_pick(rows, order, budget, pool) if entry.diverse else order[:budget]
    return rows.take(pa.array(chosen, pa.int64())).append_column("priority", pa.array(priority[chosen], pa.float64())), facts


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
                 document_root: Optional[str] = None, pool: int = 5) -> dict[str, Any]:
    """Select and write a review batch under the sink's reviews lock; returns its record."""
    entry = STRATEGIES.get(strategy)
    facts = {"strategy": strategy, "measure": measure if entry and entry.measures else None, "seed": seed,
             "budget": budget, **({"pool": pool} if entry and entry.diverse else {})}
    return _commit(sink, lambda: select(sink, budget, strategy, measure, seed, pool), facts, document_root)


def stratified(rows: pa.Table, size: int, seed: int) -> pa.Table:
    """``size`` rows drawn at random within each model label, in proportion to its count (largest
    remainders; every label present gets one when ``size`` allows), in image id order."""
    labels = np.asarray(rows.column("model_label").to_pylist(), dtype=object)
    names, counts = np.unique(labels.astype(str), return_counts=True)
    size = min(size, rows.num_rows)
    share = counts / counts.sum() * size
    quota = np.floor(share).astype(int)
    if size >= len(names):
        quota = np.maximum(quota, 1)
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    while quota.sum() < size:  # the largest remainders first
        for i in order:
            if quota.sum() < size and quota[i] < counts[i]:
                quota[i] += 1
    while quota.sum() > size:  # the minimum of one took more: from the largest classes
        quota[int(np.argmax(quota))] -= 1
    rng = np.random.default_rng(seed)
    picked = []
    for name, k in zip(names, quota):
        where = np.flatnonzero(labels.astype(str) == name)
        picked += rng.choice(where, size=int(k), replace=False).tolist()
    chosen = rows.take(pa.array(sorted(picked), pa.int64()))
    chosen = chosen.take(pc.sort_indices(chosen, [("image_id", "ascending")]))
    return chosen.append_column("priority", pa.array(np.zeros(chosen.num_rows), pa.float64()))


def commit_gold(sink: Sink, size: int, seed: int = 0, document_root: Optional[str] = None,
                exclude: Optional[list[str]] = None) -> dict[str, Any]:
    """Draw the sink's gold set once: ``size`` images stratified by the model's label among the
    images no reviewer has seen (nor ``exclude`` names: the uris a labels table trained models on,
    full or relative to the archive, matched as the uri's end), committed as a review batch
    (reviewed like any other) whose answers judge models (``imgclf model promote``) and are never
    trained on."""
    def pick() -> tuple[pa.Table, dict[str, Any]]:
        found = gold_batch(sink)
        if found:
            raise UserError(f"{sink.uri}: the gold set is drawn already ({found['batch_id']}, {found['images']} "
                            "images); a gold set is drawn once, so that every judgement uses the same images")
        rows, facts = candidates(sink)
        if exclude:
            ends = tuple(e if "://" in e else "/" + e.lstrip("/") for e in exclude)
            rows = rows.filter(pa.array([not u.endswith(ends) and u not in exclude
                                         for u in rows.column("uri").to_pylist()], pa.bool_()))
        return stratified(rows, size, seed), facts

    return _commit(sink, pick, {"strategy": "gold", "gold": True, "measure": None, "seed": seed, "budget": size},
                   document_root)


def _commit(sink: Sink, pick: Callable[[], tuple[pa.Table, dict[str, Any]]], facts: dict[str, Any],
            document_root: Optional[str]) -> dict[str, Any]:
    """The batch ``pick`` selects, written under the sink's reviews lock, its record last."""
    from imgclf_ray.io.lock import RunLock

    with RunLock.on(sink, LOCK_NAME, uuid.uuid4().hex[:12], name=LOCK_NAME):
        rows, night = pick()
        if not rows.num_rows:
            raise UserError(f"{sink.uri}: no image left to review (every labelled image is reviewed or "
                            "in an earlier batch)")
        now = datetime.now(timezone.utc)
        batch_id = f"{facts['strategy']}-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        task, labels = night.get("task") or "multiclass", night.get("labels") or []
        files = {"tasks.json": tasks_json(rows, task, batch_id, document_root),  # refusals first
                 "labeling-config.xml": labeling_config(task, labels).encode(), "batch.csv": batch_csv(rows, batch_id)}
        folder = join(sink.root, BATCHES_DIR, batch_id)
        sink.fs.makedirs(folder, exist_ok=True)
        for name, blob in files.items():
            put_atomic(sink.fs, join(folder, name), blob)
        faults.point("review_batch")
        record = {"batch_id": batch_id, "created_at": now.isoformat(), **facts,
                  "images": rows.num_rows, "task": task, "labels": labels,
                  "model_ids": sorted({m for m in rows.column("model_id").to_pylist() if m}),
                  "image_ids": rows.column("image_id").to_pylist(), "uris": rows.column("uri").to_pylist(),
                  "uri": join(sink.uri, BATCHES_DIR, batch_id)}
        put_atomic(sink.fs, join(folder, BATCH_FILE), json.dumps(record, indent=1).encode())  # last: the commit
    return record
