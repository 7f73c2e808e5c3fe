"""scikit-learn: a fitted pipeline over one of imgclf's feature extractors, saved with skops."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from imgclf_ray.errors import ArtifactError
from imgclf_ray.messages import describe
from imgclf_ray.models.importers.common import Found, sha256
from imgclf_ray.registry import MODEL_FORMATS


@MODEL_FORMATS.register("skops")
def import_skops(src: Path, labels: Optional[list[str]], preprocess: Optional[dict], features: Optional[str],
                 **_) -> Found:
    import skops.io as sio

    from imgclf_ray.models.sklearn_classifier import TRUSTED_TYPES

    if not features:
        raise ArtifactError("--features NAME is needed with skops (the extractor the pipeline was fitted on: "
                            "pixels, color_histogram, hog, lbp, glcm, edges; or '{name: hog, params: {...}}')")
    from imgclf_ray.spec import load_yaml

    parsed = load_yaml(features)
    feature_spec = parsed if isinstance(parsed, dict) else {"name": str(features)}
    if preprocess is None:
        raise ArtifactError("--preprocess FILE is needed with skops (resize, crop, channels the features saw)")
    blob = src.read_bytes()
    try:
        untrusted = sio.get_untrusted_types(data=blob)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"{src}: not a skops file ({describe(exc)})") from None
    refused = sorted(set(untrusted) - TRUSTED_TYPES)
    if refused:
        raise ArtifactError(f"{src}: holds types that are not trusted: {', '.join(refused)}; refused")
    est = sio.loads(blob, trusted=sorted(untrusted))
    classes = [str(c) for c in getattr(est, "classes_", [])]
    labels = labels or classes
    return Found(fields={"framework": "sklearn", "architecture": type(est).__name__, "labels": labels,
                         "preprocess": preprocess, "features": feature_spec,
                         "scores": "probability" if hasattr(est, "predict_proba") else "uncalibrated"},
                 blob=blob, weights_file="model.skops", weights_format="skops",
                 origins={"labels": "--labels" if labels is not classes else "estimator classes_",
                          "preprocess": "--preprocess"}, files={src.name: sha256(src)})


import_skops.libraries = ('scikit-learn', 'skops')  # recorded in the card's library_versions

