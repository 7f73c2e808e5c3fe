"""torchvision: a state_dict + the weights it started from (categories, transforms)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from imgclf_ray.errors import ArtifactError
from imgclf_ray.messages import describe
from imgclf_ray.models.importers.common import Found, sha256, load_tensors, load_into
from imgclf_ray.registry import MODEL_FORMATS


def _torchvision_weights(name: str, architecture: Optional[str]):
    import torchvision

    try:
        if "." in name:
            return torchvision.models.get_weight(name)
        if not architecture:
            raise ArtifactError(f"--weights {name}: give the full name (e.g. ResNet50_Weights.{name}) or --architecture")
        return torchvision.models.get_model_weights(architecture)[name]
    except (ValueError, KeyError, AttributeError) as exc:
        raise ArtifactError(f"--weights {name}: not a torchvision weights name ({describe(exc)})") from None


def _architecture_of(weights) -> str:
    import torchvision

    for arch in torchvision.models.list_models(module=torchvision.models):
        if torchvision.models.get_model_weights(arch) is type(weights):
            return arch
    raise ArtifactError(f"--weights {weights}: no classification architecture uses these weights")


@MODEL_FORMATS.register("torchvision")
def import_torchvision(src: Path, labels: Optional[list[str]], preprocess: Optional[dict],
                       architecture: Optional[str], weights: Optional[str], **_) -> Found:
    from imgclf_ray.models.networks import build_network

    meta = _torchvision_weights(weights, architecture) if weights else None
    arch = architecture or (_architecture_of(meta) if meta else None)
    if not arch:
        raise ArtifactError("--architecture is needed (a torchvision model name, e.g. resnet50), or --weights")
    origins = {}
    if labels is None:
        if meta is None:
            raise ArtifactError("no labels: give --labels FILE or --weights NAME (its categories)")
        labels = list(meta.meta["categories"])
        origins["labels"] = f"{weights} meta['categories']"
    else:
        origins["labels"] = "--labels"
    if preprocess is None:
        if meta is None:
            raise ArtifactError("no preprocessing: give --preprocess FILE or --weights NAME (its transforms)")
        t = meta.transforms()
        if not all(hasattr(t, k) for k in ("resize_size", "crop_size", "mean", "std", "interpolation")):
            raise ArtifactError(f"--weights {weights}: its transforms are not an image classification's")
        preprocess = {"resize": int(t.resize_size[0]), "crop": int(t.crop_size[0]), "channels": 3,
                      "interpolation": t.interpolation.value, "mean": list(t.mean), "std": list(t.std)}
        origins["preprocess"] = f"{weights}.transforms()"
    else:
        origins["preprocess"] = "--preprocess"
    state = load_tensors(src)
    net = build_network(arch, len(labels))
    load_into(net, state, f"torchvision {arch}", len(labels))
    from safetensors.torch import save

    blob = src.read_bytes() if src.suffix == ".safetensors" else save({k: v.contiguous() for k, v in state.items()})
    return Found(fields={"framework": "torch", "library": "torchvision", "architecture": arch, "labels": labels,
                         "preprocess": preprocess},
                 blob=blob, weights_file="model.safetensors", weights_format="safetensors",
                 origins=origins, files={src.name: sha256(src)})


import_torchvision.libraries = ('torch', 'torchvision')  # recorded in the card's library_versions

