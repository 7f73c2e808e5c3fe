"""The job and training specs: what a YAML file in ``jobs/`` may say, validated before Ray starts.

The sections live in ``imgclf_ray.config`` (pure pydantic models that import nothing of the
runtime; names of extractors, estimators, algorithms and checks are validated against the
registries by a late lookup); this module is the one place the rest of imgclf and users import
them from. Every field carries a description; docs/reference.md is generated from them
(``imgclf reference spec``). Unknown keys are refused (``extra="forbid"``) so that a typo never
silently falls back to a default.
"""

from __future__ import annotations

from imgclf_ray.config.base import (
    DEFAULT_EXTENSIONS,
    PILLOW_MAX_IMAGE_PIXELS,
    LAYOUT_FIELDS,
    SECRET_KEYS,
    plain_name,
    Section,
    StorageSpec,
)
from imgclf_ray.config.source import (
    LabelsSpec,
    ImageTableSpec,
    WebDatasetSpec,
    VideoSpec,
    VIDEO_EXTENSIONS,
    SourceSpec,
    DecodeSpec,
    DEFAULT_DICOM_ATTRIBUTES,
)
from imgclf_ray.config.model import (
    SearchSpec,
    EstimatorSpec,
    check_params,
    OpSpec,
    PreprocessSpec,
    AugmentSpec,
    CnnSpec,
    FeatureSpec,
)
from imgclf_ray.config.curate import (
    ClusterSpec,
    cleanvision_names,
    CurateSpec,
    streaming_algorithms,
)
from imgclf_ray.config.job import (
    ModelSpec,
    ResourcesSpec,
    SinkSpec,
    RunSpec,
    ExampleSpec,
    IncrementalSpec,
    JobSpec,
)
from imgclf_ray.config.train import (
    TrainModelSpec,
    SplitSpec,
    TrainSpec,
)
from imgclf_ray.config.loading import (
    apply_overrides,
    parse_spec,
    MAX_YAML_NODES,
    load_yaml,
    peek_spec,
    apply_values,
    load_spec,
)

__all__ = [
    "DEFAULT_EXTENSIONS",
    "PILLOW_MAX_IMAGE_PIXELS",
    "LAYOUT_FIELDS",
    "SECRET_KEYS",
    "plain_name",
    "Section",
    "StorageSpec",
    "LabelsSpec",
    "ImageTableSpec",
    "WebDatasetSpec",
    "VideoSpec",
    "VIDEO_EXTENSIONS",
    "SourceSpec",
    "DecodeSpec",
    "DEFAULT_DICOM_ATTRIBUTES",
    "SearchSpec",
    "EstimatorSpec",
    "check_params",
    "OpSpec",
    "PreprocessSpec",
    "AugmentSpec",
    "CnnSpec",
    "FeatureSpec",
    "ClusterSpec",
    "CurateSpec",
    "cleanvision_names",
    "streaming_algorithms",
    "ModelSpec",
    "ResourcesSpec",
    "SinkSpec",
    "RunSpec",
    "ExampleSpec",
    "IncrementalSpec",
    "JobSpec",
    "TrainModelSpec",
    "SplitSpec",
    "TrainSpec",
    "apply_overrides",
    "parse_spec",
    "MAX_YAML_NODES",
    "load_yaml",
    "peek_spec",
    "apply_values",
    "load_spec",
]
