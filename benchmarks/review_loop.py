"""The review loop's benchmark: how many reviews each selection strategy needs, on real images with
hidden labels (docs/review-loop.md, "How much review it saves").

For each data set (scikit-learn's digits, scikit-image's texture patches, its LFW face subset),
strategy and seed: a model trained on a seeded 5 % of the archive (at least one image per class),
then rounds: the archive's current labels (a reviewer's answer where there is one, else the
model's), a batch of ``--round`` images chosen by the strategy, answered by a scripted reviewer
from the hidden true labels in Label Studio's JSON export format and read back by imgclf's own
parser (``review.ingest.parse``), and — with retraining — the model trained again on every answer
so far. It reports (a) the reviews each strategy needs before 99 % of the current labels are
right and (b) gold-set accuracy against labels spent (a stratified 10 % gold set, never selected
nor trained on).

What it runs of imgclf: the decoding and features (the trainer's ``extract_features``: the run's
own load stage), the estimator (``make_estimator``), the selection strategies and their
``diverse`` pick (``review.select``) and the export parser. What it does not run: a night per
round (each round's labels come from the model in this process, not from a committed run) —
the whole loop through the CLI is what tests/test_promote.py runs; here it is the selection that
is measured, over hundreds of rounds.

    python benchmarks/review_loop.py [--seeds 3] [--json out.json] [--plots docs/img]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# data set -> (bundled archive, features, preprocess, review round)
DATASETS = {
    "digits": ("digits", {"name": "pixels"}, {"resize": 8, "crop": 8, "channels": 1}, 30),
    # GLCM statistics (over LBP histograms the seed model is right on every patch already: nothing to review).
    "textures": ("textures", {"name": "glcm"}, {"resize": 64, "crop": 64, "channels": 1}, 6),
    "faces": ("faces", {"name": "hog", "params": {"pixels_per_cell": 8}}, {"resize": 32, "crop": 32, "channels": 1}, 6),
}
STRATEGIES = ("random", "uncertainty", "diverse")
TARGET = 0.99


def features(dataset: str, work: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features, true labels, uris) of the bundled archive, decoded and featurised by imgclf's stages."""
    from imgclf_ray.io.labels import attach_true_labels
    from imgclf_ray.io.listing import list_archive
    from imgclf_ray.spec import TrainSpec, parse_spec
    from imgclf_ray.training.bundled import ensure_example_archive
    from imgclf_ray.training.trainer import extract_features

    name, feats, prep, _ = DATASETS[dataset]
    spec = parse_spec({"name": f"bench-{dataset}", "data": {"uri": str(work / dataset), "labels": {"kind": "folder"}},
                       "model": {"output": str(work / "unused"), "preprocess": prep, "features": feats,
                                 "estimator": {"name": "logistic_regression"}}}, "<benchmark>", model=TrainSpec)
    ensure_example_archive(name, spec.data, spec.storage)
    manifest = attach_true_labels(list_archive(spec.data, spec.storage), spec.data, spec.storage)
    x, y, _, errors = extract_features(spec, manifest)
    assert not errors, f"{dataset}: {errors} images did not decode"
    return x, y, manifest.column("uri").to_pylist()


def image_facts(uris: list[str]) -> pa.Table:
    """What ``diverse`` computes for its pool when the nights stored none (``with_image_facts``,
    its default: a perceptual hash), here once for every image: each image's facts are its own,
    so a pool's are the same as computed for the pool alone."""
    from imgclf_ray.io.schema import image_id
    from imgclf_ray.review.select import with_image_facts
    from imgclf_ray.spec import StorageSpec

    return with_image_facts(pa.table({"image_id": [image_id(u) for u in uris], "uri": uris}), StorageSpec(),
                            embed=False)


def _model(x: np.ndarray, y: np.ndarray, idx: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[idx], y[idx])


def _export(ids: list[int], truth: np.ndarray) -> bytes:
    """The scripted reviewer's answers as Label Studio's JSON export."""
    return json.dumps([{"id": i, "data": {"image_id": f"img{i}"}, "annotations": [{
        "id": 10_000 + i, "completed_by": 1, "was_cancelled": False, "created_at": "2026-12-06T10:00:00Z",
        "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                    "value": {"choices": [str(truth[i])]}}]}]} for i in ids]).encode()


def _pick(strategy: str, probs: np.ndarray, classes: np.ndarray, pool_ids: np.ndarray, budget: int,
          rng: np.random.Generator, facts: pa.Table) -> list[int]:
    """imgclf's strategy over the candidates (a table as a night writes it: image_id, class_scores;
    with the hash and embedding ``diverse`` computes for its pool)."""
    from imgclf_ray.review.select import STRATEGIES as TABLE, Query, diverse_pick

    taken = pa.array(pool_ids, pa.int64())
    rows = pa.table({"image_id": [f"img{i:06d}" for i in pool_ids],
                     "class_scores": pa.array(probs[pool_ids].tolist(), pa.list_(pa.float32())),
                     "model_label": classes[probs[pool_ids].argmax(axis=1)].tolist(),
                     "phash": facts.column("phash").take(taken)})
    entry = TABLE[strategy]
    priority = entry.priority(rows, Query(strategy, seed=int(rng.integers(2 ** 31))))
    order = np.lexsort((np.asarray(rows.column("image_id").to_pylist(), dtype=object), -priority))
    chosen = diverse_pick(rows, order, budget, 5) if entry.diverse else order[:budget]
    return pool_ids[np.asarray(chosen, dtype=np.int64)].tolist()


def simulate(x: np.ndarray, y: np.ndarray, strategy: str, seed: int, budget: int, retrain: bool,
             facts: pa.Table) -> dict:
    """One loop until every image outside the gold set is reviewed: per round, labels spent, the
    share of current labels right, gold-set accuracy."""
    from imgclf_ray.review.ingest import parse
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    idx = np.arange(len(y))
    rest, gold = train_test_split(idx, test_size=0.1, stratify=y, random_state=seed)
    seed_set = set(train_test_split(rest, train_size=max(0.05 * len(y) / len(rest), len(set(y)) / len(rest)),
                                    stratify=y[rest], random_state=seed)[0].tolist())
    reviewed: dict[int, str] = {}
    labelled = sorted(seed_set)
    model = _model(x, y, np.asarray(labelled))
    curve = []
    while True:
        probs = model.predict_proba(x)
        classes = model.classes_
        current = classes[probs[rest].argmax(axis=1)].astype(object)
        for k, i in enumerate(rest):
            if i in reviewed:
                current[k] = reviewed[i]
            elif i in seed_set:
                current[k] = y[i]
        right = float((current == y[rest]).mean())
        gold_acc = float((classes[probs[gold].argmax(axis=1)] == y[gold]).mean())
        curve.append({"reviews": len(reviewed), "current_right": right, "gold_accuracy": gold_acc})
        pool = np.array([i for i in rest if i not in reviewed and i not in seed_set], dtype=np.int64)
        if not len(pool):
            break
        ids = _pick(strategy, probs, classes, pool, min(budget, len(pool)), rng, facts)
        for a in parse(_export(ids, y), "label-studio").answers:  # the reviewer's export, read by imgclf
            reviewed[int(a.image_id.removeprefix("img"))] = a.labels[0]
        if retrain:
            train = np.asarray(sorted(seed_set | set(reviewed)), dtype=np.int64)
            model = _model(x, np.asarray([reviewed.get(i, y[i]) for i in range(len(y))], dtype=object), train)
    return {"curve": curve, "archive": len(rest), "seed_labels": len(seed_set), "gold": len(gold)}


def reviews_to(curve: list[dict], target: float) -> int:
    return next(p["reviews"] for p in curve if p["current_right"] >= target)


def labels_to_gold(curve: list[dict], target: float) -> int:
    return next((p["reviews"] for p in curve if p["gold_accuracy"] >= target - 1e-9), curve[-1]["reviews"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plots", default=None, help="A folder for one PNG per data set (matplotlib).")
    ap.add_argument("--quick", action="store_true", help="One seed, 300 digits: the suite's smoke run.")
    args = ap.parse_args(argv)
    out: dict = {"target": TARGET, "datasets": {}}
    with tempfile.TemporaryDirectory() as work:
        for dataset in args.datasets:
            started = time.perf_counter()
            x, y, uris = features(dataset, Path(work))
            if args.quick:
                x, y, uris = x[::6], y[::6], uris[::6]  # every class
            facts = image_facts(uris)
            budget = DATASETS[dataset][3]
            runs = {}
            for retrain in (True, False):
                for strategy in STRATEGIES:
                    for seed in range(1 if args.quick else args.seeds):
                        runs[f"{strategy}/{'retrain' if retrain else 'fixed'}/{seed}"] = simulate(
                            x, y, strategy, seed, budget, retrain, facts)
            out["datasets"][dataset] = {"images": len(y), "round": budget, "runs": runs,
                                        "seconds": round(time.perf_counter() - started, 1)}
    table = summarise(out)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(out))
    if args.plots:
        plot(out, Path(args.plots))
    return 0


def summarise(out: dict) -> str:
    """The docs' table: median reviews to 99 % right, the best strategy's share of random's; and
    the labels the best strategy spends to reach random's final gold accuracy."""
    lines = ["| data set | loop | strategy | reviews to 99 % right (median; per seed) | share of random's | "
             "labels to random's final gold accuracy (share) |", "|---|---|---|---|---|---|"]
    for dataset, d in out["datasets"].items():
        for loop in ("retrain", "fixed"):
            per = {s: [v for k, v in d["runs"].items() if k.startswith(f"{s}/{loop}/")] for s in STRATEGIES}
            need = {s: [reviews_to(r["curve"], out["target"]) for r in runs] for s, runs in per.items()}
            base = float(np.median(need["random"]))
            final = [r["curve"][-1]["gold_accuracy"] for r in per["random"]]
            random_labels = [r["curve"][-1]["reviews"] for r in per["random"]]
            for s in STRATEGIES:
                spent = [labels_to_gold(r["curve"], f) for r, f in zip(per[s], final)]
                share = np.median(np.asarray(spent) / np.asarray(random_labels))
                gold = f"{np.median(spent):.0f} ({share:.2f})" if loop == "retrain" else "- (the model is fixed)"
                ratio = f"{np.median(need[s]) / base:.2f}" if base else "- (the seed model is 99 % right)"
                lines.append(f"| {dataset} ({d['images']}, rounds of {d['round']}) | {loop} | {s} | "
                             f"{np.median(need[s]):.0f}; {', '.join(map(str, need[s]))} | {ratio} | {gold} |")
    return "\n".join(lines)


def plot(out: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for dataset, d in out["datasets"].items():
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for s in STRATEGIES:
            runs = [v for k, v in d["runs"].items() if k.startswith(f"{s}/retrain/")]
            curve = runs[0]["curve"]
            reviews = [p["reviews"] for p in curve]
            axes[0].plot(reviews, np.median([[p["current_right"] for p in r["curve"]] for r in runs], axis=0), label=s)
            axes[1].plot(reviews, np.median([[p["gold_accuracy"] for p in r["curve"]] for r in runs], axis=0), label=s)
        axes[0].axhline(out["target"], color="grey", lw=0.8, ls="--")
        axes[0].set(xlabel="reviews", ylabel="current labels right", title=f"{dataset}: the archive's labels")
        axes[1].set(xlabel="labels spent (reviews)", ylabel="gold-set accuracy", title=f"{dataset}: the model")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(folder / f"review-loop-{dataset}.png", dpi=90)
        plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
