"""Artifacts load only when intact, and never through pickle."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclf_ray.errors import ArtifactError
from imgclf_ray.models.artifact import CARD_FILE, read_card
from imgclf_ray.models.torch_classifier import TorchClassifier


def _copy(src: str, dst: Path) -> Path:
    dst.mkdir()
    for f in Path(src).iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_round_trip_gives_probabilities(tiny_model):
    clf = TorchClassifier(tiny_model, threads=1)
    probs = clf.predict_proba(np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8))
    assert probs.shape == (4, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert clf.model_id == read_card(tiny_model).model_id() and clf.model_id.startswith("sha256:")


def test_tampered_weights_are_refused(tiny_model, tmp_path):
    art = _copy(tiny_model, tmp_path / "art")
    blob = bytearray((art / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (art / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="does not match the model card"):
        TorchClassifier(str(art))


def test_missing_card_and_bad_card(tmp_path, tiny_model):
    with pytest.raises(ArtifactError, match="no readable model_card.json"):
        read_card(str(tmp_path))
    art = _copy(tiny_model, tmp_path / "art")
    card = json.loads((art / CARD_FILE).read_text())
    card["preprocess"]["crop"] = 64
    (art / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="crop 64 is larger than resize"):
        read_card(str(art))


def _with_weights(tiny_model: str, art: Path, blob: bytes, fmt: str) -> None:
    import hashlib

    card = json.loads((Path(tiny_model) / CARD_FILE).read_text())
    card["weights"] = {"file": "model.pt", "format": fmt, "sha256": hashlib.sha256(blob).hexdigest()}
    art.mkdir()
    (art / "model.pt").write_bytes(blob)
    (art / CARD_FILE).write_text(json.dumps(card))


def test_state_dict_loads_with_weights_only(tiny_model, tmp_path):
    import io

    from safetensors.torch import load_file

    buf = io.BytesIO()
    torch.save(load_file(str(Path(tiny_model) / "model.safetensors")), buf)
    _with_weights(tiny_model, tmp_path / "art", buf.getvalue(), "state_dict")
    assert TorchClassifier(str(tmp_path / "art")).card.weights.format == "state_dict"


class Payload:
    """Unpickling it touches ``sentinel``."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


def test_pickle_payload_is_never_executed(tiny_model, tmp_path):
    sentinel = tmp_path / "pwned"
    blob = pickle.dumps({"x": Payload(sentinel)})
    _with_weights(tiny_model, tmp_path / "art", blob, "state_dict")
    with pytest.raises(ArtifactError, match="not loadable as state_dict"):
        TorchClassifier(str(tmp_path / "art"))
    assert not sentinel.exists()
    # The sentinel is live: unpickled for real, the same bytes do touch it.
    pickle.loads(blob)
    assert sentinel.exists()


def test_unknown_architecture(tiny_model, tmp_path):
    art = _copy(tiny_model, tmp_path / "art")
    card = json.loads((art / CARD_FILE).read_text())
    card["architecture"] = "resnet_nope"
    (art / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="unknown architecture 'resnet_nope'"):
        TorchClassifier(str(art))


def test_multilabel_torch_models_use_independent_sigmoids(tiny_model, tmp_path):
    art = _copy(tiny_model, tmp_path / "art")
    card = json.loads((art / CARD_FILE).read_text())
    card["task"] = "multilabel"
    (art / CARD_FILE).write_text(json.dumps(card))
    pixels = np.random.default_rng(1).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    multi = TorchClassifier(str(art), threads=1)
    single = TorchClassifier(tiny_model, threads=1)
    probs = multi.predict_proba(pixels)
    assert not np.allclose(probs.sum(1), 1)
    with torch.inference_mode():
        x = (torch.from_numpy(pixels).float() / 255 - 0.5) / 0.25
        logits = single.net.float()(x.contiguous(memory_format=torch.channels_last)).numpy()
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-5)


def test_torchscript_artifact_gives_the_same_probabilities(tiny_model, tmp_path):
    import hashlib
    import io

    eager = TorchClassifier(tiny_model, threads=1)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(eager.net.float().to(memory_format=torch.contiguous_format)), buf)
    blob = buf.getvalue()
    card = json.loads((Path(tiny_model) / CARD_FILE).read_text())
    card["weights"] = {"file": "model.ts", "format": "torchscript", "sha256": hashlib.sha256(blob).hexdigest()}
    (tmp_path / "ts").mkdir()
    (tmp_path / "ts" / "model.ts").write_bytes(blob)
    (tmp_path / "ts" / CARD_FILE).write_text(json.dumps(card))
    # TorchScript runs code stored in the file: refused unless the job trusts it (model.trusted).
    with pytest.raises(ArtifactError, match="model.ts is torchscript; TorchScript runs code .* model.trusted: true"):
        TorchClassifier(str(tmp_path / "ts"), threads=1)
    scripted = TorchClassifier(str(tmp_path / "ts"), threads=1, trusted=True)
    pixels = np.random.default_rng(2).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    np.testing.assert_allclose(scripted.predict_proba(pixels), eager.predict_proba(pixels), atol=1e-5)
    (tmp_path / "ts" / "model.ts").write_bytes(b"not a zip at all")
    card["weights"]["sha256"] = hashlib.sha256(b"not a zip at all").hexdigest()
    (tmp_path / "ts" / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="not a TorchScript file"):
        TorchClassifier(str(tmp_path / "ts"), trusted=True)


def test_a_torchscript_model_returning_a_dict_labels(tiny_model, tmp_path):
    """The Hugging Face style: forward returns {"logits": ...}; the logits are taken from it."""
    import hashlib
    import io

    eager = TorchClassifier(tiny_model, threads=1)

    class DictOut(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.net(x), "pooled": x.mean(dim=(2, 3))}

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(DictOut(eager.net.float().to(memory_format=torch.contiguous_format))), buf)
    card = json.loads((Path(tiny_model) / CARD_FILE).read_text())
    card["weights"] = {"file": "model.ts", "format": "torchscript",
                       "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
    (tmp_path / "model.ts").write_bytes(buf.getvalue())
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    pixels = np.random.default_rng(3).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    np.testing.assert_allclose(TorchClassifier(str(tmp_path), threads=1, trusted=True).predict_proba(pixels),
                               eager.predict_proba(pixels), atol=1e-5)


def test_bf16_precision_stays_close_to_fp32(tiny_model):
    from imgclf_ray.models.torch_classifier import TorchClassifier

    pixels = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    exact = TorchClassifier(tiny_model, device="cpu").predict_proba(pixels)
    fast = TorchClassifier(tiny_model, device="cpu", precision="bf16").predict_proba(pixels)
    assert fast.dtype == np.float32 and np.allclose(fast.sum(1), 1, atol=1e-3)
    np.testing.assert_allclose(fast, exact, atol=2e-2)


def test_batch_norm_folding_keeps_the_function(tiny_model):
    import torch

    from imgclf_ray.models.torch_classifier import _fold_batch_norm, build_network

    torch.manual_seed(1)
    net = build_network("resnet18", 10).eval()
    folded = _fold_batch_norm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(folded(x).numpy(), net(x).numpy(), atol=1e-4)


def _per_image_model(tiny_model, tmp_path) -> str:
    art = _copy(tiny_model, tmp_path / "per-image")
    card = json.loads((art / CARD_FILE).read_text())
    card["preprocess"] = {**card["preprocess"], "normalize": "per_image", "mean": None, "std": None}
    (art / CARD_FILE).write_text(json.dumps(card))
    return str(art)


def test_per_image_standardisation_equals_scikit_learns_scale():
    """Each image minus its own mean over its own standard deviation (sklearn.preprocessing.scale on
    the flattened image); a flat image becomes zeros instead of dividing by zero."""
    from sklearn.preprocessing import scale

    from imgclf_ray.features.extractors import pixels
    from imgclf_ray.models.torch_classifier import normalise

    batch = np.random.default_rng(1).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    batch[2] = 77
    out = normalise(torch.from_numpy(batch)).numpy()
    for image, got in zip(batch[:2], out[:2]):
        np.testing.assert_allclose(got.ravel(), scale(image.astype(np.float64).ravel() / 255.0), atol=1e-5)
        np.testing.assert_allclose(pixels(image, standardize=True), got.ravel(), atol=1e-5)
    assert np.array_equal(out[2], np.zeros_like(out[2]))


def test_per_image_models_ignore_exposure_and_contrast(tiny_model, tmp_path):
    """The point of normalize: per_image: a darker, flatter copy of an image gets the probabilities
    of the original, where the dataset mean/std model sees a different input."""
    images = np.random.default_rng(2).integers(40, 216, (4, 3, 32, 32), dtype=np.uint8)
    dimmed = (images.astype(np.float32) * 0.5 + 10).round().astype(np.uint8)
    per_image = TorchClassifier(_per_image_model(tiny_model, tmp_path), threads=1)
    dataset = TorchClassifier(tiny_model, threads=1)
    moved = np.abs(per_image.predict_proba(dimmed) - per_image.predict_proba(images)).max()
    moved_dataset = np.abs(dataset.predict_proba(dimmed) - dataset.predict_proba(images)).max()
    assert moved < 0.1 * moved_dataset, (moved, moved_dataset)  # what is left is uint8 rounding


def test_per_image_cards_carry_no_mean_or_std(tiny_model, tmp_path):
    art = Path(_per_image_model(tiny_model, tmp_path))
    assert read_card(str(art)).preprocess.normalize == "per_image"
    card = json.loads((art / CARD_FILE).read_text())
    card["preprocess"]["mean"], card["preprocess"]["std"] = [0.5] * 3, [0.25] * 3
    (art / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="per_image uses each image's own mean"):
        read_card(str(art))
    card["preprocess"].update(normalize="dataset", mean=None, std=None)
    (art / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="torch models need preprocess.mean"):
        read_card(str(art))


def test_a_gpu_actor_whose_torch_sees_no_cuda_is_refused_with_the_fix(tiny_model, monkeypatch):
    """Ray grants GPUs by count: a GPU node whose torch is a CPU build (or has no driver) would
    otherwise fail in its first batch with torch's own message."""
    import torch

    if torch.cuda.is_available():  # a GPU machine: the same call gives a CUDA predictor
        assert TorchClassifier(tiny_model, device="cuda").device.type == "cuda"
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ArtifactError, match=r"planned this predictor on a GPU \(CUDA_VISIBLE_DEVICES=0\).*sees no CUDA device.*"
                                            r"install a CUDA build of torch.*model.device: cpu"):
        TorchClassifier(tiny_model, device="cuda")
    # Ray's fake multi-node cluster (tests/test_autoscaling.py): its GPUs are counts, the CPU computes.
    monkeypatch.setenv("IMGCLF_FAKE_GPUS", "1")
    assert TorchClassifier(tiny_model, device="cuda").device.type == "cpu"
