"""Classical models: loaded with skops and an explicit list of trusted types, never pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imgclf_ray.errors import ArtifactError
from imgclf_ray.models.artifact import read_card, save_sklearn_artifact
from imgclf_ray.models.loader import load_classifier
from imgclf_ray.models.sklearn_classifier import SklearnClassifier

PREP = {"resize": 8, "crop": 8, "channels": 1}
FEATURES = {"name": "pixels"}


def _data():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images.reshape(len(d.images), -1) / 16.0).astype(np.float32), d.target


def shout(x):
    return x


def test_round_trip_and_card(tmp_path):
    from sklearn.linear_model import LogisticRegression

    x, y = _data()
    est = LogisticRegression(max_iter=300).fit(x, y)
    card = save_sklearn_artifact(str(tmp_path), {"preprocess": PREP, "features": FEATURES}, est)
    assert card.framework == "sklearn" and card.labels == [str(i) for i in range(10)]
    clf = load_classifier(str(tmp_path))
    assert isinstance(clf, SklearnClassifier)
    np.testing.assert_allclose(clf.predict_proba(x[:5]), est.predict_proba(x[:5]), rtol=1e-5, atol=1e-6)
    assert read_card(str(tmp_path)).model_id() == clf.model_id


def test_untrusted_types_are_refused_before_loading(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x, y = _data()
    est = make_pipeline(FunctionTransformer(shout), LogisticRegression(max_iter=200)).fit(x, y)
    save_sklearn_artifact(str(tmp_path), {"preprocess": PREP, "features": FEATURES}, est)
    with pytest.raises(ArtifactError, match=r"types that are not trusted: .*shout"):
        SklearnClassifier(str(tmp_path))


def test_svm_without_probabilities_scores_uncalibrated_and_bad_cards_are_refused(tmp_path):
    from sklearn.svm import SVC

    x, y = _data()
    svc = SVC().fit(x[:300], y[:300])
    card = save_sklearn_artifact(str(tmp_path / "svc"), {"preprocess": PREP, "features": FEATURES}, svc)
    assert card.scores == "uncalibrated"  # softmax of decision_function: same labels, not probabilities
    scores = SklearnClassifier(str(tmp_path / "svc")).predict_proba(x[300:])
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    assert (svc.classes_[scores.argmax(axis=1)] == svc.predict(x[300:])).mean() >= 0.99
    # Thresholds and label issues need probabilities: refused, with the way to get them.
    from imgclf_ray.errors import SpecError
    from imgclf_ray.models.hierarchy import describe_artifact
    from imgclf_ray.runner.checks import check_thresholds, label_issue_labels
    from imgclf_ray.spec import parse_spec

    info = describe_artifact(str(tmp_path / "svc"))
    spec = parse_spec({"name": "t", "source": {"uri": "x", "labels": {"kind": "folder"}}, "sink": {"uri": "y"},
                       "model": {"uri": str(tmp_path / "svc"), "threshold": 0.7}}, "<test>")
    with pytest.raises(SpecError, match="uncalibrated .* estimator.calibrate: sigmoid"):
        check_thresholds(spec, info, {})
    with pytest.raises(SpecError, match="label_issue needs probabilities"):
        label_issue_labels(spec, info, ("label_issue",))
    card = json.loads((tmp_path / "svc" / "model_card.json").read_text())
    card["features"] = {"name": "sift"}
    (tmp_path / "svc" / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="unknown feature extractor 'sift'"):
        read_card(str(tmp_path / "svc"))


def test_example_svm_hog_is_accurate(svm_hog_model):
    card = read_card(svm_hog_model)
    assert card.features.name == "hog" and card.metrics["test"]["accuracy"] >= 0.97
    assert Path(svm_hog_model, "model.skops").exists()


def _estimators():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    return {
        "knn": KNeighborsClassifier(5),
        "knn-balltree": KNeighborsClassifier(3, algorithm="ball_tree"),
        "decision-tree": DecisionTreeClassifier(max_depth=8, random_state=0),
        "random-forest": RandomForestClassifier(20, random_state=0),
        "gradient-boosting": GradientBoostingClassifier(n_estimators=10, random_state=0),
        "hist-gradient-boosting": HistGradientBoostingClassifier(max_iter=20, random_state=0),
        "linear-svm": make_pipeline(StandardScaler(), CalibratedClassifierCV(LinearSVC(), cv=3)),
        "kernel-svm-isotonic": CalibratedClassifierCV(SVC(), cv=3, method="isotonic"),
        "mlp": MLPClassifier((32,), max_iter=300, random_state=0),
    }


@pytest.mark.parametrize("name", list(_estimators()))
def test_every_supported_estimator_loads_with_the_trusted_list(name, tmp_path):
    """Conformance over the estimators users ask for by name: no type outside TRUSTED_TYPES."""
    import warnings

    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = _estimators()[name].fit(x[:600], y[:600])
    save_sklearn_artifact(str(tmp_path), {"preprocess": PREP, "features": FEATURES}, est)
    clf = SklearnClassifier(str(tmp_path))
    np.testing.assert_allclose(clf.predict_proba(x[600:650]), est.predict_proba(x[600:650]), rtol=1e-5, atol=1e-6)
