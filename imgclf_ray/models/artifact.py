"""Model artifacts: a folder with ``model_card.json`` and the weights file it names.

The card carries everything needed to apply the model (architecture, labels, preprocessing) and the
sha256 of the weights, checked before they are loaded. Weights are safetensors, or a state_dict read
with ``torch.load(weights_only=True)``: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from imgclf_ray.errors import ArtifactError
from imgclf_ray.imaging.conditioning import Conditioning
from imgclf_ray.io.storage import describe_os_error, filesystem, join
from imgclf_ray.messages import describe
from imgclf_ray.spec import FeatureSpec, PreprocessSpec, StorageSpec

if TYPE_CHECKING:
    import torch

CARD_FILE = "model_card.json"


class _Card(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessCard(PreprocessSpec):
    """How images are prepared for this model (used identically in training and inference): the
    training spec's preprocess, checked, with mean/std filled in for torch models."""

    @model_validator(mode="after")
    def _check(self) -> "PreprocessCard":
        if self.crop and self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.normalize == "per_image" and self.mean is not None:
            raise ValueError("normalize: per_image uses each image's own mean and std; drop mean and std")
        if self.mean is not None and (len(self.mean) != self.channels or len(self.std) != self.channels):
            raise ValueError("mean and std need one value per channel")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        from imgclf_ray.registry import OPS

        for op in self.ops:
            try:
                OPS.get(op.name)
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None
        return self

    def conditioning(self) -> Conditioning:
        return Conditioning(self.resize, self.crop, self.channels, self.interpolation, self.crop_offset,
                            self.resampler, tuple((op.name, dict(op.params)) for op in self.ops))


class WeightsRef(_Card):
    file: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="File name inside the artifact folder.")
    format: Literal["safetensors", "state_dict", "torchscript", "skops", "onnx"] = "safetensors"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class FeaturesCard(FeatureSpec):
    """The hand-crafted feature extractor a classical model was trained on (a known name)."""

    @model_validator(mode="after")
    def _known(self) -> "FeaturesCard":
        from imgclf_ray.registry import EXTRACTORS

        try:
            EXTRACTORS.get(self.name)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        return self


class ModelCard(_Card):
    """What a model is and how to apply it."""

    format_version: Literal[1] = 1
    task: Literal["multiclass", "binary", "multilabel"] = Field(
        "multiclass", description="binary: labels are [negative, positive]; multilabel: independent "
        "per-label probabilities (sigmoid / one estimator per label).")
    framework: Literal["torch", "sklearn", "onnx"] = Field(
        "torch", description="torch: a network built by ``library``; sklearn: a skops estimator over "
        "``features``; onnx: a graph run by ONNX Runtime.")
    library: Literal["torchvision", "timm", "transformers"] = Field(
        "torchvision", description="torch models: the library that builds the network from "
        "``architecture`` (and ``network_config``) before the weights are loaded.")
    architecture: str = Field(description="The network's name in its library (torchvision / timm model "
                              "name, transformers class), the estimator's class name (sklearn) or the "
                              "graph's name (onnx); informative for the last two.")
    network_config: dict[str, Any] = Field(default_factory=dict, description="timm: model_args and "
                                           "pretrained_cfg; transformers: the model's config.json.")
    outputs: Literal["logits", "probabilities"] = Field(
        "logits", description="What the network returns: logits (softmax, or a sigmoid per label for "
        "multilabel, is applied here) or probabilities already (used as they are).")
    source: dict[str, Any] = Field(default_factory=dict, description="Imported models: the source "
                                   "format, every source file's sha256, where labels and preprocessing "
                                   "came from, the reference preprocessing.")
    labels: list[str] = Field(min_length=2)
    weights: WeightsRef
    preprocess: PreprocessCard
    features: Optional[FeaturesCard] = Field(None, description="Feature extractor (sklearn models).")
    scores: Literal["probability", "uncalibrated"] = Field(
        "probability", description="probability: predict_proba (calibrated, or a probabilistic model); "
        "uncalibrated: an estimator without predict_proba (SVMs not calibrated), whose scores are the "
        "softmax of its decision_function (a logistic sigmoid per label for binary and multilabel): "
        "monotone, so labels equal the estimator's predict, but not probabilities.")
    thresholds: dict[str, float] = Field(default_factory=dict, description="Decision thresholds by "
                                         "label (binary: the positive label; multilabel: each); 0.5 "
                                         "where absent.")
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    library_versions: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> "ModelCard":
        if self.framework in ("torch", "onnx"):
            if self.preprocess.mean is None and self.preprocess.normalize == "dataset":
                raise ValueError(f"{self.framework} models need preprocess.mean and preprocess.std "
                                 "(or normalize: per_image)")
            if (self.framework == "onnx") != (self.weights.format == "onnx"):
                raise ValueError("onnx models are stored as onnx (weights.format: onnx), and only they")
            if self.weights.format == "skops":
                raise ValueError("torch weights are safetensors, state_dict or torchscript, not skops")
        else:
            if self.features is None:
                raise ValueError("sklearn models need a features extractor")
            if self.weights.format != "skops":
                raise ValueError("sklearn estimators are stored with skops (weights.format: skops)")
        return self

    def model_id(self) -> str:
        """Digest of the whole card (which includes the weights' sha256)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def read_card(uri: str, storage: StorageSpec = StorageSpec()) -> ModelCard:
    """Read and validate the model card of the artifact at ``uri``."""
    fs, path = filesystem(join(uri, CARD_FILE), storage)
    try:
        raw = fs.cat_file(path)
    except OSError as exc:
        raise ArtifactError(f"{uri}: no readable {CARD_FILE} ({describe_os_error(exc)}) (model.uri)") from None
    try:
        return ModelCard.model_validate_json(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{uri}/{CARD_FILE}: {first_error(exc)}") from None


def first_error(exc: ValueError) -> str:
    """'dotted.key: message' of a pydantic ValidationError's first error (the text of another
    ValueError)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    first = errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def read_weights(uri: str, card: ModelCard, storage: StorageSpec = StorageSpec()) -> bytes:
    """The bytes of the weights file named by the card, after checking their sha256."""
    fs, path = filesystem(join(uri, card.weights.file), storage)
    try:
        blob = fs.cat_file(path)
    except OSError as exc:
        raise ArtifactError(f"{uri}: cannot read weights {card.weights.file} ({describe_os_error(exc)})") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != card.weights.sha256:
        raise ArtifactError(f"{uri}/{card.weights.file}: sha256 {digest[:12]}... does not match the "
                            f"model card's {card.weights.sha256[:12]}...; refusing to load")
    return blob


def load_state_dict(uri: str, card: ModelCard, storage: StorageSpec = StorageSpec()) -> dict[str, "torch.Tensor"]:
    """Load the torch weights named by the card after checking their sha256. Never unpickles."""
    import torch

    blob = read_weights(uri, card, storage)
    try:
        if card.weights.format == "safetensors":
            from safetensors.torch import load as load_safetensors

            return load_safetensors(blob)
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise ArtifactError(f"{uri}/{card.weights.file}: not loadable as {card.weights.format} "
                            f"({describe(exc)})") from None
    if not isinstance(state, dict):
        raise ArtifactError(f"{uri}/{card.weights.file}: holds a {type(state).__name__}, not a state_dict")
    return state


def save_artifact(uri: str, card_fields: dict[str, Any], state_dict: dict[str, "torch.Tensor"],
                  storage: StorageSpec = StorageSpec()) -> ModelCard:
    """Write torch weights (safetensors) and the model card; returns the card."""
    from safetensors.torch import save as save_safetensors

    blob = save_safetensors({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
    return write_artifact(uri, card_fields, "model.safetensors", "safetensors", blob, storage)


def save_sklearn_artifact(uri: str, card_fields: dict[str, Any], estimator: Any,
                          storage: StorageSpec = StorageSpec()) -> ModelCard:
    """Write a fitted scikit-learn estimator (skops) and the model card; returns the card."""
    import skops.io as sio

    fields = {"framework": "sklearn", "architecture": type(estimator).__name__, **card_fields}
    fields.setdefault("labels", [str(c) for c in estimator.classes_])
    fields.setdefault("scores", "probability" if hasattr(estimator, "predict_proba") else "uncalibrated")
    return write_artifact(uri, fields, "model.skops", "skops", sio.dumps(estimator), storage)


def write_artifact(uri: str, card_fields: dict[str, Any], name: str, fmt: str, blob: bytes,
           storage: StorageSpec = StorageSpec()) -> ModelCard:
    """Write ``blob`` as the weights file ``name`` (format ``fmt``) and the card made of
    ``card_fields``; the card is validated before anything is written."""
    card = ModelCard.model_validate({
        **card_fields,
        "weights": {"file": name, "format": fmt, "sha256": hashlib.sha256(blob).hexdigest()},
    })
    fs, path = filesystem(uri, storage)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(join(path, card.weights.file), blob)
    fs.pipe_file(join(path, CARD_FILE), card.model_dump_json(indent=2).encode())
    return card
