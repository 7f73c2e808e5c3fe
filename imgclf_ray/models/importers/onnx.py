"""ONNX: a .onnx file or its folder with external data, run by ONNX Runtime."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from imgclf_ray.errors import ArtifactError
from imgclf_ray.messages import scrub
from imgclf_ray.models.artifact import PreprocessCard, first_error
from imgclf_ray.models.importers.common import Found, sha256
from imgclf_ray.models.networks import require
from imgclf_ray.registry import MODEL_FORMATS


_ONNX_LIMIT = 2 ** 31 - 1  # one protobuf: the largest model kept as a single file


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


@MODEL_FORMATS.register("onnx")
def import_onnx(src: Path, labels: Optional[list[str]], preprocess: Optional[dict], **_) -> Found:
    require("onnx")
    import onnx

    path = _onnx_file(src)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"{path}: not an ONNX model ({scrub(exc)})") from None
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


import_onnx.libraries = ('onnx', 'onnxruntime')  # recorded in the card's library_versions

