from __future__ import annotations

import numpy as np
import pytest

from imgclf_ray.models.heads import Head


def test_multiclass_takes_the_most_probable():
    d = Head("multiclass", ["a", "b", "c"], {}).decide(np.array([[0.2, 0.5, 0.3], [0.7, 0.2, 0.1]]))
    assert d.label.tolist() == [1, 0] and d.score.tolist() == [0.5, 0.7] and d.chosen is None


def test_binary_threshold_from_card_and_job():
    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.1, 0.9]])
    assert Head("binary", ["neg", "pos"], {}).decide(probs).label.tolist() == [0, 1, 1]
    card = Head("binary", ["neg", "pos"], {"pos": 0.8}).decide(probs)
    assert card.label.tolist() == [0, 0, 1] and card.score.tolist() == pytest.approx([0.7, 0.4, 0.9])
    assert Head("binary", ["neg", "pos"], {"pos": 0.8}, threshold=0.2).decide(probs).label.tolist() == [1, 1, 1]


def test_multilabel_per_label_thresholds():
    probs = np.array([[0.9, 0.45, 0.1], [0.2, 0.3, 0.35]])
    head = Head("multilabel", ["x", "y", "z"], {"y": 0.4}, thresholds={"z": 0.3})
    d = head.decide(probs)
    assert d.chosen == [[0, 1], [2]] and d.label.tolist() == [0, 2]
    assert head.thresholds.tolist() == pytest.approx([0.5, 0.4, 0.3])


def test_bad_thresholds_and_label_counts():
    with pytest.raises(ValueError, match="unknown labels: w"):
        Head("multilabel", ["x", "y"], {}, thresholds={"w": 0.1})
    with pytest.raises(ValueError, match="binary model has 2 labels"):
        Head("binary", ["a", "b", "c"], {})
