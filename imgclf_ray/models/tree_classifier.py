"""The classifier of a hierarchical artifact: every node's classifier loaded once, rows routed down
the tree inside the predictor (the tree and its card: imgclf_ray.models.hierarchy)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from imgclf_ray.io.storage import join
from imgclf_ray.models.hierarchy import _nodes, describe_artifact, read_tree
from imgclf_ray.models.loader import load_classifier
from imgclf_ray.registry import CLASSIFIERS
from imgclf_ray.spec import StorageSpec


class HierarchicalClassifier:
    """Loads every node's classifier once; ``route`` gives each row its label path and scores."""

    def __init__(self, uri: str, storage: StorageSpec = StorageSpec(), device: str = "auto",
                 threads: Optional[int] = None, trusted: bool = False):
        from imgclf_ray.models.heads import Head

        self.info = describe_artifact(uri, storage)
        self.model_id = self.info.model_id
        tree = read_tree(uri, storage)
        self.nodes = {}
        for path, node in _nodes(tree.root):
            clf = load_classifier(join(uri, node.model), storage, device=device, threads=threads, trusted=trusted)
            head = Head(clf.card.task, clf.card.labels, clf.card.thresholds)
            self.nodes[path] = (node, clf, head)

    def route(self, inputs: np.ndarray) -> tuple[list[list[str]], list[list[float]]]:
        """Label path and per-level scores for each row; only the models a row reaches run on it."""
        n = len(inputs)
        paths: list[list[str]] = [[] for _ in range(n)]
        scores: list[list[float]] = [[] for _ in range(n)]
        pending = [((), np.arange(n))]
        while pending:
            key, rows = pending.pop()
            node, clf, head = self.nodes[key]
            decision = head.decide(clf.predict_proba(inputs[rows]))
            chosen = np.asarray(clf.card.labels, dtype=object)[decision.label]
            for i, label, score in zip(rows, chosen, decision.score):
                paths[i].append(label)
                scores[i].append(float(score))
            for label in node.children:
                subset = rows[chosen == label]
                if len(subset):
                    pending.append((key + (label,), subset))
        return paths, scores


@CLASSIFIERS.register("hierarchical")
def _load(uri: str, storage: StorageSpec, *, device: str, threads: Optional[int], trusted: bool, **_) -> HierarchicalClassifier:
    return HierarchicalClassifier(uri, storage, device=device, threads=threads, trusted=trusted)
