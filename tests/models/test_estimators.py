"""Each named estimator is the scikit-learn estimator a user would write: on the same features and
split, with the same parameters, random_state and max_iter, the held-out labels agree on at least
99 % of the test images — on the digits scikit-learn ships and on scikit-image's LFW subset."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from imgclf_ray.features.extractors import extract
from imgclf_ray.models.sklearn_classifier import estimator_scores
from imgclf_ray.registry import ESTIMATORS as REGISTRY
from imgclf_ray.spec import ESTIMATORS, EstimatorSpec
from imgclf_ray.training.trainer import make_estimator

# What make_estimator adds to scikit-learn's defaults (and the reference gets too).
SEEDED = {"decision_tree", "random_forest", "gradient_boosting", "hist_gradient_boosting", "mlp", "linear_svm"}
MAX_ITER = {"logistic_regression": 2000, "mlp": 1000}


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


def _reference(name: str):
    module, _, cls = REGISTRY.get(name).cls.rpartition(".")
    params = ({"random_state": 0} if name in SEEDED else {}) | ({"max_iter": MAX_ITER[name]} if name in MAX_ITER else {})
    return getattr(importlib.import_module(module), cls)(**params)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_each_estimator_labels_as_scikit_learn_does(name, dataset):
    x_train, x_test, y_train, y_test = dataset
    ours = make_estimator(EstimatorSpec(name=name), seed=0, features="pixels").fit(x_train, y_train)
    ref = _reference(name).fit(x_train, y_train)
    agree = float(np.mean(ours.predict(x_test) == ref.predict(x_test)))
    assert agree >= 0.99, (name, agree)
    # The scores imgclf writes pick the same label as predict (probabilities, or the softmax of the
    # decision function for the SVMs).
    scores = estimator_scores(ours, x_test)
    assert np.mean(ours.classes_[scores.argmax(axis=1)] == ours.predict(x_test)) >= 0.99


def test_calibration_only_when_asked_and_then_scikit_learns(dataset):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

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
