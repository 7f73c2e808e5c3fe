"""A scikit-learn estimator over a hand-crafted feature vector, loaded with skops (never pickle)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from imgclf_ray.errors import ArtifactError
from imgclf_ray.messages import describe
from imgclf_ray.models.artifact import ModelCard, read_card, read_weights
from imgclf_ray.registry import CLASSIFIERS
from imgclf_ray.spec import StorageSpec

# Types skops does not trust by default but that the estimators we support are made of. Anything
# else in a file (a custom class, a function) makes the artifact fail its safety check.
TRUSTED_TYPES = frozenset({
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.calibration._IsotonicCalibration",
    "sklearn.isotonic.IsotonicRegression",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
    "sklearn.metrics._dist_metrics.MinkowskiDistance64",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.Interval",
})


class SklearnClassifier:
    """Loads a skops artifact once; ``predict_proba`` maps (N, features) to (N, classes)."""

    def __init__(self, model_uri: str, storage: StorageSpec = StorageSpec()):
        import skops.io as sio

        self.card: ModelCard = read_card(model_uri, storage)
        self.model_id = self.card.model_id()
        blob = read_weights(model_uri, self.card, storage)
        try:
            untrusted = sio.get_untrusted_types(data=blob)
        except Exception as exc:  # noqa: BLE001 - not a skops file at all
            raise ArtifactError(f"{model_uri}/{self.card.weights.file}: not a skops file ({describe(exc)})") from None
        refused = sorted(set(untrusted) - TRUSTED_TYPES)
        if refused:
            raise ArtifactError(f"{model_uri}/{self.card.weights.file}: holds types that are not trusted: "
                                f"{', '.join(refused)}; refusing to load")
        self.estimator = sio.loads(blob, trusted=sorted(untrusted))
        if not hasattr(self.estimator, "predict_proba") and not hasattr(self.estimator, "decision_function"):
            raise ArtifactError(f"{model_uri}: {type(self.estimator).__name__} has neither predict_proba "
                                "nor decision_function")
        if self.card.task != "multilabel":
            # Columns of predict_proba must follow the card's labels: classes are those labels, or
            # their indices (0 = negative, 1 = positive for binary).
            classes = [str(c) for c in self.estimator.classes_]
            indices = [str(i) for i in range(len(self.card.labels))]
            if classes not in (list(self.card.labels), indices):
                raise ArtifactError(f"{model_uri}: the estimator's classes {classes} differ from the "
                                    f"card's labels {self.card.labels}")

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(N, classes) scores (see estimator_scores); for multilabel, each label's own."""
        return estimator_scores(self.estimator, np.asarray(features, dtype=np.float32), self.card.task == "multilabel")


def estimator_scores(estimator, x: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """(N, classes) scores of a fitted estimator: ``predict_proba`` when it has one; else the
    softmax of ``decision_function`` over the classes (a logistic sigmoid of it for binary and
    for each label of a multilabel model): monotone, so the top score is ``predict``'s label, but
    uncalibrated (the card says so: ModelCard.scores)."""
    if hasattr(estimator, "predict_proba"):
        probs = estimator.predict_proba(x)
        if isinstance(probs, list):  # multi-output estimators: one (N, 2) array per label
            probs = np.stack([p[:, -1] for p in probs], axis=1)
        return np.asarray(probs, dtype=np.float32)
    d = np.asarray(estimator.decision_function(x), dtype=np.float64)
    if multilabel:
        return (1.0 / (1.0 + np.exp(-d))).astype(np.float32)
    if d.ndim == 1:  # binary: the positive class's margin
        p = 1.0 / (1.0 + np.exp(-d))
        return np.stack([1.0 - p, p], axis=1).astype(np.float32)
    e = np.exp(d - d.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@CLASSIFIERS.register("sklearn")
def _load(uri: str, storage: StorageSpec, *, threads: Optional[int], **_) -> SklearnClassifier:
    if threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    return SklearnClassifier(uri, storage)
