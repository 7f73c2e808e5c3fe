"""One entry point from an artifact to the classifier that applies it."""

from __future__ import annotations

from typing import Optional

from imgclf_ray.models.artifact import read_card
from imgclf_ray.spec import StorageSpec


def load_classifier(model_uri: str, storage: StorageSpec = StorageSpec(), device: str = "auto",
                    threads: Optional[int] = None, precision: str = "fp32"):
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

    return TorchClassifier(model_uri, storage, device=device, threads=threads, precision=precision)


def check_artifact(model_uri: str, storage: StorageSpec = StorageSpec()) -> dict[str, float]:
    """Refuse a bad artifact on the driver, before any work starts; returns its card's thresholds.

    A torch artifact in safetensors is checked without importing torch (the card, the weights'
    sha256, a well-formed safetensors header): the actors build the network anyway, and the
    driver's start-up stays seconds shorter. Every other artifact is loaded as the actors will
    load it (skops trusted types, ``torch.load(weights_only=True)``, TorchScript, each node of a tree).
    """
    import json
    import struct

    from imgclf_ray.errors import ArtifactError
    from imgclf_ray.models.artifact import read_weights
    from imgclf_ray.models.hierarchy import describe_artifact

    if describe_artifact(model_uri, storage).task != "hierarchical":
        card = read_card(model_uri, storage)
        if card.framework == "torch" and card.weights.format == "safetensors":
            blob = read_weights(model_uri, card, storage)
            try:
                (size,) = struct.unpack("<Q", blob[:8])
                header = json.loads(blob[8:8 + size])
                if not isinstance(header, dict) or not header:
                    raise ValueError("empty header")
            except (struct.error, ValueError) as exc:
                raise ArtifactError(f"{model_uri}/{card.weights.file}: not a safetensors file ({exc})") from None
            return dict(card.thresholds)
    classifier = load_classifier(model_uri, storage, device="cpu", threads=1)
    card = getattr(classifier, "card", None)  # a tree has one card per node
    return dict(card.thresholds) if card is not None else {}
