"""A torch network (torchvision, timm, transformers, TorchScript) applied to preprocessed uint8
batches, in torch or through ONNX Runtime. Knows nothing of Ray."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import numpy as np

from imgclf_ray import faults
from imgclf_ray.errors import ArtifactError
from imgclf_ray.messages import describe, scrub
from imgclf_ray.models.artifact import ModelCard, load_state_dict, read_card, read_weights
from imgclf_ray.models.networks import build_network, logits, transformers_config, transformers_network
from imgclf_ray.registry import CLASSIFIERS
from imgclf_ray.spec import StorageSpec

__all__ = ["TorchClassifier", "build_network", "normalise", "embedder"]


def normalise(pixels, mean=None, std=None):
    """A (N, C, H, W) uint8 tensor -> float on the 0..1 scale, then ``(x - mean) / std`` with
    per-channel (1, C, 1, 1) tensors, or, with ``mean`` None, per-image standardisation: each image
    by its own mean and standard deviation over all its values, the deviation floored at
    1/sqrt(values) (tf.image.per_image_standardization's rule; a flat image becomes zeros)."""
    x = pixels.float() / 255.0
    if mean is not None:
        return (x - mean) / std
    dims = tuple(range(1, x.ndim))
    floor = x[0].numel() ** -0.5 if len(x) else 1.0
    return (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True, correction=0).clamp_min(floor)


def _load_torchscript(uri: str, card: ModelCard, storage: StorageSpec):
    """A TorchScript module (a zip of code and tensors, not a pickle), digest checked first."""
    import io
    import warnings

    import torch

    blob = read_weights(uri, card, storage)
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated upstream in favour of torch.export; the files still load.
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(io.BytesIO(blob), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
        raise ArtifactError(f"{uri}/{card.weights.file}: not a TorchScript file ({describe(exc)})") from None


@functools.lru_cache(maxsize=4)
def embedder(uri: str) -> "TorchClassifier":
    """One CPU, one-thread classifier per backbone and process, for the cnn_embedding extractor."""
    return TorchClassifier(uri, device="cpu", threads=1)


def _fold_batch_norm(net):
    """Fold each batch-norm into the convolution before it (inference only; the same function up
    to float rounding, one pass over memory less per layer). Networks torch.fx cannot trace, and
    TorchScript modules, are returned unchanged."""
    import torch

    if isinstance(net, torch.jit.ScriptModule):
        return net
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(net)
    except Exception:  # noqa: BLE001 - an untraceable network runs unfused
        return net


def _native_bf16() -> bool:
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def fp32_math(precision: str) -> None:
    """fp32 means IEEE fp32 on a GPU too: cuDNN runs fp32 convolutions in TF32 (a 10-bit mantissa)
    by default on Ampere and later, which moves probabilities in the third decimal; precision tf32
    asks for it. Set per process (an actor holds one model), for a torch network on a GPU."""
    import torch

    # The legacy flags: torch's new fp32_precision API makes the legacy getters raise, and
    # torch.export (the ONNX export) reads them.
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def _network_of(model_uri: str, card: ModelCard, storage: StorageSpec, trusted: bool):
    """The artifact's torch network, its weights loaded (TorchScript only when ``trusted``)."""
    if card.weights.format == "torchscript":
        if not trusted:
            from imgclf_ray.models.hierarchy import refuse_code

            refuse_code(model_uri, storage)
        return _load_torchscript(model_uri, card, storage)
    n = len(card.labels)
    state = load_state_dict(model_uri, card, storage)
    if card.library == "transformers":
        return transformers_network(transformers_config(card.network_config, n), state)
    net = build_network(card.architecture, n, card.library, card.network_config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{model_uri}: weights do not fit {card.library} {card.architecture} with "
                            f"{n} classes ({scrub(exc)})") from None
    return net


def onnx_export(model_uri: str, storage: StorageSpec = StorageSpec(), trusted: bool = False) -> Path:
    """The artifact's ONNX export in the cache (``onnx_runtime.exported``): found, or made now from
    the network, without loading any runtime session."""
    from imgclf_ray.models import onnx_runtime

    card = read_card(model_uri, storage)
    made = onnx_runtime.export_path(card)
    if made.exists():
        return made
    return onnx_runtime.exported(_network_of(model_uri, card, storage, trusted).eval(), card)


def _device(device: str, runtime: str) -> str:
    """The predictor's device: ``auto`` resolved here; a GPU the run planned (Ray grants GPUs by
    count) refused, before the weights load, where this node's PyTorch sees none — it would fail
    in the first batch with PyTorch's own error (ONNX Runtime checks its CUDA provider itself)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = faults.device(device)
    if device.startswith("cuda") and runtime != "onnxruntime" and not torch.cuda.is_available():
        import os

        why = "a CPU-only build" if torch.version.cuda is None else "no usable NVIDIA driver"
        raise ArtifactError(
            f"the run planned this predictor on a GPU (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}) but PyTorch {torch.__version__} on its node sees no "
            f"CUDA device ({why}); install a CUDA build of torch on the GPU nodes, or set model.device: cpu")
    return device


class TorchClassifier:
    """Loads an artifact once; ``predict_proba`` maps (N, C, H, W) uint8 to (N, classes) float32."""

    def __init__(self, model_uri: str, storage: StorageSpec = StorageSpec(),
                 device: str = "auto", threads: Optional[int] = None, precision: str = "fp32",
                 trusted: bool = False, runtime: str = "torch", calls: int = 1, card: Optional[ModelCard] = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.card: ModelCard = card or read_card(model_uri, storage)
        self.model_id = self.card.model_id()
        device = _device(device, runtime)
        net = _network_of(model_uri, self.card, storage, trusted)
        self.session = None
        if runtime == "onnxruntime":
            from imgclf_ray.models import onnx_runtime

            self.session = onnx_runtime.session(str(onnx_runtime.exported(net.eval(), self.card)), threads, device)
            device = "cpu"  # the inputs are prepared on the host for ONNX Runtime
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        if precision == "tf32" and self.device.type != "cuda":
            import logging

            logging.getLogger(__name__).warning("model.precision tf32 is for GPU actors; this CPU actor computes in fp32")
        self.autocast = precision == "fp16" and self.device.type == "cuda"
        if precision == "fp16" and not self.autocast:
            import logging

            logging.getLogger(__name__).warning("model.precision fp16 is for GPU actors; this CPU actor computes in fp32")
        if precision == "bf16" and self.device.type == "cpu" and not _native_bf16():
            import logging

            logging.getLogger(__name__).warning(
                "model.precision bf16 on a CPU without AVX512-BF16 or AMX is emulated and several times "
                "slower than fp32 (measured 7x on ResNet-18); use fp32 here")
        # With ONNX Runtime the torch network only serves embed(): not worth folding.
        self.net = net.eval() if self.session is not None else _fold_batch_norm(net.eval()).to(self.device, self.dtype)
        # Channels-last on CPUs (oneDNN) and GPUs alike (tensor cores take NHWC convolutions).
        self.net = self.net.to(memory_format=torch.channels_last)
        prep = self.card.preprocess
        shape = (1, prep.channels, 1, 1)
        self._mean = self._std = None
        if prep.normalize == "dataset":
            self._mean = torch.tensor(prep.mean, dtype=torch.float32, device=self.device).view(shape)
            self._std = torch.tensor(prep.std, dtype=torch.float32, device=self.device).view(shape)
        # On a GPU, the most images one forward pass takes, from the model's measured memory; then
        # cuDNN may try algorithms for the shapes it meets (their workspaces are not measured).
        self.max_batch = None
        if self.device.type == "cuda" and self.session is None:
            fp32_math(precision)
            self.max_batch = self._measured_max_batch(0.7 / calls)  # calls at once: each its share
            torch.backends.cudnn.benchmark = True

    def _measured_max_batch(self, fraction: float = 0.7) -> int:
        """The largest batch whose forward pass fits in ``fraction`` of the device memory free
        now: the peak memory of passes of 1 and 9 images gives the memory per image (activations
        at this input size, precision and autocast). predict_proba splits larger batches."""
        import torch

        c, side = self.card.preprocess.channels, self.card.preprocess.crop or self.card.preprocess.resize
        peaks = []
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        for n in (1, 9):
            torch.cuda.reset_peak_memory_stats(self.device)
            self._forward(torch.zeros((n, c, side, side), dtype=torch.uint8, device=self.device))
            peaks.append(torch.cuda.max_memory_allocated(self.device) - base)
        per_image = max(1, (peaks[1] - peaks[0]) // 8)
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(1, int(free * fraction - peaks[0]) // per_image)


    def _normalised(self, pixels):
        """A (N, C, H, W) uint8 batch (NumPy, or a tensor already decoded on the device) -> the
        network's input on its device; host memory is pinned for an asynchronous copy to a GPU."""
        import torch

        x = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(pixels))
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True)
        x = normalise(x, self._mean, self._std).to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """Pre-logits features of a (N, C, H, W) uint8 batch: the input of the network's last
        linear layer (resnet's pooled features, a ViT's class token, ...)."""
        import torch

        last = [m for m in self.net.modules() if isinstance(m, torch.nn.Linear)]
        if not last:
            raise ArtifactError(f"{self.card.architecture}: no linear layer to take pre-logits from")
        captured = []
        hook = last[-1].register_forward_hook(lambda mod, args, out: captured.append(args[0]))
        try:
            with torch.inference_mode():
                self.net(self._normalised(pixels))
        finally:
            hook.remove()
        return captured[0].float().flatten(1).cpu().numpy()

    def predict_proba(self, pixels) -> np.ndarray:
        """Class probabilities for a (N, C, H, W) uint8 batch (NumPy, or a tensor on the device):
        softmax, or sigmoid per label for multilabel models; on a GPU in passes of at most
        ``max_batch`` images."""
        step = self.max_batch or len(pixels) or 1
        if len(pixels) > step:
            return np.concatenate([self._forward(pixels[i:i + step]) for i in range(0, len(pixels), step)])
        return self._forward(pixels)

    def _forward(self, pixels) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = self._normalised(pixels)
            if self.session is not None:
                from imgclf_ray.models.onnx_runtime import scores

                return scores(self.session.run(None, {"pixels": x.float().contiguous().numpy()})[0], self.card)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.autocast):
                out = logits(self.net(x)).float()
            if self.card.outputs == "probabilities":
                return out.cpu().numpy()
            if self.card.task == "multilabel":
                return torch.sigmoid(out).cpu().numpy()
            return torch.softmax(out, dim=1).cpu().numpy()


@CLASSIFIERS.register("torch")
def _load(uri: str, storage: StorageSpec, *, device: str, threads: Optional[int], precision: str,
          trusted: bool, runtime: str, calls: int = 1, export=None, **_):
    from imgclf_ray.models import onnx_runtime

    card = None
    if onnx_runtime.runs_export(runtime, device, precision):
        card = read_card(uri, storage)
        made = onnx_runtime.from_export(uri, storage, card, threads, export)
        if made is not None:
            return made
    return TorchClassifier(uri, storage, device=device, threads=threads, precision=precision, trusted=trusted,
                           runtime=runtime, calls=calls, card=card)
