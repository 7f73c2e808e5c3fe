"""A torchvision CNN applied to preprocessed uint8 batches. Knows nothing of Ray."""

from __future__ import annotations

from typing import Optional

import numpy as np

from imgclf_ray.errors import ArtifactError
from imgclf_ray.models.artifact import ModelCard, load_state_dict, read_card
from imgclf_ray.spec import StorageSpec


def build_network(architecture: str, num_classes: int):
    """An untrained torchvision classification network by name (weights never downloaded)."""
    import torchvision

    if architecture not in torchvision.models.list_models(module=torchvision.models):
        raise ArtifactError(f"unknown architecture {architecture!r}: not a torchvision "
                            "classification model (see torchvision.models.list_models())")
    return torchvision.models.get_model(architecture, weights=None, num_classes=num_classes)


class TorchClassifier:
    """Loads an artifact once; ``predict_proba`` maps (N, C, H, W) uint8 to (N, classes) float32."""

    def __init__(self, model_uri: str, storage: StorageSpec = StorageSpec(),
                 device: str = "auto", threads: Optional[int] = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.card: ModelCard = read_card(model_uri, storage)
        self.model_id = self.card.model_id()
        net = build_network(self.card.architecture, len(self.card.labels))
        state = load_state_dict(model_uri, self.card, storage)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ArtifactError(f"{model_uri}: weights do not fit {self.card.architecture} with "
                                f"{len(self.card.labels)} classes ({str(exc).splitlines()[0]})") from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        if self.device.type == "cpu":
            self.net = self.net.to(memory_format=torch.channels_last)
        prep = self.card.preprocess
        shape = (1, prep.channels, 1, 1)
        self._mean = torch.tensor(prep.mean, dtype=torch.float32, device=self.device).view(shape) * 255
        self._std = torch.tensor(prep.std, dtype=torch.float32, device=self.device).view(shape) * 255

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for a (N, C, H, W) uint8 batch: softmax, or sigmoid per label for
        multilabel models."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
            x = (x.float() - self._mean) / self._std
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            logits = self.net(x).float()
            if self.card.task == "multilabel":
                return torch.sigmoid(logits).cpu().numpy()
            return torch.softmax(logits, dim=1).cpu().numpy()
