"""timm: a hub-style folder (config.json + weights) or a model name + checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from imgclf_ray.errors import ArtifactError
from imgclf_ray.models.importers.common import Found, sha256, read_json, load_tensors, load_into, square, plain
from imgclf_ray.models.networks import require
from imgclf_ray.registry import MODEL_FORMATS


def _timm_preprocess(net) -> dict[str, Any]:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=net)
    channels, h, w = cfg["input_size"]
    side = square(h, w, "timm data config")
    crop_pct, mode = cfg.get("crop_pct") or 1.0, cfg.get("crop_mode") or "center"
    interpolation = cfg.get("interpolation", "bilinear")
    if interpolation not in ("nearest", "bilinear", "bicubic", "lanczos"):
        raise ArtifactError(f"timm data config: interpolation {interpolation!r} cannot be reproduced")
    scale = math.floor(side / crop_pct)
    if mode == "center":
        shape = {"resize": scale, "crop": side}
    elif mode == "squash" and scale == side:
        shape = {"resize": side, "crop": None}
    else:
        raise ArtifactError(f"timm data config: crop_mode {mode!r} with crop_pct {crop_pct} cannot be "
                            "reproduced; give --preprocess")
    return {**shape, "channels": channels, "interpolation": interpolation,
            "mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]]}


def _timm_labels(net, n: int) -> Optional[list[str]]:
    """ImageNet class names for an ImageNet head (timm ships them), else None."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(net)
        if subset:
            names = ImageNetInfo(subset).label_descriptions(as_dict=False)
            names = [d.split(",")[0].strip() for d in names]
            if len(names) == n and len(set(names)) == n:
                return names
            names = ImageNetInfo(subset).label_names()
            return list(names) if len(names) == n else None
    except Exception:  # noqa: BLE001 - no ImageNet metadata: labels must be given
        return None
    return None


@MODEL_FORMATS.register("timm")
def import_timm(src: Path, labels: Optional[list[str]], architecture: Optional[str],
                preprocess: Optional[dict] = None, **_) -> Found:
    require("timm")
    import timm

    files: dict[str, Path] = {}
    if src.is_dir():
        files["config.json"] = src / "config.json"
        if not files["config.json"].is_file():
            raise ArtifactError(f"{src}: no config.json (a timm folder as save_for_hf / push_to_hf_hub write it)")
        config = read_json(files["config.json"])
        arch = architecture or config.get("architecture")
        if not arch:
            raise ArtifactError(f"{files['config.json']}: no 'architecture'")
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (src / name).is_file():
                files["weights"] = src / name
                break
        else:
            raise ArtifactError(f"{src}: no model.safetensors or pytorch_model.bin")
        model_args = {k: v for k, v in (config.get("model_args") or {}).items() if k != "num_classes"}
        pretrained_cfg = dict(config.get("pretrained_cfg") or {})
        found_labels = config.get("label_names") or pretrained_cfg.get("label_names")
        origin = f"{files['config.json'].name}"
    else:
        if not architecture:
            raise ArtifactError("--architecture is needed with a timm checkpoint file (the timm model name)")
        arch, files["weights"], config, model_args, found_labels = architecture, src, {}, {}, None
        pretrained_cfg = {}
        origin = "timm's default pretrained_cfg"
    if not timm.is_model(arch):
        raise ArtifactError(f"unknown timm architecture {arch!r} (see timm.list_models())")
    state = load_tensors(files["weights"])
    if not pretrained_cfg:
        default = timm.models.get_pretrained_cfg(arch)
        pretrained_cfg = dict(default.to_dict()) if default else {}
    probe = timm.create_model(arch, pretrained=False, pretrained_cfg=pretrained_cfg or None, **model_args)
    head = probe.get_classifier()
    head_key = next((k for k, m in probe.named_modules() if m is head), None)
    n = int(state[f"{head_key}.weight"].shape[0]) if head_key and f"{head_key}.weight" in state else \
        int(config.get("num_classes") or 0)
    net = timm.create_model(arch, pretrained=False, num_classes=n, pretrained_cfg=pretrained_cfg or None, **model_args)
    if labels is None:
        labels = [str(x) for x in found_labels] if found_labels else _timm_labels(net, n)
        label_origin = origin + " label_names" if found_labels else "timm's ImageNet class names"
        if labels is None:
            raise ArtifactError(f"{src}: no label names in the model; give --labels FILE (one per line, {n} labels)")
    else:
        label_origin = "--labels"
    if len(labels) != n:
        raise ArtifactError(f"{len(labels)} labels for a timm {arch} whose head has {n} outputs")
    load_into(net, state, f"timm {arch}", n)
    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in net.state_dict().items()})
    return Found(
        fields={"framework": "torch", "library": "timm", "architecture": arch, "labels": labels,
                "preprocess": {**_timm_preprocess(net), **(preprocess or {})},
                "network_config": {"model_args": model_args, "pretrained_cfg": plain(pretrained_cfg)}},
        blob=blob, weights_file="model.safetensors", weights_format="safetensors",
        origins={"labels": label_origin, "preprocess": ("--preprocess over " if preprocess else "") +
                 f"timm resolve_data_config ({origin})"},
        files={p.name: sha256(p) for p in files.values()})


import_timm.libraries = ('torch', 'timm')  # recorded in the card's library_versions

