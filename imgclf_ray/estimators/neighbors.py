from imgclf_ray.registry import ESTIMATORS, Estimator

ESTIMATORS.register("knn")(Estimator("sklearn.neighbors.KNeighborsClassifier", scale_sensitive=True,
                                     native_multilabel=True))
