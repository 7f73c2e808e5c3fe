"""What a model is made of: conditioning (preprocess, ops), features, estimators, CNNs."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from imgclf_ray import registry
from imgclf_ray.config.base import Section


# A name of each registry, checked when a spec is validated (registered later: accepted).
EstimatorName = registry.ESTIMATORS.name_type()  # imgclf_ray/estimators/


class SearchSpec(Section):
    """Hyper-parameter search over the estimator's parameters, by cross-validation on the training split."""

    grid: dict[str, list[Any]] = Field(description="Parameter name -> values to try, e.g. {C: [1, 10, 100]}.")
    cv: int = Field(3, ge=2, description="Cross-validation folds.")
    halving: bool = Field(False, description="Successive halving (HalvingGridSearchCV) instead of a full grid.")
    scoring: Optional[str] = Field(None, description="scikit-learn scorer name; default: the estimator's score.")


class EstimatorSpec(Section):
    """A scikit-learn classifier by name."""

    name: EstimatorName = Field(description="The scikit-learn classifier with its defaults: svm "
                                "is SVC (RBF), linear_svm LinearSVC, mlp MLPClassifier (the fully "
                                "connected 'ANN'); see docs/models.md for scaling.")
    calibrate: Optional[Literal["sigmoid", "isotonic"]] = Field(
        None, description="Calibrate the scores with CalibratedClassifierCV(method=..., cv=3): three "
        "more fits on two thirds of the training split each, probabilities averaged (labels can "
        "differ slightly from the bare estimator's). Needed for job thresholds and label_issue on "
        "estimators without predict_proba (svm, linear_svm).")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the estimator.")
    scale: Optional[bool] = Field(None, description="A StandardScaler first: true, false, or null "
                                  "(automatic: for scale-sensitive estimators on features not bounded "
                                  "to [0, 1]; see docs/models.md).")
    search: Optional[SearchSpec] = Field(None, description="Grid search over these parameters.")

    @model_validator(mode="after")
    def _known_params(self) -> "EstimatorSpec":
        for key, names in (("params", self.params), ("search.grid", self.search.grid if self.search else {})):
            check_params(registry.ESTIMATORS.get(self.name).cls, names, key)
        return self


def check_params(dotted_class: str, params: dict[str, Any], key: str) -> None:
    """Refuse keyword arguments the scikit-learn class does not take (named in the message)."""
    import importlib
    import inspect

    module, _, name = dotted_class.rpartition(".")
    accepted = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{key}: {', '.join(unknown)} not accepted by {name} "
                         f"(accepted: {', '.join(accepted)})")


class OpSpec(Section):
    """One conditioning operation (imgclf_ray/imaging/ops.py)."""

    name: str = Field(description="grayscale, equalize, clahe, gaussian, median, wiener, minmax, "
                      "trim_border, letterbox, crop.")
    params: dict[str, Any] = Field(default_factory=dict, description="Its keyword arguments, e.g. "
                                   "{sigma: 1.5} for gaussian, {size: 256} for letterbox.")


class PreprocessSpec(Section):
    """Conditioning recorded in the model card and applied identically at inference."""

    ops: list[OpSpec] = Field(default_factory=list, description="Operations run in order on the "
                              "decoded image before resize and crop (histogram equalisation, CLAHE, "
                              "denoising, border trimming, letterbox ...).")
    resize: int = Field(gt=0, description="Shorter side after resizing.")
    crop: Optional[int] = Field(None, gt=0, description="Centre-crop side.")
    crop_offset: Literal["round", "floor"] = Field(
        "round", description="How the centre crop's offset is rounded when the margin is odd: round "
        "(torchvision, timm) or floor (Hugging Face image processors).")
    channels: Literal[1, 3] = Field(3, description="1 = greyscale, 3 = RGB.")
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    resampler: Literal["pil", "torch"] = Field(
        "pil", description="pil: Pillow's resize (torchvision and timm transforms on PIL images); torch: "
        "torchvision's uint8 tensor resize with antialiasing (Hugging Face's torchvision-backed image "
        "processors).")
    normalize: Literal["dataset", "per_image"] = Field(
        "dataset", description="CNN input normalisation: dataset = (x - mean) / std with the per-channel "
        "mean/std below; per_image = per-image standardisation, each image by its own mean and standard "
        "deviation over all pixels and channels (std floored at 1/sqrt(pixels), as "
        "tf.image.per_image_standardization), for archives whose exposure varies image to image.")
    mean: Optional[list[float]] = Field(None, description="CNNs: per-channel mean on the 0..1 scale; "
                                        "default: measured on the training split.")
    std: Optional[list[float]] = Field(None, description="CNNs: per-channel standard deviation; "
                                       "default: measured on the training split.")


class AugmentSpec(Section):
    """Training-only augmentation of CNN inputs (never applied at inference)."""

    hflip: bool = Field(False, description="Random horizontal flips.")
    vflip: bool = Field(False, description="Random vertical flips.")
    rotation: float = Field(0.0, ge=0, le=180, description="Random rotation up to this many degrees.")
    crop_scale: Optional[tuple[float, float]] = Field(None, description="Random resized crop (zoom): "
                                                      "area fraction range, e.g. [0.8, 1.0].")
    brightness: float = Field(0.0, ge=0, description="Random brightness factor range 1 +/- this.")
    contrast: float = Field(0.0, ge=0, description="Random contrast factor range 1 +/- this.")
    blur: float = Field(0.0, ge=0, description="Random Gaussian blur, sigma up to this many pixels.")


class CnnSpec(Section):
    """A CNN trained with Ray Train (CPU workers here, GPU workers where the cluster has GPUs), or in
    this process (workers: 0)."""

    architecture: Optional[str] = Field(None, description="torchvision classification model name, e.g. "
                                        "resnet18 (default: init_weights' architecture).")
    init_weights: Optional[str] = Field(None, description="A torch model artifact to fine-tune from, "
                                        "trained here or imported (torchvision, timm): its network, and "
                                        "its preprocess unless model.preprocess is given; the head is "
                                        "replaced when the label count differs; models:/NAME@champion "
                                        "starts from a registered version (registry.tracking_uri). Default: "
                                        "train from scratch.")
    epochs: int = Field(10, ge=1, description="Most epochs to train.")
    batch_size: int = Field(64, ge=1, description="Images per step and worker.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate (AdamW, cosine decay).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    patience: Optional[int] = Field(3, ge=1, description="Early stopping: epochs without a better "
                                    "validation loss (needs split.validation > 0); null: all epochs.")
    workers: int = Field(1, ge=0, description="Ray Train workers (data-parallel); 0: train in this "
                         "process with the same loop, no worker group to start (small data sets).")
    use_gpu: Literal["auto", True, False] = Field("auto", description="GPU workers: auto when the cluster has GPUs.")
    augment: AugmentSpec = Field(AugmentSpec(), description="Training-only augmentation.")

    @model_validator(mode="after")
    def _network(self) -> "CnnSpec":
        if self.architecture is None and self.init_weights is None:
            raise ValueError("give architecture (a torchvision model name) or init_weights (an artifact)")
        return self


class FeatureSpec(Section):
    name: str = Field(description="Feature extractor: pixels, color_histogram, hog, lbp, glcm, edges, cnn_embedding.")
    params: dict[str, Any] = Field(default_factory=dict, description="Its keyword arguments.")
