"""The scikit-learn clusterers a cluster section names (``cluster.algorithm``): one table.

An entry is the class and how a fitted one becomes arrays (nearest centre, a Gaussian mixture, or
core samples: imgclf_ray.registry) that assign every image of the archive, now and on later
nights. A new algorithm is a line here (or a module of this package registering one the same way);
tests/test_clustering.py runs each registered algorithm through fit, save, load and assign.
"""

import numpy as np

from imgclf_ray.registry import CLUSTER_ALGORITHMS, ClusterAlgorithm


def _centres(est, z):
    return {"centers": est.cluster_centers_, "center_labels": np.arange(len(est.cluster_centers_))}


def _subclusters(est, z):
    return {"centers": est.subcluster_centers_, "center_labels": np.asarray(est.subcluster_labels_)}


def _centroids(est, z):
    """Agglomerative clustering has no predict: the centroid of each cluster found on the sample."""
    labels = est.labels_
    ids = np.unique(labels)
    return {"centers": np.stack([z[labels == i].mean(axis=0) for i in ids]), "center_labels": ids}


def _mixture(est, z):
    """Each image goes to its most probable component (with that probability)."""
    return {"weights": est.weights_, "means": est.means_, "covariances": est.covariances_,
            "precisions_cholesky": est.precisions_cholesky_}


def _core_samples(est, z):
    """DBSCAN: the cluster of the nearest core sample within eps, else noise (-1)."""
    core = est.core_sample_indices_
    return {"core": z[core].reshape(len(core), z.shape[1]), "core_labels": est.labels_[core],
            "eps": np.array([est.eps], dtype=np.float64)}


TABLE = {
    "kmeans": ClusterAlgorithm("sklearn.cluster.KMeans", _centres),
    "minibatch_kmeans": ClusterAlgorithm("sklearn.cluster.MiniBatchKMeans", _centres, streaming=True),
    "meanshift": ClusterAlgorithm("sklearn.cluster.MeanShift", _centres),
    "birch": ClusterAlgorithm("sklearn.cluster.Birch", _subclusters, streaming=True),
    "agglomerative": ClusterAlgorithm("sklearn.cluster.AgglomerativeClustering", _centroids),
    "gmm": ClusterAlgorithm("sklearn.mixture.GaussianMixture", _mixture),
    "dbscan": ClusterAlgorithm("sklearn.cluster.DBSCAN", _core_samples),
}

for _name, _entry in TABLE.items():
    CLUSTER_ALGORITHMS.register(_name)(_entry)
