"""The cluster and curate sections: clustering algorithms and curation checks by name."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from imgclf_ray import registry
from imgclf_ray.config.base import Section
from imgclf_ray.config.model import check_params, PreprocessSpec, FeatureSpec


AlgorithmName = registry.CLUSTER_ALGORITHMS.name_type()  # imgclf_ray/cluster_algorithms/
CheckName = registry.CURATION_CHECKS.name_type()  # imgclf_ray/curation_checks/


def streaming_algorithms() -> tuple[str, ...]:
    """The clustering algorithms with partial_fit (cluster.fit: stream), as registered now."""
    return tuple(n for n in registry.CLUSTER_ALGORITHMS.names() if registry.CLUSTER_ALGORITHMS.get(n).streaming)


def _default_cluster_preprocess() -> PreprocessSpec:
    return PreprocessSpec(resize=64)


class ClusterSpec(Section):
    """Group the images without labels: features (+ PCA) -> a clusterer fitted on a seeded sample
    (or streamed over the whole archive), then every image assigned inside the pipeline."""

    algorithm: AlgorithmName = Field(
        description="kmeans, minibatch_kmeans, gmm (Gaussian mixture, EM; per-row probability), "
        "meanshift, dbscan, agglomerative or birch (scikit-learn's). Rows are assigned by "
        "nearest centre (kmeans, minibatch_kmeans, meanshift; birch: nearest subcluster centre's "
        "cluster; agglomerative: nearest cluster centroid), by posterior probability (gmm), or "
        "dbscan: the nearest core sample's cluster when within eps, else noise -1.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the "
                                   "scikit-learn class, e.g. {n_clusters: 8} or {eps: 0.5, min_samples: 5}.")
    features: FeatureSpec = Field(FeatureSpec(name="color_histogram"), description="Feature extractor "
                                  "that makes the embedding (cnn_embedding with a backbone artifact "
                                  "for CNN embeddings).")
    preprocess: PreprocessSpec = Field(default_factory=_default_cluster_preprocess,
                                       description="Conditioning before the feature extractor.")
    pca: Optional[int] = Field(None, ge=1, description="Reduce the features to this many principal "
                               "components first (fitted on the sample).")
    fit: Literal["sample", "stream"] = Field(
        "sample", description="sample: fit on a seeded sample; stream: partial_fit over every image "
        "(minibatch_kmeans, birch), PCA still from the sample.")
    sample: int = Field(5000, ge=2, description="Images in the fitting sample.")
    seed: int = Field(0, description="Seed of the sample and of seeded algorithms.")
    artifact: Optional[str] = Field(None, description="Where the fitted clusterer is kept (local or "
                                    "s3://); default <sink.uri>/_clusterers/<name>. A later run reuses "
                                    "it, so cluster ids stay stable from night to night.")
    refit: bool = Field(False, description="Fit anew and replace the artifact even when one exists.")
    embedding: bool = Field(False, description="Write each image's embedding (after PCA) to the "
                            "embedding column.")

    @model_validator(mode="after")
    def _check(self) -> "ClusterSpec":
        from imgclf_ray.registry import EXTRACTORS

        try:
            EXTRACTORS.get(self.features.name)
        except KeyError as exc:
            raise ValueError(f"features: {exc.args[0]}") from None
        if self.fit == "stream" and self.algorithm not in streaming_algorithms():
            raise ValueError(f"fit: stream needs partial_fit, which only "
                             f"{' and '.join(streaming_algorithms())} have")
        check_params(registry.CLUSTER_ALGORITHMS.get(self.algorithm).cls, self.params, "params")
        return self


def cleanvision_names() -> dict[str, str]:
    """cleanvision's issue names (accepted in curate.checks) -> ours, as registered now."""
    checks = registry.CURATION_CHECKS
    return {checks.get(c).cleanvision: c for c in checks.names() if checks.get(c).cleanvision}


class CurateSpec(Section):
    """Per-image quality scores and flags, and archive-wide checks (a second, distributed pass)."""

    checks: Optional[list[CheckName]] = Field(
        None, description="Which checks set their is_<check> flag; default every one the job can "
        "run (outlier needs a cluster section; label_issue a model and source.labels). cleanvision's "
        "names are accepted too: light, odd_aspect_ratio, exact_duplicates, near_duplicates.")
    blur_threshold: float = Field(0.29, ge=0, le=1, description="blurry when blur_score "
                                  "(cleanvision's blurry score, 0..1) is below this (cleanvision's default).")
    dark_threshold: float = Field(0.32, ge=0, le=1, description="dark when dark_score (99th "
                                  "percentile of brightness, 0..1) is below this (cleanvision's default).")
    overexposed_threshold: float = Field(0.05, ge=0, le=1, description="overexposed (cleanvision's "
                                         "light) when light_score (1 - the 5th percentile of "
                                         "brightness) is below this (cleanvision's default).")
    low_information_threshold: float = Field(3.0, ge=0, le=32, description="low_information when "
                                             "entropy (Pillow's Image.entropy(), bits) is below this "
                                             "(cleanvision's 0.3 on entropy / 10).")
    grayscale_threshold: float = Field(0.5, ge=0, le=1, description="grayscale when grayscale_score "
                                       "(0: the file stores one channel, 1: colour) is below this.")
    odd_size_threshold: float = Field(3.0, gt=0, description="odd_size when sqrt(width x height) is "
                                      "outside Q1 - k IQR .. Q3 + k IQR of the run, k = this "
                                      "(cleanvision's iqr_factor).")
    odd_aspect_threshold: float = Field(0.35, gt=0, le=1, description="odd_aspect when aspect_score "
                                        "(min(width / height, height / width)) is below this "
                                        "(cleanvision's default).")
    near_duplicate_radius: int = Field(0, ge=0, le=20, description="near_duplicate when the 64-bit "
                                       "perceptual hashes differ in at most this many bits; 0 (equal "
                                       "hashes) is cleanvision's definition.")

    @field_validator("checks", mode="before")
    @classmethod
    def _cleanvision_names(cls, v: Any) -> Any:
        names = cleanvision_names()
        return [names.get(c, c) if isinstance(c, str) else c for c in v] if isinstance(v, list) else v
    outlier_quantile: float = Field(0.99, gt=0, lt=1, description="outlier when outlier_score "
                                    "exceeds this quantile of the same distance within the "
                                    "clusterer's reference sample.")
