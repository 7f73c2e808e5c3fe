"""One entry point from an artifact to the classifier that applies it."""

from __future__ import annotations

from typing import Optional

from imgclf_ray.messages import describe
from imgclf_ray.models.hierarchy import ArtifactInfo, describe_artifact, refuse_code
from imgclf_ray.registry import CLASSIFIERS
from imgclf_ray.spec import StorageSpec


def load_classifier(model_uri: str, storage: StorageSpec = StorageSpec(), device: str = "auto",
                    threads: Optional[int] = None, precision: str = "fp32", trusted: bool = False,
                    runtime: str = "torch", info: Optional[ArtifactInfo] = None, calls: int = 1, export=None):
    """The classifier for the artifact at ``model_uri``, whatever its framework or task. Formats
    that run code (CODE_FORMATS) load only when ``trusted``; ``runtime: onnxruntime`` runs torch
    models through a cached ONNX export of themselves; ``calls``: the batches it will work on at once
    (a GPU network sizes its passes to its share of the device's memory); ``export``: the driver's
    ONNX export of a torch network, shipped through Ray's object store (``onnx_runtime.from_export``)."""
    info = info or describe_artifact(model_uri, storage)
    refuse_code(model_uri, storage, trusted, info)
    kind = "hierarchical" if info.task == "hierarchical" else info.cards[()].framework
    return CLASSIFIERS.get(kind)(model_uri, storage, device=device, threads=threads, precision=precision,
                                 trusted=trusted, runtime=runtime, calls=calls, export=export)


def check_artifact(model_uri: str, storage: StorageSpec = StorageSpec(), trusted: bool = False,
                   runtime: str = "torch", info: Optional[ArtifactInfo] = None) -> dict[str, float]:
    """Refuse a bad artifact on the driver, before any work starts; returns its card's thresholds.

    A torch artifact in safetensors is checked without importing torch (the card, the weights'
    sha256, a well-formed safetensors header): the actors build the network anyway, and the
    driver's start-up stays seconds shorter. Every other artifact is loaded as the actors will
    load it (skops trusted types, ``torch.load(weights_only=True)``, ONNX Runtime, each node of a
    tree; with ``runtime: onnxruntime`` the ONNX export is made here, once, into the cache). A
    library the card needs (timm, transformers, onnxruntime) must be installed. Formats that run
    code are refused first, from the card alone, unless ``trusted``: nothing of them is loaded.
    """
    import json
    import struct

    from imgclf_ray.errors import ArtifactError
    from imgclf_ray.models.artifact import read_weights
    from imgclf_ray.models.networks import require

    info = info or describe_artifact(model_uri, storage)
    refuse_code(model_uri, storage, trusted, info)
    if info.task != "hierarchical":
        card = info.cards[()]
        require(card.framework if card.framework == "onnx" else card.library)
        if runtime == "onnxruntime":
            require("onnx")
        if card.framework == "torch" and card.weights.format == "safetensors" and runtime in ("torch", "auto"):
            blob = read_weights(model_uri, card, storage)
            try:
                (size,) = struct.unpack("<Q", blob[:8])
                header = json.loads(blob[8:8 + size])
                if not isinstance(header, dict) or not header:
                    raise ValueError("empty header")
            except (struct.error, ValueError) as exc:
                raise ArtifactError(f"{model_uri}/{card.weights.file}: not a safetensors file ({describe(exc)})") from None
            return dict(card.thresholds)
    classifier = load_classifier(model_uri, storage, device="cpu", threads=1, trusted=trusted, runtime=runtime,
                                 info=info)
    card = getattr(classifier, "card", None)  # a tree has one card per node
    return dict(card.thresholds) if card is not None else {}
