from imgclf_ray.registry import ESTIMATORS, Estimator

ESTIMATORS.register("logistic_regression")(Estimator("sklearn.linear_model.LogisticRegression",
                                                     defaults={"max_iter": 2000}, scale_sensitive=True))
ESTIMATORS.register("linear_svm")(Estimator("sklearn.svm.LinearSVC", seeded=True, scale_sensitive=True))
