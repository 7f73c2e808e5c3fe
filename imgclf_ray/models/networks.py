"""Networks by library: torchvision, timm and Hugging Face transformers build the module a card
names; the weights are loaded into it afterwards. Nothing is downloaded and no remote code runs."""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Optional

from imgclf_ray.errors import ArtifactError
from imgclf_ray.extras import pip_install
from imgclf_ray.messages import scrub

# The optional libraries and the extra that installs them.
_PACKAGES = {"timm": "timm", "transformers": "transformers", "onnx": "onnxruntime"}
_PROJECT = "reinstall imgclf-ray from its source (onnx and onnxruntime are its dependencies)"


def require(library: str) -> None:
    """ArtifactError naming the extra to install when ``library``'s package is missing."""
    package = _PACKAGES.get(library)
    if package and importlib.util.find_spec(package) is None:
        raise ArtifactError(f"this model needs {package}, which is not installed: "
                            f"{_PROJECT if library == 'onnx' else pip_install('models')}")


def offline() -> None:
    """Hugging Face libraries must never reach a hub: a missing local file is an error here."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def build_network(architecture: str, num_classes: int, library: str = "torchvision",
                  config: Optional[dict[str, Any]] = None):
    """An untrained classification network by library and name (weights never downloaded)."""
    require(library)
    config = config or {}
    if library == "timm":
        import timm

        if not timm.is_model(architecture):
            raise ArtifactError(f"unknown architecture {architecture!r}: not a timm model (see timm.list_models())")
        args = {k: v for k, v in config.get("model_args", {}).items() if k != "num_classes"}
        pretrained_cfg = config.get("pretrained_cfg") or None
        return timm.create_model(architecture, pretrained=False, num_classes=num_classes,
                                 pretrained_cfg=pretrained_cfg, **args)
    if library == "transformers":
        return transformers_network(transformers_config(config, num_classes))
    import torchvision

    if architecture not in torchvision.models.list_models(module=torchvision.models):
        raise ArtifactError(f"unknown architecture {architecture!r}: not a torchvision "
                            "classification model (see torchvision.models.list_models())")
    return torchvision.models.get_model(architecture, weights=None, num_classes=num_classes)


def transformers_config(config: dict[str, Any], num_classes: Optional[int] = None):
    """A transformers config from its config.json dict; refuses configs that need remote code."""
    offline()
    if config.get("auto_map"):
        raise ArtifactError("the Hugging Face config names its own code (auto_map: trust_remote_code); "
                            "imgclf never runs a model's own code: export it to ONNX instead")
    from transformers import AutoConfig

    model_type = config.get("model_type")
    try:
        cfg = AutoConfig.for_model(model_type, **{k: v for k, v in config.items() if k != "model_type"})
    except (ValueError, KeyError) as exc:
        raise ArtifactError(f"Hugging Face config: model_type {model_type!r} is not a transformers model "
                            f"({scrub(exc)})") from None
    if num_classes is not None and cfg.num_labels != num_classes:
        raise ArtifactError(f"the Hugging Face config has {cfg.num_labels} labels, the card {num_classes}")
    return cfg


def transformers_class(cfg):
    """The transformers image-classification class for a config (by its model type, from the
    library's own mapping; never a name taken from the file alone)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    name = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(cfg.model_type)
    if name is None:
        raise ArtifactError(f"Hugging Face model_type {cfg.model_type!r} has no image-classification "
                            "class in transformers")
    return getattr(transformers, name)


def transformers_network(cfg, state_dict: Optional[dict] = None):
    """The image classifier for ``cfg``, with ``state_dict`` loaded the way ``from_pretrained``
    loads a saved folder (transformers renames saved keys to its current layout on load)."""
    import logging

    cls = transformers_class(cfg)
    if state_dict is None:
        return cls(cfg)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)
    try:
        net, info = cls.from_pretrained(None, config=cfg, state_dict=state_dict, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)
    wrong = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if wrong:
        first = {k: sorted(map(str, v))[:3] for k, v in wrong.items()}
        raise ArtifactError(f"the weights do not fit {cls.__name__} ({first})")
    return net


def logits(out):
    """The logits tensor of a forward pass: a tensor, a Hugging Face output (``.logits``), a dict
    with ``logits``, or the first element of a tuple."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        if "logits" in out:
            return out["logits"]
        raise ArtifactError(f"the network returned a dict without 'logits' (keys {sorted(out.keys())[:5]})")
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ArtifactError(f"the network returned a {type(out).__name__}, not logits")
