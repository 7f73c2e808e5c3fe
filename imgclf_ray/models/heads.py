"""Task heads: class probabilities -> the decision each task type outputs.

* multiclass: the most probable label.
* binary: the positive label (the card's second) when its probability reaches the threshold.
* multilabel: every label whose own probability reaches its threshold (independent probabilities).
Thresholds come from the model card (``thresholds``; 0.5 where absent) and can be overridden by the
job (``model.threshold`` for all, ``model.thresholds`` per label).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Decision:
    """Per row: the chosen label index, its score, and (multilabel) the indices of every chosen label."""

    label: np.ndarray
    score: np.ndarray
    chosen: Optional[list[list[int]]] = None


class Head:
    def __init__(self, task: str, labels: list[str], card_thresholds: dict[str, float],
                 threshold: Optional[float] = None, thresholds: Optional[dict[str, float]] = None):
        unknown = sorted((set(card_thresholds) | set(thresholds or {})) - set(labels))
        if unknown:
            raise ValueError(f"thresholds for unknown labels: {', '.join(unknown)}")
        if task == "binary" and len(labels) != 2:
            raise ValueError(f"a binary model has 2 labels (negative, positive), this one {len(labels)}")
        self.task, self.labels = task, labels
        merged = {**card_thresholds, **({lab: threshold for lab in labels} if threshold is not None else {}),
                  **(thresholds or {})}
        self.thresholds = np.array([merged.get(lab, DEFAULT_THRESHOLD) for lab in labels], dtype=np.float32)

    def decide(self, probs: np.ndarray) -> Decision:
        if self.task == "binary":
            p = probs[:, 1]
            positive = p >= self.thresholds[1]
            return Decision(positive.astype(np.int64), np.where(positive, p, 1.0 - p))
        top = probs.argmax(axis=1)
        score = probs[np.arange(len(probs)), top]
        if self.task == "multilabel":
            chosen = [list(np.flatnonzero(row >= self.thresholds)) for row in probs]
            return Decision(top, score, chosen)
        return Decision(top, score)
