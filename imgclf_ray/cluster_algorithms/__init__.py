"""The scikit-learn clusterers a cluster section names (``cluster.algorithm``), one module per kind.

A new algorithm is a module here registering a ClusterAlgorithm: its class, and how a fitted one
becomes arrays (nearest centre, a Gaussian mixture, or core samples: imgclf_ray.registry) that assign
every image of the archive, now and on later nights. tests/test_clustering.py runs each registered
algorithm through fit, save, load and assign.
"""
