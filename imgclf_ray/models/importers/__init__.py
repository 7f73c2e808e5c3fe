"""``imgclf model import``: a model trained elsewhere becomes an artifact, read with its own library.

Formats: timm (a hub-style folder, or a model name + checkpoint), hf (a transformers
``save_pretrained`` folder), torchvision (architecture + state_dict, categories and transforms from
torchvision's weights metadata), onnx (ONNX Runtime), skops (a fitted scikit-learn pipeline over one
of our feature extractors). Preprocessing comes from the library's own configuration and is mapped
onto the card's keys; what cannot be reproduced exactly is refused, not approximated. Nothing is
unpickled, downloaded or executed: safetensors, ``torch.load(weights_only=True)``, skops with
trusted types, ONNX through ONNX Runtime; transformers configs that need remote code are refused.

One module per format registers its importer (``registry.MODEL_FORMATS``): a new format is
a new module here; tests/models/test_import.py checks each against its library's own inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from imgclf_ray.errors import ArtifactError
from imgclf_ray.models.artifact import ModelCard, first_error, write_artifact
from imgclf_ray.models.importers.common import read_labels, read_preprocess
from imgclf_ray.registry import MODEL_FORMATS
from imgclf_ray.spec import StorageSpec


def import_model(fmt: str, source: str, out: str, labels_file: Optional[str] = None,
                 preprocess_file: Optional[str] = None, architecture: Optional[str] = None,
                 weights: Optional[str] = None, task: Optional[str] = None, features: Optional[str] = None,
                 storage: StorageSpec = StorageSpec()) -> tuple[ModelCard, dict[str, str]]:
    """Import ``source`` (a local file or folder) in ``fmt`` as an artifact at ``out``; returns the
    card and where its labels, preprocessing (and task) came from."""
    import importlib.metadata as md

    src = Path(source)
    if not src.exists():
        raise ArtifactError(f"{source}: no such file or folder")
    labels = read_labels(labels_file) if labels_file else None
    user_prep = read_preprocess(preprocess_file) if preprocess_file else None
    importer = MODEL_FORMATS.get(fmt)
    found = importer(src, labels=labels, preprocess=user_prep, architecture=architecture,
                     weights=weights, features=features)
    fields = dict(found.fields)
    if task:
        fields["task"] = task
        found.origins["task"] = "--task"
    fields.setdefault("task", "multiclass")
    found.origins.setdefault("task", "default")
    if fields["task"] == "binary" and len(fields["labels"]) != 2:
        raise ArtifactError(f"--task binary needs two labels [negative, positive], the model has {len(fields['labels'])}")
    versions = {}
    for package in importer.libraries:  # what the card records of the importing libraries
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    fields["library_versions"] = versions
    fields["source"] = {"format": fmt, "path": str(src.resolve().name), "files": found.files,
                        "from": dict(found.origins)}
    try:
        card = write_artifact(out, fields, found.weights_file, found.weights_format, found.blob, storage)
    except ValueError as exc:  # the card's own validation (pydantic)
        raise ArtifactError(f"the imported model's card is not valid: {first_error(exc)}") from None
    return card, found.origins
