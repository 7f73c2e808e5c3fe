"""ONNX Runtime: ONNX artifacts, and torch artifacts run through an ONNX export of themselves.

A torch artifact with ``model.runtime: onnxruntime`` is exported once (torch.onnx, one file) into the
cache folder ``$IMGCLF_CACHE`` (default ``~/.cache/imgclf-ray``) as ``onnx/<model digest>.onnx`` —
never into the model's own folder. The first process on a machine exports under a file lock; the
others wait and reuse the file.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

import numpy as np

from imgclf_ray.errors import ArtifactError, UserError
from imgclf_ray.messages import describe, scrub
from imgclf_ray.models.artifact import ModelCard, read_card, read_weights
from imgclf_ray.registry import CLASSIFIERS
from imgclf_ray.spec import StorageSpec


def cache_dir() -> Path:
    """Where derived files (ONNX exports) are kept: $IMGCLF_CACHE or ~/.cache/imgclf-ray."""
    return Path(os.environ.get("IMGCLF_CACHE") or Path.home() / ".cache" / "imgclf-ray")


def session(model, threads: Optional[int] = None, device: str = "cpu"):
    """An InferenceSession for a model file path or serialized bytes. CUDA needs the separate
    onnxruntime-gpu package; without it the CPU provider runs."""
    from imgclf_ray.models.networks import require

    require("onnx")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    # Its threads sleep between calls instead of spinning: the decode workers share the cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    gpu = device.startswith("cuda")  # cuda, or cuda:N (the local executor's predictor per GPU)
    if gpu:  # checked here, in the actor on its node: the driver's ONNX Runtime says nothing of it
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError(f"model.device cuda: ONNX Runtime {ort.__version__} on this node has no CUDA provider "
                            "(the onnxruntime package runs on CPUs only): install onnxruntime-gpu in its place, or "
                            "set model.device: cpu")
        options = {"use_tf32": "0", "device_id": device.partition(":")[2] or "0"}  # fp32 is IEEE fp32 (default: TF32)
        providers.insert(0, ("CUDAExecutionProvider", options))
    try:
        made = ort.InferenceSession(model, sess_options=opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ArtifactError(f"ONNX Runtime cannot load the model ({type(exc).__name__}: "
                            f"{scrub(exc)})") from None
    if gpu and made.get_providers()[0] != "CUDAExecutionProvider":  # it fell back to the CPU
        raise UserError(f"model.device cuda: ONNX Runtime could not start its CUDA provider on this node (it runs "
                        f"{made.get_providers()[0]}: the CUDA or cuDNN libraries onnxruntime-gpu needs are missing "
                        "or of another version); fix the node's CUDA libraries, or set model.device: cpu")
    return made


def normalise(pixels: np.ndarray, mean: Optional[np.ndarray], std: Optional[np.ndarray]) -> np.ndarray:
    """The float32 model input of a (N, C, H, W) uint8 batch, computed as the torch path does."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    if mean is not None:
        return (x - mean) / std
    flat = x.reshape(len(x), -1)
    floor = np.float32(flat.shape[1] ** -0.5) if len(x) else np.float32(1.0)
    mu = flat.mean(axis=1).reshape(-1, 1, 1, 1)
    sd = np.maximum(flat.std(axis=1), floor).reshape(-1, 1, 1, 1)
    return (x - mu) / sd


def scores(raw: np.ndarray, card: ModelCard) -> np.ndarray:
    """Probabilities from the network's output (logits, or probabilities already)."""
    raw = np.asarray(raw, dtype=np.float32)
    if card.outputs == "probabilities":
        return raw
    if card.task == "multilabel":
        return 1.0 / (1.0 + np.exp(-raw))
    shifted = raw - raw.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


class OnnxClassifier:
    """An ONNX artifact run by ONNX Runtime: ``predict_proba`` maps (N, C, H, W) uint8 to
    (N, classes) float32, like TorchClassifier."""

    def __init__(self, model_uri: str, storage: StorageSpec = StorageSpec(), device: str = "cpu",
                 threads: Optional[int] = None, card: Optional[ModelCard] = None, model=None):
        self.card: ModelCard = card or read_card(model_uri, storage)
        self.model_id = self.card.model_id()
        self.device = device
        self.session = session(model or read_weights(model_uri, self.card, storage), threads, device)
        self.input = self.session.get_inputs()[0].name
        prep = self.card.preprocess
        self._mean = self._std = None
        if prep.normalize == "dataset":
            self._mean = np.asarray(prep.mean, np.float32).reshape(1, -1, 1, 1)
            self._std = np.asarray(prep.std, np.float32).reshape(1, -1, 1, 1)

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        x = normalise(np.asarray(pixels), self._mean, self._std)  # (a CPU tensor: decode.jpeg_on predictor)
        return scores(self.session.run(None, {self.input: x})[0], self.card)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        raise ArtifactError(f"{self.card.architecture}: an ONNX model gives no pre-logits features "
                            "(cnn_embedding needs a torch artifact)")


def export_path(card: ModelCard) -> Path:
    return cache_dir() / "onnx" / f"{card.model_id().split(':', 1)[1]}.onnx"


def exported(net, card: ModelCard) -> Path:
    """The cached ONNX export of ``net`` (an eval-mode fp32 torch module of ``card``), made once."""
    import torch

    from imgclf_ray.models.networks import require

    require("onnx")
    target = export_path(card)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():  # another process exported it while we waited
            return target
        side = card.preprocess.crop or card.preprocess.resize
        example = torch.zeros(2, card.preprocess.channels, side, side)
        tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp")
        try:
            import contextlib
            import io
            import warnings

            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(net, (example,), str(tmp), dynamo=True, external_data=False,
                                  input_names=["pixels"], output_names=["logits"],
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as exc:  # noqa: BLE001 - any exporter failure means no ONNX path
            tmp.unlink(missing_ok=True)
            raise ArtifactError(f"{card.architecture}: cannot be exported to ONNX for model.runtime: "
                                f"onnxruntime ({describe(exc)}); "
                                "use model.runtime: torch") from None
        os.replace(tmp, target)
    return target


def runs_export(runtime: str, device: str, precision: str) -> bool:
    """Whether a torch network's predictor runs its ONNX export on the CPU (``from_export``)."""
    return runtime == "onnxruntime" and device == "cpu" and precision == "fp32"


def from_export(model_uri: str, storage: StorageSpec, card: ModelCard, threads: Optional[int],
                shipped=None) -> Optional[OnnxClassifier]:
    """A torch artifact's ONNX export run on the CPU without PyTorch (the predictor starts ~2 s
    sooner: no torch and torchvision imports): on Ray the driver's, ``shipped`` through the object
    store (an ObjectRef of its bytes) — every node runs that one export, whatever its own torch or
    cache holds — else the one in this machine's cache (the driver, or an earlier predictor here,
    made it). The weights' sha256 is still checked against the card, as loading them would. None
    when neither is there (the predictor exports it itself)."""
    if shipped is not None:
        import ray

        model = ray.get(shipped)
    elif (path := export_path(card)).exists():
        model = str(path)
    else:
        return None
    read_weights(model_uri, card, storage)
    return OnnxClassifier(model_uri, storage, "cpu", threads, card=card, model=model)


@CLASSIFIERS.register("onnx")
def _load(uri: str, storage: StorageSpec, *, device: str, threads: Optional[int], **_) -> OnnxClassifier:
    return OnnxClassifier(uri, storage, device=device, threads=threads)
