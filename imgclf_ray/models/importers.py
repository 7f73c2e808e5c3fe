"""``imgclf model import``: a model trained elsewhere becomes an artifact, read with its own library.

Formats: timm (a hub-style folder, or a model name + checkpoint), hf (a transformers
``save_pretrained`` folder), torchvision (architecture + state_dict, categories and transforms from
torchvision's weights metadata), onnx (ONNX Runtime), skops (a fitted scikit-learn pipeline over one
of our feature extractors). Preprocessing comes from the library's own configuration and is mapped
onto the card's keys; what cannot be reproduced exactly is refused, not approximated. Nothing is
unpickled, downloaded or executed: safetensors, ``torch.load(weights_only=True)``, skops with
trusted types, ONNX through ONNX Runtime; transformers configs that need remote code are refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from imgclf_ray.errors import ArtifactError
from imgclf_ray.models.artifact import ModelCard, PreprocessCard, first_error, write_artifact
from imgclf_ray.models.networks import require
from imgclf_ray.spec import StorageSpec

FORMATS = ("timm", "hf", "torchvision", "onnx", "skops")
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_ONNX_LIMIT = 2 ** 31 - 1  # one protobuf: the largest model kept as a single file


@dataclass
class Found:
    """What an importer read: the card's fields and where each came from."""

    fields: dict[str, Any]
    blob: bytes
    weights_file: str
    weights_format: str
    origins: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_labels(path: str) -> list[str]:
    """One label per line (blank lines ignored); at least two, all distinct."""
    try:
        labels = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"--labels {path}: cannot read ({exc})") from None
    if len(labels) < 2:
        raise ArtifactError(f"--labels {path}: needs at least two labels, one per line")
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise ArtifactError(f"--labels {path}: labels repeat ({', '.join(dup[:5])})")
    return labels


def read_preprocess(path: str) -> dict[str, Any]:
    """The card's preprocessing keys from a JSON or YAML file."""
    import yaml

    from imgclf_ray.spec import load_yaml

    try:
        data = load_yaml(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ArtifactError(f"--preprocess {path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"--preprocess {path}: must be a mapping of preprocessing keys "
                            "(resize, crop, interpolation, mean, std, ...)")
    return data


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: not a JSON object")
    return data


def load_tensors(path: Path, what: str = "weights") -> dict[str, Any]:
    """A state_dict from safetensors, or from a torch file read with ``weights_only=True`` and an
    allowlist of plain types (timm training checkpoints hold an argparse.Namespace). A training
    checkpoint gives its EMA weights when it has them (as timm's load_checkpoint does), else its
    ``state_dict`` / ``model`` entry; a ``module.`` prefix (DataParallel) is dropped."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"{path}: not a safetensors file ({exc})") from None
    import argparse

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an UnpicklingError names the refused global
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{path}: not loadable without unpickling code ({first[:300]}); save the "
                            "state_dict (torch.save(model.state_dict(), ...)) or safetensors instead") from None
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ArtifactError(f"{path}: holds no state_dict of tensors ({what})")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def _load_into(net, state: dict, what: str, n_labels: int) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        text = str(exc)
        if "size mismatch" in text:
            raise ArtifactError(f"{what}: the weights do not fit {n_labels} labels (the output layer has "
                                f"another size: {text.split('size mismatch for ', 1)[1].splitlines()[0][:200]})") from None
        raise ArtifactError(f"{what}: the weights do not fit the architecture ({text.splitlines()[0][:300]})") from None


def _square(h: int, w: int, what: str) -> int:
    if h != w:
        raise ArtifactError(f"{what}: input size {h}x{w} is not square; imgclf feeds square inputs "
                            "(give --preprocess with resize/crop to override)")
    return h


# -- timm -----------------------------------------------------------------------------------------

def _timm_preprocess(net) -> dict[str, Any]:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=net)
    channels, h, w = cfg["input_size"]
    side = _square(h, w, "timm data config")
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


def import_timm(src: Path, labels: Optional[list[str]], architecture: Optional[str], **_) -> Found:
    require("timm")
    import timm

    files: dict[str, Path] = {}
    if src.is_dir():
        files["config.json"] = src / "config.json"
        if not files["config.json"].is_file():
            raise ArtifactError(f"{src}: no config.json (a timm folder as save_for_hf / push_to_hf_hub write it)")
        config = _json(files["config.json"])
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
    _load_into(net, state, f"timm {arch}", n)
    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in net.state_dict().items()})
    return Found(
        fields={"framework": "torch", "library": "timm", "architecture": arch, "labels": labels,
                "preprocess": _timm_preprocess(net),
                "network_config": {"model_args": model_args, "pretrained_cfg": _plain(pretrained_cfg)}},
        blob=blob, weights_file="model.safetensors", weights_format="safetensors",
        origins={"labels": label_origin, "preprocess": f"timm resolve_data_config ({origin})"},
        files={p.name: sha256(p) for p in files.values()})


def _plain(obj):
    """JSON-safe copy (tuples to lists; values JSON cannot hold dropped)."""
    return json.loads(json.dumps(obj, default=lambda o: None))


# -- Hugging Face transformers ---------------------------------------------------------------------

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
    if resample not in _PIL_RESAMPLE:
        raise ArtifactError(f"{name}: resample {resample} cannot be reproduced")
    crop_size = dict(get("crop_size") or {}) if get("do_center_crop") else {}
    crop_side = _square(crop_size["height"], crop_size["width"], name) if crop_size else None
    if "height" in size and "width" in size:
        side = _square(size["height"], size["width"], name)
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
    return {**shape, "crop_offset": "floor", "resampler": backend, "interpolation": _PIL_RESAMPLE[resample],
            "channels": 3, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def import_hf(src: Path, labels: Optional[list[str]], preprocess: Optional[dict], **_) -> Found:
    require("transformers")
    from imgclf_ray.models.networks import offline, transformers_config, transformers_network

    offline()
    if not src.is_dir() or not (src / "config.json").is_file():
        raise ArtifactError(f"{src}: not a save_pretrained folder (no config.json)")
    config = _json(src / "config.json")
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
                                f"({str(exc).splitlines()[0][:200]})") from None
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
                "network_config": _plain(config), **({"task": task} if task else {})},
        blob=blob, weights_file="model.safetensors", weights_format="safetensors",
        origins={"labels": label_origin, "preprocess": f"{reference} (preprocessor_config.json)" if reference
                 else "--preprocess", **({"task": "config.json problem_type"} if task else {})},
        files={p.name: sha256(p) for p in files})


# -- torchvision ----------------------------------------------------------------------------------

def _torchvision_weights(name: str, architecture: Optional[str]):
    import torchvision

    try:
        if "." in name:
            return torchvision.models.get_weight(name)
        if not architecture:
            raise ArtifactError(f"--weights {name}: give the full name (e.g. ResNet50_Weights.{name}) or --architecture")
        return torchvision.models.get_model_weights(architecture)[name]
    except (ValueError, KeyError, AttributeError) as exc:
        raise ArtifactError(f"--weights {name}: not a torchvision weights name ({exc})") from None


def _architecture_of(weights) -> str:
    import torchvision

    for arch in torchvision.models.list_models(module=torchvision.models):
        if torchvision.models.get_model_weights(arch) is type(weights):
            return arch
    raise ArtifactError(f"--weights {weights}: no classification architecture uses these weights")


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
    _load_into(net, state, f"torchvision {arch}", len(labels))
    from safetensors.torch import save

    blob = src.read_bytes() if src.suffix == ".safetensors" else save({k: v.contiguous() for k, v in state.items()})
    return Found(fields={"framework": "torch", "library": "torchvision", "architecture": arch, "labels": labels,
                         "preprocess": preprocess},
                 blob=blob, weights_file="model.safetensors", weights_format="safetensors",
                 origins=origins, files={src.name: sha256(src)})


# -- ONNX -----------------------------------------------------------------------------------------

def _onnx_file(src: Path) -> Path:
    if src.is_dir():
        found = sorted(src.glob("*.onnx"))
        if len(found) != 1:
            raise ArtifactError(f"{src}: needs exactly one .onnx file, found {len(found)}")
        return found[0]
    return src


def _external_files(model, folder: Path) -> list[Path]:
    """The external-data files the model names, each checked to be a plain file inside ``folder``."""
    from onnx.external_data_helper import _get_all_tensors

    import onnx

    root = folder.resolve()
    files = []
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if not location or os.path.isabs(location) or ".." in Path(location).parts or \
                not target.is_relative_to(root):
            raise ArtifactError(f"{tensor.name}: external data at {location!r} is outside the model's "
                                "folder; refused")
        if not target.is_file():
            raise ArtifactError(f"{tensor.name}: external data file {location!r} is missing")
        if target not in files:
            files.append(target)
    return files


def _onnx_metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def import_onnx(src: Path, labels: Optional[list[str]], preprocess: Optional[dict], **_) -> Found:
    require("onnx")
    import onnx

    path = _onnx_file(src)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"{path}: not an ONNX model ({str(exc).splitlines()[0][:200]})") from None
    external = _external_files(model, path.parent)
    if external:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(path.parent))
    meta, origins = _onnx_metadata(model), {}
    if labels is None:
        raw = meta.get("imgclf.labels") or meta.get("labels") or meta.get("class_names")
        if not raw:
            raise ArtifactError(f"{path}: no labels in the model's metadata (labels); give --labels FILE")
        try:
            labels = [str(x) for x in json.loads(raw)]
        except ValueError:
            labels = [x.strip() for x in raw.replace(",", "\n").splitlines() if x.strip()]
        origins["labels"] = "ONNX metadata_props"
    else:
        origins["labels"] = "--labels"
    if preprocess is None:
        raw = meta.get("imgclf.preprocess") or meta.get("preprocess")
        if not raw:
            raise ArtifactError(f"{path}: no preprocessing in the model's metadata (preprocess); give --preprocess FILE")
        try:
            preprocess = json.loads(raw)
        except ValueError:
            raise ArtifactError(f"{path}: metadata 'preprocess' is not JSON") from None
        origins["preprocess"] = "ONNX metadata_props"
    else:
        origins["preprocess"] = "--preprocess"
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ArtifactError(f"{path}: needs exactly one input (an image batch), has {len(inputs)}")
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ArtifactError(f"{path}: the input is rank {len(dims)}, not an (N, C, H, W) batch")
    blob = model.SerializeToString()
    if len(blob) > _ONNX_LIMIT:
        raise ArtifactError(f"{path}: {len(blob) / 2**30:.1f} GiB is more than one ONNX file holds; not supported yet")
    from imgclf_ray.models.onnx_runtime import session

    sess = session(blob, threads=1)
    last = {o: n.op_type for n in model.graph.node for o in n.output}
    outputs = "probabilities" if last.get(model.graph.output[0].name) in ("Softmax", "Sigmoid") else "logits"
    try:
        prep = PreprocessCard.model_validate(preprocess)
    except ValueError as exc:
        raise ArtifactError(f"preprocessing ({origins['preprocess']}): {first_error(exc)}") from None
    side = prep.crop or prep.resize
    for got, want, what in ((dims[1], prep.channels, "channels"), (dims[2], side, "height"), (dims[3], side, "width")):
        if got is not None and got != want:
            raise ArtifactError(f"{path}: the model takes {what} {got}, the preprocessing gives {want}")
    import numpy as np

    probe = sess.run(None, {inputs[0].name: np.zeros((1, prep.channels, side, side), np.float32)})[0]
    if probe.ndim != 2 or probe.shape[1] != len(labels):
        raise ArtifactError(f"{path}: the first output has shape {list(probe.shape)}; {len(labels)} labels need (N, {len(labels)})")
    return Found(fields={"framework": "onnx", "architecture": model.graph.name or path.stem, "labels": labels,
                         "preprocess": preprocess, "outputs": outputs},
                 blob=blob, weights_file="model.onnx", weights_format="onnx", origins={**origins, "outputs": "graph"},
                 files={p.name: sha256(p) for p in [path, *external]})


# -- scikit-learn (skops) ---------------------------------------------------------------------------

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
        raise ArtifactError(f"{src}: not a skops file ({exc})") from None
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


IMPORTERS: dict[str, Callable[..., Found]] = {
    "timm": import_timm, "hf": import_hf, "torchvision": import_torchvision, "onnx": import_onnx,
    "skops": import_skops,
}


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
    found = IMPORTERS[fmt](src, labels=labels, preprocess=user_prep, architecture=architecture,
                           weights=weights, features=features)
    fields = dict(found.fields)
    if user_prep is not None and fmt in ("timm",):
        fields["preprocess"] = {**fields["preprocess"], **user_prep}
        found.origins["preprocess"] = "--preprocess over " + found.origins["preprocess"]
    if task:
        fields["task"] = task
        found.origins["task"] = "--task"
    fields.setdefault("task", "multiclass")
    found.origins.setdefault("task", "default")
    if fields["task"] == "binary" and len(fields["labels"]) != 2:
        raise ArtifactError(f"--task binary needs two labels [negative, positive], the model has {len(fields['labels'])}")
    versions = {}
    for package in ("torch", "torchvision", "timm", "transformers", "onnx", "onnxruntime", "scikit-learn", "skops"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    keep = {"torchvision": ("torch", "torchvision"), "timm": ("torch", "timm"), "hf": ("torch", "transformers"),
            "onnx": ("onnx", "onnxruntime"), "skops": ("scikit-learn", "skops")}[fmt]
    fields["library_versions"] = {k: v for k, v in versions.items() if k in keep}
    fields["source"] = {"format": fmt, "path": str(src.resolve().name), "files": found.files,
                        "from": dict(found.origins)}
    try:
        card = write_artifact(out, fields, found.weights_file, found.weights_format, found.blob, storage)
    except ValueError as exc:  # the card's own validation (pydantic)
        raise ArtifactError(f"the imported model's card is not valid: {first_error(exc)}") from None
    return card, found.origins

