"""The scikit-learn classifiers a training spec names (``estimator.name``): one table.

A new estimator is a line here (or a module of this package registering one the same way);
tests/models/test_estimators.py then checks it labels as scikit-learn's own does.
"""

from imgclf_ray.registry import ESTIMATORS, Estimator

TABLE = {
    "logistic_regression": Estimator("sklearn.linear_model.LogisticRegression", defaults={"max_iter": 2000},
                                     scale_sensitive=True),
    "linear_svm": Estimator("sklearn.svm.LinearSVC", seeded=True, scale_sensitive=True),
    "svm": Estimator("sklearn.svm.SVC", scale_sensitive=True),  # RBF kernel
    "knn": Estimator("sklearn.neighbors.KNeighborsClassifier", scale_sensitive=True, native_multilabel=True),
    # The fully connected network ("ANN").
    "mlp": Estimator("sklearn.neural_network.MLPClassifier", defaults={"max_iter": 1000}, seeded=True,
                     scale_sensitive=True, native_multilabel=True),
    "decision_tree": Estimator("sklearn.tree.DecisionTreeClassifier", seeded=True, native_multilabel=True),
    "random_forest": Estimator("sklearn.ensemble.RandomForestClassifier", seeded=True, native_multilabel=True),
    "gradient_boosting": Estimator("sklearn.ensemble.GradientBoostingClassifier", seeded=True),
    "hist_gradient_boosting": Estimator("sklearn.ensemble.HistGradientBoostingClassifier", seeded=True),
}

for _name, _entry in TABLE.items():
    ESTIMATORS.register(_name)(_entry)
