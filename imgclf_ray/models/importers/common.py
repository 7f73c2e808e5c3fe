"""What every importer shares: what it found, label and preprocess files, tensors, checks."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf_ray.errors import ArtifactError
from imgclf_ray.messages import describe


PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


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
        raise ArtifactError(f"--labels {path}: cannot read ({describe(exc)})") from None
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
        raise ArtifactError(f"--preprocess {path}: cannot read ({describe(exc)})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"--preprocess {path}: must be a mapping of preprocessing keys "
                            "(resize, crop, interpolation, mean, std, ...)")
    return data


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{path}: not readable JSON ({describe(exc)})") from None
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
            raise ArtifactError(f"{path}: not a safetensors file ({describe(exc)})") from None
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


def load_into(net, state: dict, what: str, n_labels: int) -> None:
    """Load ``state`` into ``net``; an ArtifactError that says whether only the output layer differs
    (another number of labels) or the weights are another architecture's."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    output_layer = set(list(expected)[-2:])  # the last weight and bias
    if not missing and not unexpected and shapes and set(shapes) <= output_layer:
        got = tuple(state[shapes[0]].shape)[0]
        raise ArtifactError(f"{what}: the weights' output layer has {got} outputs, not {n_labels} labels "
                            "(give --labels with as many labels as the model has outputs)")
    if missing or unexpected or shapes:
        example = (shapes or missing or unexpected)[0]
        raise ArtifactError(f"{what}: the weights are not this architecture's ({len(shapes)} tensors of another "
                            f"shape, {len(missing)} missing, {len(unexpected)} unexpected, e.g. {example}); check "
                            "the architecture name (--weights / --arch) against the file")
    net.load_state_dict(state, strict=True)


def square(h: int, w: int, what: str) -> int:
    if h != w:
        raise ArtifactError(f"{what}: input size {h}x{w} is not square; imgclf feeds square inputs "
                            "(give --preprocess with resize/crop to override)")
    return h


def plain(obj):
    """JSON-safe copy (tuples to lists; values JSON cannot hold dropped)."""
    return json.loads(json.dumps(obj, default=lambda o: None))
