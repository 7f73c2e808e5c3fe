"""DBSCAN: the cluster of the nearest core sample within eps, else noise (-1)."""

import numpy as np

from imgclf_ray.registry import CLUSTER_ALGORITHMS, ClusterAlgorithm


def _core_samples(est, z):
    core = est.core_sample_indices_
    return {"core": z[core].reshape(len(core), z.shape[1]), "core_labels": est.labels_[core],
            "eps": np.array([est.eps], dtype=np.float64)}


CLUSTER_ALGORITHMS.register("dbscan")(ClusterAlgorithm("sklearn.cluster.DBSCAN", _core_samples))
