"""The training spec (imgclf train): data, model, split."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PrivateAttr, model_validator

from imgclf_ray.config.base import PlainName, Section, StorageSpec
from imgclf_ray.config.job import ResourcesSpec, RunSpec, ExampleSpec
from imgclf_ray.config.model import EstimatorSpec, PreprocessSpec, CnnSpec, FeatureSpec
from imgclf_ray.config.source import SourceSpec, DecodeSpec


class TrainModelSpec(Section):
    """What to train and where to put it: an estimator over features, or a CNN."""

    output: str = Field(description="Artifact folder to write (local or s3://).")
    preprocess: Optional[PreprocessSpec] = Field(None, description="Conditioning (before feature "
                                                 "extraction); default with cnn.init_weights: that "
                                                 "artifact's.")
    features: Optional[FeatureSpec] = Field(None, description="Feature extractor (with estimator).")
    estimator: Optional[EstimatorSpec] = Field(None, description="A scikit-learn classifier.")
    cnn: Optional[CnnSpec] = Field(None, description="A torchvision CNN (instead of an estimator).")

    @model_validator(mode="after")
    def _one_kind(self) -> "TrainModelSpec":
        if (self.estimator is None) == (self.cnn is None):
            raise ValueError("give either estimator (with features) or cnn")
        if self.estimator is not None and self.features is None:
            raise ValueError("an estimator needs features: {name: ...}")
        if self.preprocess is None and (self.cnn is None or self.cnn.init_weights is None):
            raise ValueError("preprocess is required (resize, crop, ...) unless cnn.init_weights gives it")
        return self


class SplitSpec(Section):
    """Seeded, stratified train / validation / test split."""

    test: float = Field(0.2, gt=0, lt=1, description="Fraction held out for the test metrics.")
    validation: float = Field(0.0, ge=0, lt=1, description="Fraction of the rest held for validation: "
                              "multilabel threshold tuning and CNN early stopping (0: neither).")
    seed: int = Field(0, description="Seed of the split (and of seeded estimators).")


class RegistrySpec(Section):
    """Register each trained artifact as a version in an MLflow model registry."""

    tracking_uri: Optional[str] = Field(None, description="The registry (absolute: sqlite:////srv/mlflow.db, "
                                        "http://mlflow:5000); default $MLFLOW_TRACKING_URI.")
    name: Optional[PlainName] = Field(None, description="The registered model (and experiment) name; default "
                                      "the training spec's name.")


class TrainSpec(Section):
    """`imgclf train`: fit a model (a scikit-learn estimator over features, or a CNN) on a labelled
    archive and write a safe artifact."""

    _overridden: tuple[str, ...] = PrivateAttr(default=())  # the dotted keys set on the command line

    name: PlainName = Field(description="Training job name (a plain name: letters, digits, '_', '-', '.').")
    description: str = Field("", description="Free text for people.")
    data: SourceSpec = Field(description="The labelled archive; data.labels says where the labels are.")
    decode: DecodeSpec = Field(DecodeSpec(), description="How bytes become pixels.")
    task: Literal["multiclass", "binary", "multilabel", "hierarchical"] = Field(
        "multiclass", description="hierarchical: one model per parent node of the label paths "
        "(folders fruit/apple/...), each trained on its branch's images.")
    positive: Optional[str] = Field(None, description="binary: the positive label (default: the "
                                    "second in sorted order).")
    model: TrainModelSpec = Field(description="What to train.")
    split: SplitSpec = Field(SplitSpec(), description="How the data is split.")
    storage: StorageSpec = Field(StorageSpec(), description="Object-storage settings.")
    resources: ResourcesSpec = Field(ResourcesSpec(), description="Planner overrides (decode batch size).")
    run: RunSpec = Field(RunSpec(), description="ray_address for the feature-extraction pass.")
    example: Optional[ExampleSpec] = Field(None, description="Materialise bundled example data into "
                                           "data.uri (example.model is not used).")
    registry: Optional[RegistrySpec] = Field(None, description="Log the training in MLflow and register the "
                                             "artifact as a new version (the [mlflow] extra); its tracking_uri "
                                             "also resolves a models:/ cnn.init_weights.")

    @model_validator(mode="after")
    def _needs_labels(self) -> "TrainSpec":
        if self.data.labels is None:
            raise ValueError("data.labels must say where the labels are (e.g. {kind: folder})")
        if self.data.container:
            raise ValueError(f"data.{self.data.container}: training reads one image per file (image "
                             "tables, shards and videos are read by imgclf run, not yet by imgclf train)")
        return self
