"""model.precision: int8 — ONNX Runtime static quantization, made once on the driver.

References are independent of the code under test: the int8 file run by onnxruntime itself on
images conditioned with Pillow and NumPy by hand; the calibration record read as JSON. The model is
the session's untrained resnet18 (its near-ties make int8 disagree with fp32 more than a trained
model would: the refusal is real, and the runs that must pass lower model.int8_min_agreement)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf_ray.errors import SpecError
from imgclf_ray.runner.job import run_job
from imgclf_ray.spec import load_spec
from tests.support.jobs import digits_subset, read_run


def _job(tmp_path: Path, archive: Path, model: str, executor: str, extra: str = "") -> Path:
    job = tmp_path / f"int8-{executor}.yaml"
    job.write_text(f"name: q\nsource: {{uri: {archive}}}\nmodel: {{uri: {model}, precision: int8{extra}}}\n"
                   f"sink: {{uri: {tmp_path / 'out'}}}\nincremental: {{}}\nrun: {{executor: {executor}}}\n")
    return job


def _by_hand(uri: str) -> np.ndarray:
    """The tiny model's input: resize the shorter side to 36 (bilinear), centre-crop 32, RGB, (x/255 - 0.5)/0.25."""
    img = Image.open(uri).convert("RGB").resize((36, 36), Image.BILINEAR).crop((2, 2, 34, 34))
    x = np.asarray(img, np.float32) / 255.0
    return ((x - 0.5) / 0.25).transpose(2, 0, 1)


def test_an_int8_run_labels_with_the_quantized_model_made_once(digits_archive, tiny_model, tmp_path):
    import onnxruntime as ort

    archive = tmp_path / "archive"
    assert digits_subset(digits_archive, archive, 5) == 360  # 320 sampled: 64 calibrate, 256 held back
    job = _job(tmp_path, archive, tiny_model, "local", ", int8_min_agreement: 0.5")
    first = run_job(load_spec(job), "n1", quiet=True)
    q = first.int8
    assert q["calibration"]["images"] == 320 and q["calibration"]["held_back"] == 256 and 0.5 <= q["agreement"] <= 1
    folder = Path(q["uri"].removeprefix("file://"))
    card = json.loads((folder / "model_card.json").read_text())
    assert card["framework"] == "onnx" and card["source"]["int8"]["base_model_id"] == q["base_model_id"]
    manifest = json.loads((tmp_path / "out" / "n1" / "_manifest.json").read_text())
    assert manifest["int8"]["model_id"] == manifest["model_id"] == q["model_id"] != q["base_model_id"]
    rows = read_run(str(tmp_path / "out"), "n1")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    some = rows[:40]
    logits = session.run(None, {session.get_inputs()[0].name: np.stack([
        _by_hand(r["uri"].removeprefix("file://")) for r in some])})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for r, p in zip(some, probs):
        assert r["model_id"] == q["model_id"]
        np.testing.assert_allclose(r["class_scores"], p, atol=2e-3)  # int8 kernels: a rounding step apart
    # The sample is recorded: a grown archive's next night calibrates on the same images, and the
    # quantized model is found, not made again: the same model id, nothing relabelled.
    recorded = next((tmp_path / "out" / "_int8").glob("calibration-*.json"))
    images = json.loads(recorded.read_text())["images"]
    assert len(images) == 320 and all(Path(u.removeprefix("file://")).exists() for u, _ in images)
    extra = sorted(Path(digits_archive).rglob("*.png"))[1::40]
    for src in extra:
        shutil.copy(src, archive / src.parent.name / ("new-" + src.name))
    second = run_job(load_spec(job), "n2", quiet=True)
    assert second.int8["model_id"] == q["model_id"] and second.rows == len(extra)


def test_int8_refusals_name_the_figures(digits_archive, tiny_model, svm_hog_model, tmp_path):
    archive = tmp_path / "archive"
    digits_subset(digits_archive, archive, 10)  # 180 images: 64 calibrate, 116 held back
    with pytest.raises(SpecError, match=r"labels equal fp32's on 0\.\d+ of 116 held-back images, and "
                                        r"0\.\d+ with .* in float; both below model.int8_min_agreement 0.99"):
        run_job(load_spec(_job(tmp_path, archive, tiny_model, "local")), "r1", quiet=True)
    assert not (tmp_path / "out" / "r1").exists()
    few = tmp_path / "few"
    digits_subset(digits_archive, few, 90)  # 20 images
    with pytest.raises(SpecError, match=r"model.calibration: 20 images in .*few; int8 calibrates on at least 32"):
        run_job(load_spec(_job(tmp_path, archive, tiny_model, "local", f", calibration: {few}")), "r2", quiet=True)
    with pytest.raises(SpecError, match="for CNNs .* is a sklearn model"):
        run_job(load_spec(_job(tmp_path, archive, svm_hog_model, "local")), "r3", quiet=True)
    with pytest.raises(SpecError, match="precision int8 runs on CPU actors .* on a GPU use precision: fp16"):
        load_spec(_job(tmp_path, archive, tiny_model, "local", ", device: cuda"))


@pytest.mark.ray
def test_ray_actors_read_the_int8_artifact_from_the_sink_and_quantizing_is_deterministic(ray_session, digits_archive, tiny_model, tmp_path):
    archive = tmp_path / "archive"
    digits_subset(digits_archive, archive, 30)  # 60 images: 30 calibrate, 30 held back
    local = run_job(load_spec(_job(tmp_path, archive, tiny_model, "local", ", int8_min_agreement: 0.5")), "a",
                    quiet=True)
    (tmp_path / "other").mkdir()  # another sink: quantized there again, to the same model
    ray = run_job(load_spec(_job(tmp_path / "other", archive, tiny_model, "ray", ", int8_min_agreement: 0.5")), "b",
                  quiet=True)
    assert ray.int8["model_id"] == local.int8["model_id"] and ray.int8["uri"] != local.int8["uri"]
    a = {r["image_id"]: r["label"] for r in read_run(str(tmp_path / "out"), "a")}
    b = {r["image_id"]: (r["label"], r["model_id"]) for r in read_run(str(tmp_path / "other" / "out"), "b")}
    assert b == {i: (lab, local.int8["model_id"]) for i, lab in a.items()}


def test_the_agreement_is_on_the_labels_the_run_decides_not_the_top_one(tmp_path, monkeypatch):
    """Multilabel: the same top label and other label sets disagree; the thresholds are the run's."""
    from imgclf_ray.models.artifact import ModelCard
    from imgclf_ray.runner import int8
    from imgclf_ray.spec import parse_spec

    card = ModelCard(task="multilabel", framework="onnx", architecture="net", labels=["a", "b", "c"],
                     weights={"file": "model.onnx", "format": "onnx", "sha256": "0" * 64},
                     preprocess={"resize": 8, "crop": 8, "normalize": "per_image"})
    logits = {"fp32": np.array([[3.0, 0.2, -2.0], [2.0, -3.0, -3.0]]), "int8": np.array([[3.0, -0.2, -2.0], [2.1, -3.0, -3.0]])}
    monkeypatch.setattr(int8, "_outputs", lambda path, x: logits[path])
    spec = parse_spec({"name": "j", "source": {"uri": "in"}, "sink": {"uri": "out"}, "model": {"uri": "m"}}, "<test>")
    fp32, q = int8._labels("fp32", None, card, spec), int8._labels("int8", None, card, spec)
    assert fp32 == [(0, 1), (0,)] and q == [(0,), (0,)] and int8._agreement(fp32, q) == 0.5
    lower = spec.model_copy(update={"model": spec.model.model_copy(update={"threshold": 0.4})})  # sigmoid(-0.2) = 0.45
    assert int8._agreement(int8._labels("fp32", None, card, lower), int8._labels("int8", None, card, lower)) == 1.0
