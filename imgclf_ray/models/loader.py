"""One entry point from an artifact to the classifier that applies it."""

from __future__ import annotations

from typing import Optional

from imgclf_ray.models.artifact import read_card
from imgclf_ray.spec import StorageSpec


def load_classifier(model_uri: str, storage: StorageSpec = StorageSpec(), device: str = "auto",
                    threads: Optional[int] = None):
    """The classifier for the artifact at ``model_uri``, whatever its framework or task."""
    from imgclf_ray.models.hierarchy import HierarchicalClassifier, describe_artifact

    if describe_artifact(model_uri, storage).task == "hierarchical":
        return HierarchicalClassifier(model_uri, storage, device=device, threads=threads)
    card = read_card(model_uri, storage)
    if card.framework == "sklearn":
        from threadpoolctl import threadpool_limits

        from imgclf_ray.models.sklearn_classifier import SklearnClassifier

        if threads:
            threadpool_limits(threads)
        return SklearnClassifier(model_uri, storage)
    from imgclf_ray.models.torch_classifier import TorchClassifier

    return TorchClassifier(model_uri, storage, device=device, threads=threads)
