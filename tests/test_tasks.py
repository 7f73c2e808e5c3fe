"""Binary and multilabel models end to end through Ray, equal to the estimator applied by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from PIL import Image
from torchvision import transforms as T

from imgclf_ray.training.bundled import DIGIT_ATTRIBUTES
from imgclf_ray.io.listing import list_archive
from imgclf_ray.models.artifact import read_card
from imgclf_ray.runner.job import execute
from tests.support.jobs import digits_subset, make_spec, read_run

pytestmark = pytest.mark.ray


def _estimator(model_uri: str):
    blob = (Path(model_uri) / "model.skops").read_bytes()
    return sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))


def _grey(path: str, side: int) -> np.ndarray:
    img = T.Compose([T.Resize(side), T.CenterCrop(side)])(Image.open(path).convert("RGB")).convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0


def test_binary_faces_with_a_job_threshold(ray_session, faces_archive, faces_model, tmp_path):
    from skimage.feature import hog

    card = read_card(faces_model)
    assert card.task == "binary" and card.labels == ["non-face", "face"] and card.metrics["test"]["roc_auc"] >= 0.95
    spec = make_spec(faces_archive, str(tmp_path / "out"), faces_model, model={"threshold": 0.7})
    result = execute(spec, list_archive(spec.source), "faces")
    rows = read_run(spec.sink.uri, "faces")
    assert len(rows) == 200 and result.by_status == {"ok": 200}
    estimator = _estimator(faces_model)
    for row in rows:
        path = row["uri"].removeprefix("file://")
        features = hog(_grey(path, 32), orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
                       block_norm="L2-Hys")
        p_face = float(estimator.predict_proba(features[None].astype(np.float32))[0, 1])
        assert row["class_scores"][1] == pytest.approx(p_face, abs=1e-5)
        assert row["label"] == ("face" if p_face >= 0.7 else "non-face")
        assert row["score"] == pytest.approx(p_face if p_face >= 0.7 else 1 - p_face, abs=1e-5)
        assert row["labels"] is None
    truth = [r["uri"].rsplit("/", 2)[-2] for r in rows]
    assert np.mean([t == r["label"] for t, r in zip(truth, rows)]) >= 0.9
    manifest = json.loads((tmp_path / "out" / "faces" / "_manifest.json").read_text())
    assert manifest["task"] == "binary" and manifest["labels"] == ["non-face", "face"]


def test_multilabel_attributes_with_per_label_thresholds(ray_session, digits_archive, attributes_model, tmp_path):
    archive = tmp_path / "arch"
    digits_subset(digits_archive, archive, 45)  # 40 digits, every class
    spec = make_spec(str(archive), str(tmp_path / "out"), attributes_model,
                     model={"thresholds": {"prime": 0.3, "large": 0.7}})
    execute(spec, list_archive(spec.source), "attrs")
    rows = read_run(spec.sink.uri, "attrs")
    assert len(rows) == 40
    labels = sorted(DIGIT_ATTRIBUTES)  # the card's labels, as the trainer sorts them
    thresholds = np.array([{"prime": 0.3, "large": 0.7}.get(lab, 0.5) for lab in labels])
    estimator = _estimator(attributes_model)
    hits = 0
    for row in rows:
        probs = estimator.predict_proba(_grey(row["uri"].removeprefix("file://"), 16).reshape(1, -1))[0]
        np.testing.assert_allclose(row["class_scores"], probs, atol=1e-5)
        assert row["labels"] == [lab for lab, p, t in zip(labels, probs, thresholds) if p >= t]
        assert row["label"] == labels[int(np.argmax(probs))]
        digit = int(row["uri"].rsplit("/", 2)[-2])
        hits += set(row["labels"]) == {lab for lab in labels if digit in DIGIT_ATTRIBUTES[lab]}
    assert hits >= 32  # most digits get exactly their attributes


def test_thresholds_for_unknown_labels_are_refused_before_work(ray_session, faces_archive, faces_model, tmp_path):
    from imgclf_ray.errors import SpecError

    spec = make_spec(faces_archive, str(tmp_path / "out"), faces_model, model={"thresholds": {"cat": 0.3}})
    with pytest.raises(SpecError, match="model.thresholds: thresholds for unknown labels: cat"):
        execute(spec, list_archive(spec.source), "bad")
    assert not (tmp_path / "out").exists()
