"""A Gaussian mixture: each image goes to its most probable component (with that probability)."""

from imgclf_ray.registry import CLUSTER_ALGORITHMS, ClusterAlgorithm


def _mixture(est, z):
    return {"weights": est.weights_, "means": est.means_, "covariances": est.covariances_,
            "precisions_cholesky": est.precisions_cholesky_}


CLUSTER_ALGORITHMS.register("gmm")(ClusterAlgorithm("sklearn.mixture.GaussianMixture", _mixture))
