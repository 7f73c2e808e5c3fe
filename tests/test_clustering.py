"""Clusterers without Ray: each algorithm's assignment rule against scikit-learn or known answers,
artifacts round-trip safely, streamed fitting."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.cluster import Birch, KMeans, MeanShift, MiniBatchKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from imgclf_ray import clustering
from imgclf_ray.errors import ArtifactError
from imgclf_ray.registry import CLUSTER_ALGORITHMS
from imgclf_ray.spec import ClusterSpec


@pytest.fixture(scope="module")
def blobs():
    return make_blobs(400, centers=3, n_features=6, cluster_std=1.0, random_state=0)


# The scikit-learn clusterer each case below is, written out here rather than built by the code
# under test: the case's params, plus random_state = the spec's seed (0) where the class takes one;
# and its fitted attribute that imgclf keeps as "centers" ("means" for the mixture).
REFERENCES = {
    "kmeans": (KMeans, {"n_clusters": 3, "random_state": 0}, "cluster_centers_"),
    "minibatch_kmeans": (MiniBatchKMeans, {"n_clusters": 3, "random_state": 0}, "cluster_centers_"),
    "meanshift": (MeanShift, {}, "cluster_centers_"),
    "birch": (Birch, {"n_clusters": 3}, "subcluster_centers_"),
    "gmm": (GaussianMixture, {"n_components": 3, "random_state": 0}, "means_"),
}


@pytest.mark.parametrize("algorithm,params", [
    ("kmeans", {"n_clusters": 3}), ("minibatch_kmeans", {"n_clusters": 3}), ("meanshift", {}),
    ("birch", {"n_clusters": 3}), ("gmm", {"n_components": 3}),
])
def test_assignment_equals_scikit_learns_predict(blobs, algorithm, params, tmp_path):
    """Algorithms with predict: our array-only rule gives scikit-learn's answer on new rows."""
    x, y = blobs
    spec = ClusterSpec(algorithm=algorithm, params=params)
    fitted = clustering.fit(spec, x[:300])
    saved = clustering.save(str(tmp_path), fitted)
    loaded = clustering.load(str(tmp_path))
    cls, kwargs, attribute = REFERENCES[algorithm]
    est = cls(**kwargs).fit(x[:300])  # same seed, same data: the same model
    # The same fitted model, not only the same labels: on blobs this easy another class
    # (MiniBatchKMeans for KMeans, a Bayesian mixture) would assign every row alike.
    np.testing.assert_allclose(loaded.arrays["means" if algorithm == "gmm" else "centers"], getattr(est, attribute))
    new = x[300:] + np.random.default_rng(1).normal(0, 0.3, x[300:].shape)
    ours, _, proba = loaded.assign(loaded.reduce(new))
    assert np.array_equal(ours, est.predict(new))
    if algorithm == "gmm":
        np.testing.assert_allclose(proba, est.predict_proba(new).max(axis=1), rtol=1e-5)
    assert adjusted_rand_score(y[300:], ours) >= 0.9
    assert saved.card.sha256 == loaded.card.sha256


def test_dbscan_rule_nearest_core_within_eps_else_noise():
    """Two dense squares of points; a far point is noise, a point near one square joins it."""
    grid = np.array([[i * 0.1, j * 0.1] for i in range(5) for j in range(5)])
    x = np.vstack([grid, grid + [10.0, 10.0]])
    fitted = clustering.fit(ClusterSpec(algorithm="dbscan", params={"eps": 0.15, "min_samples": 3},
                                        features={"name": "pixels"}), x)
    cluster, distance, proba = fitted.assign(np.array([[0.2, 0.25], [10.45, 10.3], [5.0, 5.0], [0.52, 0.2]]))
    first, second = fitted.assign(x[:1])[0][0], fitted.assign(x[-1:])[0][0]
    assert first != second and {first, second} == {0, 1}
    assert cluster.tolist() == [first, second, -1, first]
    assert distance[0] == pytest.approx(0.05, rel=1e-5) and distance[2] > 6 and proba is None
    assert fitted.card.n_clusters == 2


def test_agglomerative_rule_nearest_centroid_of_the_sample_clusters():
    x = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
    fitted = clustering.fit(ClusterSpec(algorithm="agglomerative", params={"n_clusters": 2}), x)
    np.testing.assert_allclose(sorted(fitted.arrays["centers"].tolist()), [[0.0, 1.0], [10.0, 1.0]])
    cluster, distance, _ = fitted.assign(np.array([[4.0, 1.0], [6.0, 1.0], [0.0, 1.0]]))
    left = fitted.assign(x[:1])[0][0]
    assert cluster[0] == left and cluster[1] != left and cluster[2] == left
    np.testing.assert_allclose(distance, [4.0, 4.0, 0.0])


def test_pca_then_cluster_and_outlier_scores(blobs):
    x, _ = blobs
    fitted = clustering.fit(ClusterSpec(algorithm="kmeans", params={"n_clusters": 3}, pca=2), x)
    assert fitted.reduce(x).shape == (400, 2)
    threshold = fitted.outlier_threshold(0.99)
    far = x[:5] + 40.0
    assert (fitted.outlier_scores(fitted.reduce(far)) > threshold).all()
    assert (fitted.outlier_scores(fitted.reduce(x)) > threshold).mean() <= 0.05


def test_streamed_fit_sees_every_batch(blobs):
    x, y = blobs
    spec = ClusterSpec(algorithm="minibatch_kmeans", params={"n_clusters": 3}, fit="stream")
    fitted = clustering.fit(spec, x[:20], stream=(x[i:i + 50] for i in range(0, 400, 50)))
    assert fitted.card.fitted_rows == 400
    assert adjusted_rand_score(y, fitted.assign(fitted.reduce(x))[0]) >= 0.9
    birch = clustering.fit(ClusterSpec(algorithm="birch", params={"n_clusters": 3}, fit="stream"),
                           x[:20], stream=(x[i:i + 50] for i in range(0, 400, 50)))
    assert adjusted_rand_score(y, birch.assign(birch.reduce(x))[0]) >= 0.9


def test_tampered_arrays_are_refused_and_nothing_is_pickled(blobs, tmp_path):
    x, _ = blobs
    clustering.save(str(tmp_path), clustering.fit(ClusterSpec(algorithm="kmeans", params={"n_clusters": 3}), x))
    card = json.loads((tmp_path / clustering.CARD_FILE).read_text())
    assert set(card) >= {"algorithm", "features", "sha256", "n_clusters"}
    blob = (tmp_path / clustering.ARRAYS_FILE).read_bytes()
    assert b"pickle" not in blob and blob[8:9] == b"{"  # safetensors: length + JSON header
    (tmp_path / clustering.ARRAYS_FILE).write_bytes(blob[:-8] + b"\x00" * 8)
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        clustering.load(str(tmp_path))


def test_spec_refuses_unknown_params_and_streaming_without_partial_fit():
    with pytest.raises(ValueError, match="n_clusters not accepted by DBSCAN"):
        ClusterSpec(algorithm="dbscan", params={"n_clusters": 3})
    with pytest.raises(ValueError, match="stream needs partial_fit"):
        ClusterSpec(algorithm="kmeans", fit="stream")
    with pytest.raises(ValueError, match="unknown feature extractor 'sift'"):
        ClusterSpec(algorithm="kmeans", features={"name": "sift"})


@pytest.mark.parametrize("algorithm", CLUSTER_ALGORITHMS.names())
def test_every_registered_algorithm_fits_saves_loads_and_assigns(blobs, algorithm, tmp_path):
    """The conformance test of imgclf_ray/cluster_algorithms/: a new module there is run here."""
    import importlib
    import inspect

    from imgclf_ray.registry import CLUSTER_ALGORITHMS as REGISTRY

    module, _, name = REGISTRY.get(algorithm).cls.rpartition(".")
    accepted = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    params = {k: v for k, v in {"n_clusters": 3, "n_components": 3, "eps": 3.0}.items() if k in accepted}
    x, y = blobs
    fitted = clustering.fit(ClusterSpec(algorithm=algorithm, params=params), x[:300])
    clustering.save(str(tmp_path), fitted)
    loaded = clustering.load(str(tmp_path))
    ours, distance, _ = loaded.assign(loaded.reduce(x[300:]))
    assert ours.dtype == np.int32 and len(ours) == 100 and np.isfinite(distance[ours >= 0]).all()
    assert adjusted_rand_score(y[300:], ours) >= 0.8, algorithm
