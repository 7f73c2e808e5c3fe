"""`imgclf model promote`: move the ``champion`` alias to a registered version only on evidence.

The evidence is the sink's gold set (``imgclf review gold``: drawn once, reviewed like any batch,
never trained on): candidate and champion label its images exactly as a night would (the job's
decoding and the run's own stages, in this process, into a scratch sink), each image's answer is
the reviewer's, and a paired bootstrap of (candidate - champion) on the chosen metric gives a 95 %
interval: the alias moves only when its lower bound is above -margin. With no champion yet, the
candidate's own lower bound must reach ``floor``. The evidence is printed and recorded as tags of
the candidate's version, whatever the decision; the alias moves last.
"""

from __future__ import annotations

import getpass
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgclf_ray.errors import UserError
from imgclf_ray.io.reviews import gold_batch
from imgclf_ray.io.sink import Sink
from imgclf_ray.review.labels import current_labels

MIN_GOLD = 30  # answered gold images below which no judgement is made


def _accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    return float((truth == pred).mean()) if len(truth) else 0.0


def _macro_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's f1_score(average="macro") over the classes either side names (an image the
    model could not label, "", is wrong for its true class, not a class of its own)."""
    classes = np.setdiff1d(np.union1d(truth, pred), [""])
    f1 = []
    for c in classes:
        tp = float(((pred == c) & (truth == c)).sum())
        fp, fn = float(((pred == c) & (truth != c)).sum()), float(((pred != c) & (truth == c)).sum())
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1)) if f1 else 0.0


def _balanced_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's balanced_accuracy_score: the mean recall of the true classes."""
    classes = np.unique(truth)
    return float(np.mean([(pred[truth == c] == c).mean() for c in classes])) if len(classes) else 0.0


# One table: a metric the gate can use is a line here (the value of one sample of answers).
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy, "macro_f1": _macro_f1, "balanced_accuracy": _balanced_accuracy,
}


def paired_bootstrap(truth: np.ndarray, a: np.ndarray, b: Optional[np.ndarray], metric: str, resamples: int,
                     seed: int) -> np.ndarray:
    """``metric(a) - metric(b)`` (or ``metric(a)`` with no ``b``) on ``resamples`` samples of the
    images drawn with replacement, the same images for both models in each sample."""
    fn = METRICS[metric]
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for i in range(resamples):
        idx = rng.integers(0, len(truth), len(truth))
        out[i] = fn(truth[idx], a[idx]) - (fn(truth[idx], b[idx]) if b is not None else 0.0)
    return out


def _answer(label: Optional[str], labels: Optional[list[str]]) -> str:
    """One comparable answer: the class, or a multilabel answer's labels sorted and joined by '|'."""
    if labels and len(labels) > 1:
        return "|".join(sorted(labels))
    return labels[0] if labels else (label or "")


@dataclass(frozen=True)
class Gold:
    """The gold set's answered images: their manifest (uri, size, etag) and the reviewers' answers."""

    batch_id: str
    drawn: int
    manifest: pa.Table
    truth: np.ndarray  # one answer per manifest row (a multilabel answer: its labels joined by '|')


def gold_answers(sink: Sink) -> Gold:
    """The gold set's images a reviewer answered (the answer that applies to the content the night
    labelled); UserError when the sink has no gold set or too few answers."""
    batch = gold_batch(sink)
    if batch is None:
        raise UserError(f"{sink.uri}: no gold set; draw one with imgclf review gold {sink.uri} --size N, have it "
                        "reviewed and ingested, then promote")
    current = current_labels(sink)
    ids = pa.array(batch["image_ids"], pa.string())
    rows = current.filter(pc.and_(pc.is_in(current.column("image_id"), ids),
                                  pc.equal(current.column("label_source"), "human")))
    if rows.num_rows < MIN_GOLD:
        raise UserError(f"{sink.uri}: {rows.num_rows} of the gold set's {batch['images']} images have a reviewer's "
                        f"answer ({batch['batch_id']}); a judgement needs at least {MIN_GOLD}: review the gold "
                        "batch and ingest the answers first")
    rows = rows.take(pc.sort_indices(rows, [("image_id", "ascending")]))
    truth = [_answer(lab, ls) for lab, ls in zip(rows.column("label").to_pylist(), rows.column("labels").to_pylist())]
    manifest = pa.table({"uri": rows.column("uri"), "size": pa.nulls(rows.num_rows, pa.int64()),
                         "etag": rows.column("etag")})
    return Gold(batch["batch_id"], batch["images"], manifest, np.asarray(truth, dtype=object))


def answers_of(model_uri: str, gold: Gold, job: Any, run_id: str, scratch: str) -> np.ndarray:
    """The model's answer for each gold image, labelled as a night labels: the job's source,
    decoding and storage, run.executor local, into a scratch sink; an image it could not label
    answers "" (wrong)."""
    from imgclf_ray.runner.job import execute

    spec = job.model_copy(update={
        "model": job.model.model_copy(update={"uri": model_uri}),
        "sink": job.sink.model_copy(update={"uri": scratch, "run_id": run_id, "format": "parquet"}),
        "run": job.run.model_copy(update={"executor": "local"}),
        "incremental": None, "curate": None, "cluster": None, "example": None})
    execute(spec, gold.manifest, run_id)
    out = Sink(scratch)
    rows = out.run(out.committed_runs(run_id)[run_id]).rows(
        lambda name: name in ("uri", "status", "label", "labels"))
    by_uri = {r["uri"]: _answer(r["label"], r["labels"]) if r["status"] == "ok" else "" for r in rows.to_pylist()}
    return np.asarray([by_uri.get(u, "") for u in gold.manifest.column("uri").to_pylist()], dtype=object)


@dataclass
class Judgement:
    evidence: dict[str, Any]
    promote: bool

    def lines(self) -> list[str]:
        e = self.evidence
        if "metric" not in e:  # an interrupted promotion completed
            return [f"promoted: {e['name']} version {e['candidate_version']}: {e['reason']}"]
        metric = e["metric"]
        out = [f"gold set {e['gold_batch']}: {e['gold_answered']} answered images"]
        out.append(f"  candidate {e['name']} version {e['candidate_version']}: {metric} {e['candidate']:.4f}")
        if e.get("champion_version"):
            out.append(f"  champion  {e['name']} version {e['champion_version']}: {metric} {e['champion']:.4f}"
                       + ("  (--floor applies to a first champion only)" if e.get("floor") is not None else ""))
            out.append(f"  candidate - champion: {e['difference']:+.4f}, 95 % interval [{e['ci_low']:+.4f}, "
                       f"{e['ci_high']:+.4f}] (paired bootstrap, {e['resamples']} resamples); needs the lower "
                       f"bound above {-e['margin'] or 0.0:+.4f}")
        else:
            how = e["interval"] + (f", {e['resamples']} resamples" if "bootstrap" in e["interval"] else "")
            out.append(f"  no champion yet: the candidate's 95 % interval [{e['ci_low']:.4f}, {e['ci_high']:.4f}] "
                       f"({how}); needs the lower bound at least {e['floor']}")
        out.append(f"{'promoted' if self.promote else 'not promoted'}: {e['reason']}")
        return out


@dataclass(frozen=True)
class Gate:
    """How a candidate is judged: the metric, the margin against the champion, the floor of a
    first champion, the bootstrap's resamples and seed."""

    metric: str = "accuracy"
    margin: float = 0.01
    floor: Optional[float] = None
    resamples: int = 2000
    seed: int = 0


def judge(truth: np.ndarray, candidate: np.ndarray, champion: Optional[np.ndarray], gate: Gate
          ) -> tuple[bool, dict[str, Any]]:
    """The decision and its figures (see the module's doc)."""
    metric, margin, floor, resamples, seed = gate.metric, gate.margin, gate.floor, gate.resamples, gate.seed
    fn = METRICS[metric]
    facts: dict[str, Any] = {"metric": metric, "candidate": round(fn(truth, candidate), 6), "margin": margin,
                             "floor": floor, "resamples": resamples, "seed": seed}
    if champion is None:
        if metric == "accuracy":  # exact: Clopper-Pearson (a bootstrap of 10 right answers says [1, 1])
            from scipy.stats import beta

            k, n = int((truth == candidate).sum()), len(truth)
            low = float(beta.ppf(0.025, k, n - k + 1)) if k else 0.0
            high = float(beta.ppf(0.975, k + 1, n - k)) if k < n else 1.0
            facts["interval"] = "Clopper-Pearson"
        else:
            low, high = np.percentile(paired_bootstrap(truth, candidate, None, metric, resamples, seed), [2.5, 97.5])
            facts["interval"] = "percentile bootstrap"
        facts.update(ci_low=round(float(low), 6), ci_high=round(float(high), 6))
        ok = bool(low >= floor)
        facts["reason"] = (f"the lower bound {low:.4f} {'reaches' if ok else 'is below'} the floor {floor}")
        return ok, facts
    diffs = paired_bootstrap(truth, candidate, champion, metric, resamples, seed)
    low, high = np.percentile(diffs, [2.5, 97.5])
    facts.update(champion=round(fn(truth, champion), 6), difference=round(fn(truth, candidate) - fn(truth, champion), 6),
                 ci_low=round(float(low), 6), ci_high=round(float(high), 6))
    ok = bool(low > -margin)
    bar = -margin or 0.0  # not "-0.0000"
    facts["reason"] = (f"lower bound {low:+.4f} > {bar:+.4f}: the candidate is better than the champion, or "
                       f"worse by less than the margin {margin}" if ok else
                       f"lower bound {low:+.4f} <= {bar:+.4f}: the gold set does not show the candidate "
                       + ("better than the champion (margin 0)" if not margin else
                          f"worse than the champion by less than the margin {margin}"))
    return ok, facts


def promote(name: str, version: str, sink: Sink, job: Any, tracking: str, gate: Gate = Gate()) -> Judgement:
    """Judge version ``version`` of registered model ``name`` against its champion on ``sink``'s
    gold set (labelled as ``job`` labels, a JobSpec), record the evidence, move the alias if it wins."""
    from imgclf_ray.models import mlflow_registry as registry

    metric, floor = gate.metric, gate.floor
    if metric not in METRICS:
        raise UserError(f"--metric {metric}: unknown; known: {', '.join(sorted(METRICS))}")
    candidate = registry.resolve(f"models:/{name}/{version}", tracking, job.storage)
    current = registry.champion_version(tracking, name)
    if current == candidate.version:
        if registry.decision_of(tracking, name, candidate.version) == "promoting":  # killed after the alias moved
            registry.complete(tracking, name, candidate.version)
            return Judgement({"name": name, "candidate_version": candidate.version, "decision": "promoted",
                              "reason": "an interrupted promotion had moved the alias; its record now says so"}, True)
        raise UserError(f"{name} version {version} is the champion already")
    # The champion's artifact is checked as the candidate's is.
    champion = None if current is None else registry.resolve(f"models:/{name}/{current}", tracking, job.storage)
    if champion is not None and champion.model_id == candidate.model_id:
        raise UserError(f"{name} version {version} is the champion's model ({candidate.model_id}, version "
                        f"{champion.version}): nothing to judge")
    if champion is None and floor is None:
        raise UserError(f"{name} has no champion yet: state the least gold-set {metric} a first champion needs "
                        "(--floor)")
    gold = gold_answers(sink)
    with tempfile.TemporaryDirectory(prefix="imgclf-gold-") as scratch:
        ours = answers_of(candidate.source, gold, job, "candidate", scratch)
        theirs = answers_of(champion.source, gold, job, "champion", scratch) if champion else None
    ok, facts = judge(gold.truth, ours, theirs, gate)
    evidence = {"name": name, "candidate_version": candidate.version, "candidate_model_id": candidate.model_id,
                "champion_version": champion.version if champion else None,
                "champion_model_id": champion.model_id if champion else None, "gold_batch": gold.batch_id,
                "gold_answered": len(gold.truth), "sink": sink.uri, **facts, "decision": "promoted" if ok else
                "refused", "by": getpass.getuser(), "at": datetime.now(timezone.utc).isoformat()}
    registry.record_decision(tracking, name, candidate.version, evidence, ok)
    return Judgement(evidence, ok)
