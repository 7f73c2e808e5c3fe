from imgclf_ray.registry import ESTIMATORS, Estimator

ESTIMATORS.register("decision_tree")(Estimator("sklearn.tree.DecisionTreeClassifier", seeded=True,
                                               native_multilabel=True))
ESTIMATORS.register("random_forest")(Estimator("sklearn.ensemble.RandomForestClassifier", seeded=True,
                                               native_multilabel=True))
ESTIMATORS.register("gradient_boosting")(Estimator("sklearn.ensemble.GradientBoostingClassifier", seeded=True))
ESTIMATORS.register("hist_gradient_boosting")(Estimator("sklearn.ensemble.HistGradientBoostingClassifier",
                                                        seeded=True))
