"""`imgclf review select`: the images a human should review next, as a review batch.

A batch is a folder ``<sink>/_reviews/batches/<batch_id>/``: ``tasks.json`` (Label Studio tasks,
the model's answer and score as pre-annotations), ``labeling-config.xml`` (the labeling interface
to create the Label Studio project with: Choices, ``choice="multiple"`` for multilabel, a
Taxonomy of the tree for hierarchical), ``batch.csv`` (the same images for a reviewer without Label
Studio) and, written last, ``_batch.json`` (the record: strategy, its parameters, seed, model ids,
labels, the images).

The selection runs as the engine's tasks over the archive's current labels
(``imgclf_ray.review.labels``): each partition of the archive by image id returns its best
candidates, and only those reach this process (``--pool`` x budget rows per partition for
``diverse``, budget for the others, the gold set's size per label).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Optional
from xml.sax.saxutils import quoteattr

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgclf_ray import faults
from imgclf_ray.errors import UserError
from imgclf_ray.io.cells import cell
from imgclf_ray.io.sink import Sink
from imgclf_ray.io.sink.layout import put_atomic
from imgclf_ray.io.storage import join
from imgclf_ray.io.reviews import BATCH_FILE, BATCHES_DIR, LOCK_NAME, batch_records, gold_batch, reviews
from imgclf_ray.review.labels import latest_night

FROM_NAME, TO_NAME = "label", "image"
NOT_QUALITY_FLAGS = ("is_label_issue", "is_duplicate", "is_near_duplicate")  # the labeling config's control and image names


# -- strategies: how uncertain each candidate is (higher: reviewed first) --------------------------

@dataclass(frozen=True)
class Query:
    """What each partition's task needs to rank its candidates (``top_part``)."""

    strategy: str
    measure: str = "margin"
    seed: int = 0
    keep: int = 0  # the best rows each partition returns (the gold set: per label)
    task: str = "multiclass"
    thresholds: tuple[float, ...] = ()  # multilabel: the night's threshold of each class score
    include_flagged: bool = False
    exclude_uris: tuple[str, ...] = ()  # the gold set: uris a labels table trained on (their ends)
    gold: bool = False


def _matrix(scores: list, fill: float = 0.0) -> np.ndarray:
    """Score vectors as rows of one matrix, shorter ones (another night's model) padded with ``fill``."""
    width = max((len(s) for s in scores if s is not None), default=0)
    out = np.full((len(scores), width), fill, dtype=np.float64)
    for i, s in enumerate(scores):
        if s is not None:
            out[i, :len(s)] = s
    return out


def unit(ids: list[str], seed: int) -> np.ndarray:
    """A seeded uniform number in [0, 1) per image id, the same in every process and partition."""
    key = str(seed).encode() + b"\0"
    return np.array([int.from_bytes(hashlib.blake2b(key + i.encode(), digest_size=8).digest(), "big") / 2.0 ** 64
                     for i in ids], dtype=np.float64)


def uncertainty(rows: pa.Table, q: Query) -> np.ndarray:
    """How uncertain the model is about each row, higher first. multiclass and binary: ``margin``
    (1 - (p1 - p2)), ``entropy`` (of the class scores) or ``least_confidence`` (1 - p1);
    multilabel: the class score nearest its threshold (1 - |p - t| / max(t, 1 - t)); hierarchical:
    the least confident decision on the image's path (1 - its score; the deepest of equals is
    the node shown to the reviewer)."""
    if q.task == "hierarchical":
        return np.array([1.0 - min(s) if s else 0.0 for s in rows.column("path_scores").to_pylist()])
    if q.task == "multilabel":  # each row on its own scores (NaN beyond them), whatever its partition holds
        p = _matrix(rows.column("class_scores").to_pylist(), np.nan)
        if not p.shape[1]:
            return np.zeros(len(p))
        t = np.full(p.shape[1], 0.5)
        t[:min(len(q.thresholds), p.shape[1])] = q.thresholds[:p.shape[1]]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a row of no scores: all NaN
            near = np.nanmin(np.abs(p - t) / np.maximum(t, 1.0 - t), axis=1)
        return np.where(np.isnan(near), 0.0, 1.0 - near)
    p = _matrix(rows.column("class_scores").to_pylist())
    top = -np.sort(-p, axis=1)
    if q.measure == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    if q.measure == "least_confidence":
        return 1.0 - top[:, 0]
    second = top[:, 1] if top.shape[1] > 1 else np.zeros(len(top))
    return 1.0 - (top[:, 0] - second)


def random_order(rows: pa.Table, q: Query) -> np.ndarray:
    """The baseline: a seeded random order (a number per image id, so that it does not depend on
    how the archive is partitioned)."""
    return unit(rows.column("image_id").to_pylist(), q.seed)


def label_issue_order(rows: pa.Table, q: Query) -> np.ndarray:
    """Where a label exists already (source.labels: the folder's, a table's), the least likely to
    be right first: 1 - ``label_quality`` (cleanlab's self-confidence, curate.checks: [label_issue]);
    images without one are not candidates."""
    if "label_quality" not in rows.column_names:
        return np.full(rows.num_rows, -np.inf)
    quality = rows.column("label_quality").to_numpy(zero_copy_only=False).astype(np.float64)
    return np.where(np.isnan(quality), -np.inf, 1.0 - quality)


def disagreement(rows: pa.Table, q: Query) -> np.ndarray:
    """Where two nights (two models) disagree on an image's label: those first, each group by its
    margin uncertainty; an image one night labelled only comes after."""
    previous = rows.column("previous_label").to_pylist()
    differ = np.array([p is not None and p != m for p, m in zip(previous, rows.column("model_label").to_pylist())])
    return differ * 2.0 + uncertainty(rows, Query("uncertainty", task=q.task, thresholds=q.thresholds))


def _features(rows: pa.Table) -> np.ndarray:
    """What diversity is measured on: the embedding when every row has one (cluster jobs store
    it; ``--spread-on hog`` computes one), else the model's own view of the images: its class
    scores, or a hierarchical model's path scores."""
    if "embedding" in rows.column_names and rows.column("embedding").null_count == 0 and rows.num_rows:
        return np.asarray(rows.column("embedding").to_pylist(), dtype=np.float64)
    scores = rows.column("class_scores").to_pylist() if "class_scores" in rows.column_names else []
    if not any(s for s in scores) and "path_scores" in rows.column_names:
        scores = rows.column("path_scores").to_pylist()
    return _matrix(scores or [None] * rows.num_rows)


def k_center(features: np.ndarray, budget: int) -> list[int]:
    """Greedy k-center (the core-set selection): the first row, then each time the row farthest
    from every row chosen (Euclidean, on L2-normalised features; ties to the earlier row); once
    every row left is as near as can be (equal features), the next rows in order. No row twice."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    chosen = [0]
    nearest = np.linalg.norm(x - x[0], axis=1)
    nearest[0] = -1.0
    while len(chosen) < min(budget, len(x)):
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[nxt], axis=1))
        nearest[chosen] = -1.0
    return chosen


def clusters(features: np.ndarray, budget: int, seed: int = 0) -> list[int]:
    """Cluster-stratified: k-means (``budget`` clusters, L2-normalised features, seeded) and from
    each cluster its first row (the rows come most uncertain first)."""
    from sklearn.cluster import KMeans

    if not features.shape[1]:  # nothing to tell the images apart: the most uncertain
        return list(range(budget))
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    assigned = KMeans(n_clusters=budget, n_init=4, random_state=seed).fit_predict(x)
    first: dict[int, int] = {}
    for i, c in enumerate(assigned.tolist()):
        first.setdefault(c, i)
    chosen = sorted(first.values())
    rest = [i for i in range(len(x)) if i not in first.values()]
    return sorted(chosen + rest[:budget - len(chosen)])  # equal features make fewer clusters: the next ones


def diverse_pick(rows: pa.Table, order: np.ndarray, budget: int, pool: int, spread: str = "k_center",
                 seed: int = 0) -> np.ndarray:
    """From the ``pool`` x budget most uncertain rows, one per (near-)duplicate group (the run's
    duplicate and near-duplicate groups, else equal perceptual hashes), then spread on the
    features by k-center greedy or one per k-means cluster (``spread``): a batch that covers the
    uncertain region instead of one corner of it."""
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
    features = _features(rows.take(pa.array(kept)))
    return kept[clusters(features, budget, seed) if spread == "clusters" else k_center(features, budget)]


@dataclass(frozen=True)
class Strategy:
    priority: Callable[[pa.Table, Query], np.ndarray]  # higher: reviewed first; -inf: not a candidate
    measures: tuple[str, ...] = ()
    diverse: bool = False  # the batch is drawn from the top of the order by diverse_pick
    needs: Optional[tuple[str, str]] = None  # a column some candidate must have, and the refusal without


# One table: a new strategy is a line here.
STRATEGIES = {
    "uncertainty": Strategy(uncertainty, ("margin", "entropy", "least_confidence")),
    "diverse": Strategy(uncertainty, ("margin", "entropy", "least_confidence"), diverse=True),
    "label_issues": Strategy(label_issue_order, needs=(
        "label_quality", "no night of this sink scored its labels; run the job with source.labels and "
        "curate.checks: [label_issue]")),
    "disagreement": Strategy(disagreement, needs=(
        "previous_label", "no image was labelled by two nights yet (a night with a new model labels the "
        "archive again: incremental.on_new_model: relabel, the default)")),
    "random": Strategy(random_order),
}


# -- selection: a task per partition of the archive's current labels, merged here -----------------

def candidate_rows(current: pa.Table, q: Query, excluded: set, ends: tuple[str, ...] = ()) -> pa.Table:
    """The images of one partition a batch may take: labelled by the model (status ok), with no
    human label that applies, in no earlier batch nor reviewed (``excluded``); those an
    image-quality check flagged (``is_*`` true: blurry, dark ..., not duplicates or label issues)
    left out unless asked; the gold set: none whose uri is or ends as one of ``ends``."""
    if not current.num_rows:
        return current
    rows = current.filter(pc.and_(pc.equal(current.column("status"), "ok"),
                                  pc.equal(current.column("label_source"), "model")))
    mask = np.array([i not in excluded for i in rows.column("image_id").to_pylist()], dtype=bool)
    if not q.include_flagged:  # a label issue is what a review fixes, and of a duplicate group the
        # diverse strategy takes one image (excluding them would leave all out)
        for c in [c for c in rows.column_names if c.startswith("is_") and c not in NOT_QUALITY_FLAGS]:
            mask &= ~np.asarray(rows.column(c).fill_null(False).to_pylist(), dtype=bool)
    if ends:
        mask &= np.array([not u.endswith(ends) for u in rows.column("uri").to_pylist()], dtype=bool)
    return rows.filter(pa.array(mask, pa.bool_()))


def ranked(ids: list[str], priority: np.ndarray) -> np.ndarray:
    """Row indices by priority, highest first, ties by image id; -inf (not a candidate) left out."""
    order = np.lexsort((np.asarray(ids, dtype=object), -priority))
    return order[np.isfinite(priority[order])]


def top_part(q: Query, left_out: tuple[set, tuple[str, ...]], current: pa.Table, other: Optional[pa.Table] = None
             ) -> tuple[pa.Table, dict[str, Any]]:
    """One partition's best candidates (a task): the ``q.keep`` first by the strategy's priority
    (a ``priority`` column), or for the gold set the ``q.keep`` of each model label with the
    smallest seeded number; and counts the driver merges (candidates, per label, with the
    strategy's column). ``other``: another sink's latest labels of this partition's images, which
    take the place of ``previous_label`` (what ``disagreement`` compares with)."""
    if other is not None and current.num_rows:
        theirs = dict(zip(other.column("image_id").to_pylist(), other.column("label").to_pylist())) \
            if other.num_rows else {}
        compared = pa.array([theirs.get(i) for i in current.column("image_id").to_pylist()], pa.string())
        current = _replace(current, "previous_label", compared)
    rows = candidate_rows(current, q, *left_out)
    if not rows.num_rows:
        return rows, {"candidates": 0, "labels": {}, "having": 0}
    labels = rows.column("model_label").to_pylist()
    entry = STRATEGIES.get(q.strategy)
    need = entry.needs[0] if entry and entry.needs else None
    having = rows.num_rows if need is None else (
        rows.num_rows - rows.column(need).null_count if need in rows.column_names else 0)
    stats = {"candidates": rows.num_rows, "labels": dict(Counter(labels)), "having": having}
    ids = rows.column("image_id").to_pylist()
    if q.gold:
        priority = -unit(ids, q.seed)  # the smallest numbers first, within each label
        keep = _first_per_label(labels, ids, priority, q.keep)
    else:
        priority = entry.priority(rows, q)
        keep = ranked(ids, priority)[:q.keep]
    chosen = rows.take(pa.array(keep, pa.int64()))
    return chosen.append_column("priority", pa.array(priority[keep], pa.float64())), stats


def _first_per_label(labels: list, ids: list[str], priority: np.ndarray, k: int) -> list[int]:
    """The ``k`` first rows of each label by ``priority`` (ties by id)."""
    out: list[int] = []
    by_label: dict = {}
    for j in ranked(ids, priority):
        if len(by_label.setdefault(labels[j], [])) < k:
            by_label[labels[j]].append(int(j))
    for picked in by_label.values():
        out += picked
    return sorted(out)


def _merged(sink: Sink, q: Query, tasks: Any, excluded: set, runs: list[dict], against: Optional[Sink] = None
            ) -> tuple[pa.Table, dict[str, Any]]:
    """Every partition's ``top_part``, concatenated, and their counts added up (``against``:
    another sink whose latest labels of the same images, partitioned alike, are compared)."""
    from imgclf_ray.review.labels import concat, current_label_parts, partitions

    if against is None:
        parts = current_label_parts(sink, tasks, runs)
        others: list = [None] * len(parts)
    else:
        theirs = against.list_runs()
        p = max(partitions(runs, tasks), partitions(theirs, tasks))
        parts = current_label_parts(sink, tasks, runs, p=p)
        others = current_label_parts(against, tasks, theirs, ["image_id", "label"], p=p)
    ends = tuple(u if "://" in u else "/" + u.lstrip("/") for u in q.exclude_uris)
    ex = tasks.put((excluded, ends + tuple(u for u in q.exclude_uris if "://" in u)))  # once, for every task
    q = replace(q, exclude_uris=())
    done = tasks.get([tasks.submit(top_part, q, ex, part, other) for part, other in zip(parts, others)])
    labels: Counter = Counter()
    for _, stats in done:
        labels.update(stats["labels"])
    stats = {"candidates": sum(s["candidates"] for _, s in done), "having": sum(s["having"] for _, s in done),
             "labels": dict(labels)}
    rows = concat([t for t, _ in done])
    return rows, stats


def _query(sink: Sink, runs: list[dict], **kw: Any) -> tuple[Query, dict[str, Any], set]:
    """The query of a selection from the sink's latest night, and the images it must leave out
    (in an earlier batch, or reviewed)."""
    facts = latest_night(sink, runs)
    task = facts.get("task") or "multiclass"
    if task == "hierarchical" and not facts.get("label_tree"):
        raise UserError(f"{sink.uri}: its latest night's manifest lists no label tree (an older imgclf wrote it); "
                        "run the night again to review a hierarchical model's labels")
    thresholds = facts.get("thresholds") or {}
    q = Query(task=task, thresholds=tuple(float(thresholds.get(label, 0.5)) for label in facts.get("labels") or []),
              **kw)
    taken = {i for b in batch_records(sink) for i in b.get("image_ids", [])}
    return q, facts, taken | set(reviews(sink).column("image_id").to_pylist())


@dataclass(frozen=True)
class Ask:
    """What a review batch asks for (``imgclf review select``'s options)."""

    strategy: str = "uncertainty"
    measure: str = "margin"
    seed: int = 0
    pool: int = 5  # diverse: the batch spreads over pool x budget most uncertain images
    spread: str = "k_center"  # diverse: k_center (greedy core set) or clusters (k-means, one per cluster)
    spread_on: str = "scores"  # diverse without a stored embedding: the model's scores, or hog (computed)
    include_flagged: bool = False  # images an image-quality check flagged are candidates too
    against: Optional[str] = None  # disagreement: another sink's labels instead of the night before's

    def facts(self) -> dict[str, Any]:
        """What the batch's record says of the ask."""
        entry = STRATEGIES.get(self.strategy)
        diverse = bool(entry and entry.diverse)
        return {"strategy": self.strategy, "measure": self.measure if entry and entry.measures else None,
                "seed": self.seed,
                **({"pool": self.pool, "spread": self.spread, "spread_on": self.spread_on} if diverse else {}),
                **({"include_flagged": True} if self.include_flagged else {}),
                **({"against": self.against} if self.against else {})}


SPREADS = ("k_center", "clusters")
SPREAD_ON = ("scores", "hog")


def _check(ask: Ask) -> Strategy:
    if ask.strategy not in STRATEGIES:
        raise UserError(f"--strategy {ask.strategy}: unknown; known: {', '.join(sorted(STRATEGIES))}")
    entry = STRATEGIES[ask.strategy]
    if entry.measures and ask.measure not in entry.measures:
        raise UserError(f"--measure {ask.measure}: {ask.strategy} takes {', '.join(entry.measures)}")
    if ask.spread not in SPREADS:
        raise UserError(f"--spread {ask.spread}: one of {', '.join(SPREADS)}")
    if ask.spread_on not in SPREAD_ON:
        raise UserError(f"--spread-on {ask.spread_on}: one of {', '.join(SPREAD_ON)}")
    if not STRATEGIES[ask.strategy].diverse and (ask.spread, ask.spread_on, ask.pool) != ("k_center", "scores", 5):
        raise UserError(f"--pool, --spread and --spread-on are for --strategy diverse, not {ask.strategy}")
    if ask.against is not None and ask.strategy != "disagreement":
        raise UserError(f"--against: compares with another sink's labels for --strategy disagreement, "
                        f"not {ask.strategy}")
    return entry


def select(sink: Sink, budget: int, ask: Ask = Ask(), tasks: Any = None) -> tuple[pa.Table, dict[str, Any]]:
    """The ``budget`` candidates the strategy puts first (ties by image id; ``diverse``: drawn from
    the ``pool`` x budget first), with a ``priority`` column, and the latest night's manifest
    facts. Each partition of the archive (``tasks``: the engine's; default in this process) returns
    its best ``pool`` x budget (``budget``) rows: with Ray's tasks, those are all this process
    receives.
    ``ask.against`` (disagreement): another sink where another model labelled the same images;
    its labels are compared instead of the night before's."""
    from imgclf_ray.review.labels import in_process

    entry = _check(ask)
    against = Sink(ask.against, sink.storage) if ask.against else None
    if against is not None and not against.list_runs():
        raise UserError(f"--against {ask.against}: no committed night there")
    runs = sink.list_runs()
    q, facts, excluded = _query(sink, runs, strategy=ask.strategy, measure=ask.measure, seed=ask.seed,
                                keep=budget * ask.pool if entry.diverse else budget,
                                include_flagged=ask.include_flagged)
    rows, stats = _merged(sink, q, tasks or in_process(), excluded, runs, against)
    if against is not None and stats["candidates"] and not stats["having"]:
        raise UserError(f"--against {against.uri}: labels none of the images this sink's nights labelled")
    if entry.needs and stats["candidates"] and not stats["having"]:
        raise UserError(f"--strategy {ask.strategy}: {entry.needs[1]}")
    if not rows.num_rows:
        return rows, facts
    order = ranked(rows.column("image_id").to_pylist(), rows.column("priority").to_numpy())
    if not entry.diverse:
        return rows.take(pa.array(order[:budget], pa.int64())), facts
    pool_rows = with_image_facts(rows.take(pa.array(order[:ask.pool * budget], pa.int64())), sink.storage,
                                 ask.spread_on == "hog")
    chosen = diverse_pick(pool_rows, np.arange(pool_rows.num_rows), budget, ask.pool, ask.spread, ask.seed)
    return pool_rows.take(pa.array(chosen, pa.int64())), facts


EMBED_SIDE = 64  # a pool's own embedding, where the nights stored none: HOG of the grey image at 64 x 64


def _stored(rows: pa.Table, columns: tuple[str, ...]) -> bool:
    return any(c in rows.column_names and rows.column(c).null_count < rows.num_rows for c in columns)


def with_image_facts(rows: pa.Table, storage: Any, embed: bool = True) -> pa.Table:
    """The diverse pool with what its spread needs, computed from these images only when the
    nights stored none: a perceptual hash (``phash``: equal hashes are one near-duplicate group)
    without stored duplicate groups or hashes, and with ``embed`` an ``embedding`` (HOG of the
    grey image at EMBED_SIDE) without a stored one. Images are read with the sink's storage
    settings and decoded with the default decode settings (a container's frames or members are
    not matched: they get neither); one that does not decode gets neither, and when any pool image
    lacks an embedding the spread is measured on the model's scores instead."""
    need_hash = not _stored(rows, ("duplicate_group", "near_duplicate_group", "phash"))
    need_embedding = embed and not _stored(rows, ("embedding",))
    if not rows.num_rows or not (need_hash or need_embedding):
        return rows
    from imgclf_ray.config.model import FeatureSpec
    from imgclf_ray.io.schema import STATUS_OK, image_id
    from imgclf_ray.models.artifact import PreprocessCard
    from imgclf_ray.stages import LoadConfig, LoadStage

    grey = PreprocessCard(resize=EMBED_SIDE, crop=EMBED_SIDE, channels=1).conditioning()
    stage = LoadStage(LoadConfig(storage, measure=True,
                                 embed=(grey, FeatureSpec(name="hog")) if need_embedding else None))
    uris = sorted(set(rows.column("uri").to_pylist()))
    out = stage({"uri": np.asarray(uris, dtype=object), "size": np.full(len(uris), None, dtype=object),
                 "etag": np.full(len(uris), None, dtype=object)})
    found = {image_id(u, int(f)): i for i, (u, f, st) in enumerate(zip(out["uri"], out["frame"], out["status"]))
             if st == STATUS_OK}
    at = [found.get(i) for i in rows.column("image_id").to_pylist()]
    if need_hash:
        rows = _replace(rows, "phash", pa.array([None if j is None else int(out["phash"][j]) for j in at], pa.int64()))
    if need_embedding:
        vectors = [None if j is None else np.asarray(out["cluster_features"][j], np.float32).tolist() for j in at]
        rows = _replace(rows, "embedding", pa.array(vectors, pa.list_(pa.float32())))
    return rows


def _replace(rows: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in rows.column_names:
        return rows.set_column(rows.column_names.index(name), name, values)
    return rows.append_column(name, values)


# -- the batch's files --------------------------------------------------------------------------

def labeling_config(task: str, labels: list[str], tree: Optional[list[list[str]]] = None) -> str:
    """The Label Studio labeling interface for the batch's tasks: Choices (one, or several for a
    multilabel model), or for a hierarchical model a Taxonomy of its tree (one leaf path)."""
    if task == "hierarchical":
        return f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n{_taxonomy(tree or [])}</View>\n'
    kind = "multiple" if task == "multilabel" else "single"
    items = "".join(f"    <Choice value={quoteattr(label)}/>\n" for label in labels)
    body = f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="{kind}" showInline="true">\n{items}  </Choices>\n'
    return f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n{body}</View>\n'


def _taxonomy(tree: list[list[str]]) -> str:
    """A Taxonomy control of nested Choice tags, one per node of the leaf paths."""
    nested: dict = {}
    for path in tree:
        node = nested
        for name in path:
            node = node.setdefault(name, {})

    def choices(node: dict, depth: int) -> str:
        pad = "  " * depth
        return "".join(f"{pad}<Choice value={quoteattr(k)}/>\n" if not v else
                       f"{pad}<Choice value={quoteattr(k)}>\n{choices(v, depth + 1)}{pad}</Choice>\n"
                       for k, v in node.items())

    return (f'  <Taxonomy name="{FROM_NAME}" toName="{TO_NAME}" leafsOnly="true" maxUsages="1" '
            f'showFullPath="true">\n{choices(nested, 2)}  </Taxonomy>\n')


def uncertain_node(path: Optional[list[str]], scores: Optional[list[float]]) -> Optional[str]:
    """The deepest node of a hierarchical answer's path whose decision is the least confident
    (``a/b``: the choice among b's siblings), what a reviewer should look at first."""
    if not path or not scores:
        return None
    low = min(scores)
    depth = max(i for i, s in enumerate(scores) if s == low)
    return "/".join(path[:depth + 1])


def _prediction(row: dict, task: str) -> dict:
    if task == "hierarchical":
        return {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "taxonomy",
                "value": {"taxonomy": [list(row.get("model_label_path") or [])]}}
    return {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
            "value": {"choices": list(row.get("model_labels") or [row["model_label"]])}}


def tasks_json(rows: pa.Table, task: str, batch_id: str, document_root: Optional[str]) -> bytes:
    """Label Studio's import: one task per image, the model's answer as a prediction."""
    from imgclf_ray.report.export import image_url

    out = []
    for row in rows.to_pylist():
        data = {"image": image_url(row["uri"], document_root), "image_id": row["image_id"], "uri": row["uri"],
                "etag": row["etag"], "batch_id": batch_id, "model_label": row["model_label"],
                "model_score": row["score"]}
        if task == "hierarchical":
            data["uncertain_node"] = uncertain_node(row.get("model_label_path"), row.get("path_scores"))
        out.append({"data": data, "predictions": [{"model_version": row["model_id"] or "imgclf", "score": row["score"],
                                                   "result": [_prediction(row, task)]}]})
    return json.dumps(out, indent=1).encode()


def batch_csv(rows: pa.Table, batch_id: str) -> bytes:
    """The batch for a reviewer without Label Studio: fill ``label``, then ingest the file (text a
    spreadsheet would take for a formula gets a leading ``'``: ``io.cells.cell``)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["image_id", "uri", "etag", "batch_id", "model_label", "model_score", "priority", "label"])
    for r in rows.to_pylist():
        writer.writerow([cell(v) for v in (r["image_id"], r["uri"], r["etag"], batch_id, r["model_label"], r["score"],
                                           r["priority"], "")])
    return out.getvalue().encode()


def commit_batch(sink: Sink, budget: int, ask: Ask = Ask(), document_root: Optional[str] = None,
                 tasks: Any = None) -> dict[str, Any]:
    """Select (as ``select``) and write a review batch under the sink's reviews lock; returns its
    record."""
    _check(ask)
    return _commit(sink, lambda: select(sink, budget, ask, tasks), {**ask.facts(), "budget": budget}, document_root)


def quotas(counts: dict[str, int], size: int) -> dict[str, int]:
    """How many of each label a stratified draw of ``size`` takes: in proportion to its count
    (largest remainders; every label present gets one when ``size`` allows)."""
    names = sorted(counts)
    n = np.array([counts[k] for k in names])
    size = min(size, int(n.sum()))
    share = n / max(n.sum(), 1) * size
    quota = np.floor(share).astype(int)
    if size >= len(names):
        quota = np.maximum(quota, 1)
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    while quota.sum() < size:  # the largest remainders first
        for i in order:
            if quota.sum() < size and quota[i] < n[i]:
                quota[i] += 1
    while quota.sum() > size:  # the minimum of one took more: from the largest classes
        quota[int(np.argmax(quota))] -= 1
    return dict(zip(names, quota.tolist()))


def stratified(rows: pa.Table, counts: dict[str, int], size: int) -> pa.Table:
    """``size`` of the candidates drawn at random within each model label (``rows``: each
    partition's first of each label by a seeded number per image, ``priority``; ``counts``: every
    candidate's label), in image id order."""
    labels = rows.column("model_label").to_pylist()
    keep = _first_per_label(labels, rows.column("image_id").to_pylist(), rows.column("priority").to_numpy(), size)
    quota = quotas(counts, size)
    taken: Counter = Counter()
    picked = []
    for j in sorted(keep, key=lambda j: -rows.column("priority")[j].as_py()):
        if taken[labels[j]] < quota.get(labels[j], 0):
            taken[labels[j]] += 1
            picked.append(j)
    chosen = rows.take(pa.array(sorted(picked), pa.int64()))
    chosen = chosen.take(pc.sort_indices(chosen, [("image_id", "ascending")]))
    return chosen.set_column(chosen.column_names.index("priority"), "priority",
                             pa.array(np.zeros(chosen.num_rows), pa.float64()))


def commit_gold(sink: Sink, size: int, seed: int = 0, document_root: Optional[str] = None,
                exclude: Optional[list[str]] = None, tasks: Any = None) -> dict[str, Any]:
    """Draw the sink's gold set once: ``size`` images stratified by the model's label among the
    images no reviewer has seen (nor ``exclude`` names: the uris a labels table trained models on,
    full or relative to the archive, matched as the uri's end), committed as a review batch
    (reviewed like any other) whose answers judge models (``imgclf model promote``) and are never
    trained on. ``tasks``: the engine's, as ``select``'s."""
    from imgclf_ray.review.labels import in_process

    def pick() -> tuple[pa.Table, dict[str, Any]]:
        found = gold_batch(sink)
        if found:
            raise UserError(f"{sink.uri}: the gold set is drawn already ({found['batch_id']}, {found['images']} "
                            "images); a gold set is drawn once, so that every judgement uses the same images")
        runs = sink.list_runs()
        q, facts, excluded = _query(sink, runs, strategy="gold", seed=seed, keep=size, gold=True,
                                    exclude_uris=tuple(exclude or ()))
        rows, stats = _merged(sink, q, tasks or in_process(), excluded, runs)
        return (stratified(rows, stats["labels"], size) if rows.num_rows else rows), facts

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
                 "labeling-config.xml": labeling_config(task, labels, night.get("label_tree")).encode(), "batch.csv": batch_csv(rows, batch_id)}
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
