"""The scikit-learn classifiers a training spec names (``estimator.name``), one module per family.

A new estimator is a module here that registers it::

    from imgclf_ray.registry import ESTIMATORS, Estimator

    ESTIMATORS.register("ridge")(Estimator("sklearn.linear_model.RidgeClassifier", scale_sensitive=True))

tests/models/test_estimators.py then checks it labels as scikit-learn's own does.
"""
