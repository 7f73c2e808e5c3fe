from imgclf_ray.registry import ESTIMATORS, Estimator

# The fully connected network ("ANN").
ESTIMATORS.register("mlp")(Estimator("sklearn.neural_network.MLPClassifier", defaults={"max_iter": 1000},
                                     seeded=True, scale_sensitive=True, native_multilabel=True))
