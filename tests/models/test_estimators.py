"""Each named estimator is the scikit-learn estimator a user would write: on the same features and
split, with the same parameters, random_state and max_iter, the held-out labels agree on at least
99 % of the test images and the probabilities (decision function for the SVMs) agree to 1e-6 — on
the digits scikit-learn ships and on scikit-image's LFW subset."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC, LinearSVC
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import threadpool_limits

from imgclf_ray.features.extractors import extract
from imgclf_ray.models.sklearn_classifier import estimator_scores
from imgclf_ray.registry import ESTIMATORS
from imgclf_ray.spec import EstimatorSpec
from imgclf_ray.training.trainer import make_estimator

# The scikit-learn estimator each registered name stands for, written out here rather than read
# from the registry under test: scikit-learn's defaults, plus random_state = the seed (0) for the
# seeded ones and the max_iter imgclf documents.
REFERENCES = {
    "svm": (SVC, {}),
    "linear_svm": (LinearSVC, {"random_state": 0}),
    "logistic_regression": (LogisticRegression, {"max_iter": 2000}),
    "knn": (KNeighborsClassifier, {}),
    "mlp": (MLPClassifier, {"max_iter": 1000, "random_state": 0}),
    "decision_tree": (DecisionTreeClassifier, {"random_state": 0}),
    "random_forest": (RandomForestClassifier, {"random_state": 0}),
    "gradient_boosting": (GradientBoostingClassifier, {"random_state": 0}),
    "hist_gradient_boosting": (HistGradientBoostingClassifier, {"random_state": 0}),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # On the 2-CPU machine with Ray busy beside it, OpenMP's waiting threads made one
    # HistGradientBoosting fit on the digits take minutes (past the 600 s timeout); one thread
    # fits it in seconds, and ours and the reference sum in the same order.
    with threadpool_limits(1):
        yield


def _features(images: np.ndarray) -> np.ndarray:
    """Greyscale images in [0, 1] -> the pixels extractor's features (as imgclf's decode gives them)."""
    u8 = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    return np.stack([extract("pixels", np.stack([im] * 3), {"grey": True}) for im in u8])


@pytest.fixture(scope="module", params=["digits", "lfw_subset"])
def dataset(request):
    if request.param == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = _features(d.images / 16.0), d.target.astype(str)
    else:
        from skimage.data import lfw_subset

        x, y = _features(lfw_subset()), np.array(["face"] * 100 + ["not_face"] * 100)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)


def test_the_references_name_exactly_the_registered_estimators():
    """A newly registered estimator needs its reference here (and a removed one loses it)."""
    assert sorted(REFERENCES) == ESTIMATORS.names()


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_each_estimator_labels_as_scikit_learn_does(name, dataset):
    x_train, x_test, y_train, y_test = dataset
    cls, params = REFERENCES[name]
    ours = make_estimator(EstimatorSpec(name=name), seed=0, features="pixels")
    ref = cls(**params)
    # Pixels are bounded features: no scaler, so ours is the bare estimator, built as the reference is.
    assert type(ours) is cls and ours.get_params() == ref.get_params(), name
    ours.fit(x_train, y_train)
    ref.fit(x_train, y_train)
    agree = float(np.mean(ours.predict(x_test) == ref.predict(x_test)))
    assert agree >= 0.99, (name, agree)
    output = "predict_proba" if hasattr(ref, "predict_proba") else "decision_function"
    np.testing.assert_allclose(getattr(ours, output)(x_test), getattr(ref, output)(x_test), atol=1e-6, err_msg=name)
    # The scores imgclf writes pick the same label as predict (probabilities, or the softmax of the
    # decision function for the SVMs).
    scores = estimator_scores(ours, x_test)
    assert np.mean(ours.classes_[scores.argmax(axis=1)] == ours.predict(x_test)) >= 0.99


def test_calibration_only_when_asked_and_then_scikit_learns(dataset):
    from sklearn.calibration import CalibratedClassifierCV

    x_train, x_test, y_train, _ = dataset
    plain = make_estimator(EstimatorSpec(name="svm"), features="pixels")
    assert isinstance(plain, SVC) and not hasattr(plain.fit(x_train, y_train), "predict_proba")
    ours = make_estimator(EstimatorSpec(name="svm", calibrate="sigmoid"), features="pixels").fit(x_train, y_train)
    ref = CalibratedClassifierCV(SVC(), method="sigmoid", cv=3).fit(x_train, y_train)
    np.testing.assert_allclose(ours.predict_proba(x_test), ref.predict_proba(x_test), atol=1e-6)


def test_a_scaler_only_for_scale_sensitive_estimators_on_unbounded_features():
    from sklearn.pipeline import Pipeline

    assert not isinstance(make_estimator(EstimatorSpec(name="svm"), features="hog"), Pipeline)
    assert isinstance(make_estimator(EstimatorSpec(name="svm"), features="glcm"), Pipeline)
    assert not isinstance(make_estimator(EstimatorSpec(name="random_forest"), features="glcm"), Pipeline)
