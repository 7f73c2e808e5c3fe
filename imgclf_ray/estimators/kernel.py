from imgclf_ray.registry import ESTIMATORS, Estimator

ESTIMATORS.register("svm")(Estimator("sklearn.svm.SVC", scale_sensitive=True))  # RBF kernel
