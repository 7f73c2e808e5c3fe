"""Hugging Face transformers: a save_pretrained folder; remote code refused."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from imgclf_ray.errors import ArtifactError
from imgclf_ray.messages import scrub
from imgclf_ray.models.importers.common import PIL_RESAMPLE, Found, sha256, read_json, load_tensors, square, plain
from imgclf_ray.models.networks import require
from imgclf_ray.registry import MODEL_FORMATS


def _hf_preprocess(proc) -> dict[str, Any]:
    """Card preprocessing equal to a transformers image processor's, or ArtifactError naming what
    it does that the card cannot."""
    name = type(proc).__name__
    get = lambda k, d=None: getattr(proc, k, d)  # noqa: E731
    if not get("do_resize", False):
        raise ArtifactError(f"{name}: does not resize; give --preprocess")
    for flag in ("do_pad", "do_reduce_labels"):
        if get(flag):
            raise ArtifactError(f"{name}: {flag} cannot be reproduced; give --preprocess")
    if get("do_rescale", True) and not math.isclose(float(get("rescale_factor", 1 / 255)), 1 / 255, rel_tol=1e-6):
        raise ArtifactError(f"{name}: rescale_factor {get('rescale_factor')} is not 1/255; give --preprocess")
    if get("rescale_offset"):
        raise ArtifactError(f"{name}: rescale_offset cannot be reproduced; give --preprocess")
    size = dict(get("size") or {})
    resample = get("resample", 2)
    resample = int(getattr(resample, "value", resample))
    if resample not in PIL_RESAMPLE:
        raise ArtifactError(f"{name}: resample {resample} cannot be reproduced")
    crop_size = dict(get("crop_size") or {}) if get("do_center_crop") else {}
    crop_side = square(crop_size["height"], crop_size["width"], name) if crop_size else None
    if "height" in size and "width" in size:
        side = square(size["height"], size["width"], name)
        if crop_side not in (None, side):
            raise ArtifactError(f"{name}: a crop after a resize to a fixed size cannot be reproduced")
        shape = {"resize": side, "crop": None}
    elif "shortest_edge" in size and not size.get("longest_edge"):
        edge = int(size["shortest_edge"])
        if get("crop_pct") is not None and crop_side is None:  # ConvNeXt's rule
            shape = ({"resize": int(edge / get("crop_pct")), "crop": edge} if edge < 384
                     else {"resize": edge, "crop": None})
        elif crop_side is not None:
            shape = {"resize": edge, "crop": crop_side}
        else:
            raise ArtifactError(f"{name}: resizes the shortest edge without a crop (inputs of varying "
                                "shape); give --preprocess")
    else:
        raise ArtifactError(f"{name}: size {size} cannot be reproduced; give --preprocess")
    mean, std = ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    if get("do_normalize", False):
        mean, std = list(get("image_mean")), list(get("image_std"))
    backend = "torch" if any(c.__name__ == "TorchvisionBackend" for c in type(proc).__mro__) else "pil"
    return {**shape, "crop_offset": "floor", "resampler": backend, "interpolation": PIL_RESAMPLE[resample],
            "channels": 3, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


@MODEL_FORMATS.register("hf")
def import_hf(src: Path, labels: Optional[list[str]], preprocess: Optional[dict], **_) -> Found:
    require("transformers")
    from imgclf_ray.models.networks import offline, transformers_config, transformers_network

    offline()
    if not src.is_dir() or not (src / "config.json").is_file():
        raise ArtifactError(f"{src}: not a save_pretrained folder (no config.json)")
    config = read_json(src / "config.json")
    cfg = transformers_config(config)
    files = [src / "config.json"]
    weights = next((src / n for n in ("model.safetensors", "pytorch_model.bin") if (src / n).is_file()), None)
    if weights is None:
        shards = "model.safetensors.index.json"
        raise ArtifactError(f"{src}: no model.safetensors or pytorch_model.bin"
                            + (" (sharded weights: save with a larger max_shard_size)" if (src / shards).exists() else ""))
    files.append(weights)
    state = load_tensors(weights)
    if labels is not None:
        if len(labels) != cfg.num_labels:
            raise ArtifactError(f"{len(labels)} labels for a model with {cfg.num_labels} outputs (config.json id2label)")
        label_origin = "--labels"
    else:
        labels = [str(cfg.id2label[i]) for i in range(cfg.num_labels)]
        label_origin = "config.json id2label"
    net = transformers_network(cfg, state)
    reference = None
    if preprocess is None:
        if not (src / "preprocessor_config.json").is_file():
            raise ArtifactError(f"{src}: no preprocessor_config.json; give --preprocess")
        from transformers import AutoImageProcessor

        try:
            proc = AutoImageProcessor.from_pretrained(str(src.resolve()), local_files_only=True, trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"{src}/preprocessor_config.json: not a transformers image processor "
                                f"({scrub(exc)})") from None
        files.append(src / "preprocessor_config.json")
        reference = type(proc).__name__
        preprocess = _hf_preprocess(proc)
    task = "multilabel" if cfg.problem_type == "multi_label_classification" else None
    from safetensors.torch import save

    blob = weights.read_bytes() if weights.suffix == ".safetensors" else \
        save({k: v.clone().contiguous() for k, v in state.items()})
    del net
    return Found(
        fields={"framework": "torch", "library": "transformers", "architecture": type(cfg).__name__.replace("Config", "")
                + "ForImageClassification", "labels": labels, "preprocess": preprocess,
                "network_config": plain(config), **({"task": task} if task else {})},
        blob=blob, weights_file="model.safetensors", weights_format="safetensors",
        origins={"labels": label_origin, "preprocess": f"{reference} (preprocessor_config.json)" if reference
                 else "--preprocess", **({"task": "config.json problem_type"} if task else {})},
        files={p.name: sha256(p) for p in files})


import_hf.libraries = ('torch', 'transformers')  # recorded in the card's library_versions

