"""Every registered feature extractor on real images, and the reference each one wraps."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf_ray.features import extractors
from imgclf_ray.imaging.conditioning import Conditioning, condition


@pytest.fixture(scope="module")
def images(sample_photo):
    from sklearn.datasets import load_sample_images

    flower = load_sample_images().images[1]
    from PIL import Image

    cond = Conditioning(resize=72, crop=64)
    return [condition(sample_photo, cond), condition(Image.fromarray(flower), cond)]


def _params(name, request):
    """Extractors that need an argument get one (cnn_embedding: a backbone artifact)."""
    return {"backbone": request.getfixturevalue("tiny_model")} if name == "cnn_embedding" else {}


@pytest.mark.parametrize("name", extractors.names())
def test_conformance(name, images, request):
    params = _params(name, request)
    a, b = (extractors.extract(name, im, params) for im in images)
    assert a.ndim == 1 and a.dtype == np.float32 and a.shape == b.shape and len(a) > 0
    assert np.isfinite(a).all() and not np.array_equal(a, b)
    assert np.array_equal(a, extractors.extract(name, images[0], params))  # deterministic
    if name != "cnn_embedding":  # the backbone takes the channels it was trained on
        grey = extractors.extract(name, images[0][:1], params)  # one-channel input works too
        assert np.isfinite(grey).all()


def test_cnn_embedding_is_the_backbones_pooled_features(images, tiny_model):
    """resnet18 pre-logits: the 512 pooled features that feed its fc layer."""
    import json
    from pathlib import Path

    import torch
    import torchvision
    from safetensors.torch import load_file

    card = json.loads((Path(tiny_model) / "model_card.json").read_text())
    net = torchvision.models.resnet18(num_classes=10)
    net.load_state_dict(load_file(str(Path(tiny_model) / "model.safetensors")))
    net.fc = torch.nn.Identity()
    net.eval()
    mean = torch.tensor(card["preprocess"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(card["preprocess"]["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        ref = net((torch.from_numpy(images[0][None]).float() / 255 - mean) / std)[0].numpy()
    got = extractors.extract("cnn_embedding", images[0], {"backbone": tiny_model})
    assert got.shape == (512,)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_registry_refuses_duplicates_and_names_unknowns():
    with pytest.raises(ValueError, match="already registered"):
        extractors.register("hog")(lambda image: image)
    with pytest.raises(KeyError, match="unknown feature extractor 'sift'; known: cnn_embedding, color_histogram"):
        extractors.get("sift")


def test_hog_equals_scikit_image(images):
    from skimage.color import rgb2gray
    from skimage.feature import hog

    rgb = images[0].transpose(1, 2, 0)
    ref = hog(rgb2gray(rgb), orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys")
    np.testing.assert_allclose(extractors.extract("hog", images[0]), ref, atol=2e-3)


def test_histograms_are_normalised(images):
    assert extractors.extract("color_histogram", images[0], {"bins": 8}).reshape(3, 8).sum(1) == pytest.approx([1, 1, 1])
    assert extractors.extract("lbp", images[0]).sum() == pytest.approx(1.0)
    assert len(extractors.extract("lbp", images[0], {"points": 8})) == 10  # uniform: P + 2 codes


def test_textures_are_told_apart_by_glcm_and_edges():
    rng = np.random.default_rng(0)
    flat = np.full((1, 32, 32), 128, np.uint8)
    noise = rng.integers(0, 256, (1, 32, 32), dtype=np.uint8)
    contrast = lambda im: extractors.extract("glcm", im, {"props": ["contrast"], "distances": [1]})[0]  # noqa: E731
    assert contrast(flat) == 0 and contrast(noise) > 10
    assert extractors.extract("edges", flat)[-1] == 0  # no Canny edges in a flat image
    assert extractors.extract("edges", noise)[-1] > 0.05


reported: dict[str, int] = {}  # the stage's rows per stage, as its reporter was told


def _stage_over(tmp_path, arrays, features):
    """A LoadStage (features, conditioned to 64 px) over PNG files of ``arrays`` (H, W, 3), and its batch."""
    reported.clear()
    from PIL import Image

    from imgclf_ray.models.artifact import FeaturesCard
    from imgclf_ray.spec import StorageSpec
    from imgclf_ray.stages import LoadConfig, LoadStage

    uris = []
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        uris.append(str(tmp_path / f"{i}.png"))
    from imgclf_ray.spec import DecodeSpec

    stage = LoadStage(LoadConfig(StorageSpec(), DecodeSpec(), Conditioning(resize=64, crop=64),
                                 features=FeaturesCard(**features)))
    stage.reporter = lambda name, rows, seconds: reported.__setitem__(name, reported.get(name, 0) + rows)
    n = len(uris)
    return stage({"uri": np.asarray(uris, dtype=object), "size": np.full(n, None, dtype=object),
                  "etag": np.full(n, None, dtype=object)})


def test_a_decode_task_embeds_its_whole_batch_in_one_forward_pass(tmp_path, tiny_model, monkeypatch):
    """cnn_embedding in a decode task: one forward pass over the batch, the numbers of the image form."""
    from imgclf_ray.models.torch_classifier import TorchClassifier

    calls = []
    real = TorchClassifier.embed
    monkeypatch.setattr(TorchClassifier, "embed", lambda self, x: calls.append(len(x)) or real(self, x))
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    out = _stage_over(tmp_path, arrays, {"name": "cnn_embedding", "params": {"backbone": tiny_model}})
    assert calls[-1] == 5 and calls[:-1] == [1]  # (the extractor's length, measured on one blank image)
    assert (out["status"] == "ok").all() and reported["features"] == 5
    for a, got in zip(arrays, out["inputs"]):
        one = extractors.extract("cnn_embedding", a.transpose(2, 0, 1), {"backbone": tiny_model})
        np.testing.assert_allclose(got, one, rtol=1e-4, atol=1e-5)


def test_when_a_batch_extraction_fails_only_the_images_that_fail_are_error_rows(tmp_path, monkeypatch):
    """An extractor with a batch form that fails on one image: the batch again image by image."""
    import imgclf_ray.stages.load as load

    def fussy(image, **_):
        if (image == 7).all():
            raise ValueError("an image of sevens")
        return extractors.extract("pixels", image)

    monkeypatch.setitem(extractors.BATCHED, "pixels", lambda images, **_: np.stack([fussy(i) for i in images]))
    monkeypatch.setattr(load, "extract", lambda name, image, params=None: fussy(image))
    arrays = [np.full((64, 64, 3), v, np.uint8) for v in (40, 7, 200)]
    out = _stage_over(tmp_path, arrays, {"name": "pixels"})
    assert list(out["status"]) == ["ok", "error", "ok"] and out["error"][1] == "features: ValueError: an image of sevens"
    assert list(out["width"]) == [64, 0, 64]  # an error row, as any other
    np.testing.assert_array_equal(out["inputs"][2], extractors.extract("pixels", arrays[2].transpose(2, 0, 1)))
