"""Algorithms whose clusters are assigned by the nearest centre."""

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


CLUSTER_ALGORITHMS.register("kmeans")(ClusterAlgorithm("sklearn.cluster.KMeans", _centres))
CLUSTER_ALGORITHMS.register("minibatch_kmeans")(ClusterAlgorithm("sklearn.cluster.MiniBatchKMeans", _centres,
                                                                 streaming=True))
CLUSTER_ALGORITHMS.register("meanshift")(ClusterAlgorithm("sklearn.cluster.MeanShift", _centres))
CLUSTER_ALGORITHMS.register("birch")(ClusterAlgorithm("sklearn.cluster.Birch", _subclusters, streaming=True))
CLUSTER_ALGORITHMS.register("agglomerative")(ClusterAlgorithm("sklearn.cluster.AgglomerativeClustering", _centroids))
