"""The stages as plain batch callables, without Ray."""

from __future__ import annotations

import numpy as np

from imgclf_ray.spec import DecodeSpec
from imgclf_ray.io.schema import OUTPUT_SCHEMA
from imgclf_ray.models.artifact import read_card
from imgclf_ray.spec import StorageSpec
from imgclf_ray.stages import LoadConfig, LoadStage, PredictConfig, PredictStage


def test_predict_failure_is_isolated_to_its_rows(tiny_model):
    stage = PredictStage(PredictConfig(tiny_model, StorageSpec(), topk=2, run_id="r", threads=1))
    real = stage.classifier.predict_proba

    def flaky(pixels):
        if (pixels == 7).all(axis=(1, 2, 3)).any():
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real(pixels)

    stage.classifier.predict_proba = flaky
    pixels = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    pixels[2] = 7
    batch = {
        "uri": np.array([f"file:///x/{i}.png" for i in range(4)], dtype=object),
        "size": np.array([10, 10, 10, 0]), "etag": np.array(["e"] * 4, dtype=object),
        "frame": np.zeros(4, np.int32), "width": np.array([8, 8, 8, 0], np.int32),
        "height": np.array([8, 8, 8, 0], np.int32),
        "status": np.array(["ok", "ok", "ok", "error"], dtype=object),
        "error": np.array([None, None, None, "decode: empty file (0 bytes)"], dtype=object),
        "inputs": pixels,
    }
    table = stage(batch)
    assert table.schema == OUTPUT_SCHEMA
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error"]
    assert rows[2]["error"] == "predict: RuntimeError: CUDA error: device-side assert triggered"
    assert rows[3]["error"] == "decode: empty file (0 bytes)" and rows[3]["width"] is None
    assert rows[0]["label"] is not None and len(rows[0]["topk_labels"]) == 2
    assert rows[2]["label"] is None and rows[2]["score"] is None


def test_load_stage_tags_each_failure_with_its_stage(tiny_model, tmp_path, sample_photo):
    from tests.corpus import jpeg_bytes

    (tmp_path / "good.jpg").write_bytes(jpeg_bytes(sample_photo))
    (tmp_path / "empty.jpg").write_bytes(b"")
    cond = read_card(tiny_model).preprocess.conditioning()
    out = LoadStage(LoadConfig(StorageSpec(), DecodeSpec(), cond))({
        "uri": np.array([f"file://{tmp_path}/good.jpg", f"file://{tmp_path}/empty.jpg",
                         f"file://{tmp_path}/gone.jpg"], dtype=object)})
    assert out["status"].tolist() == ["ok", "error", "error"]
    assert out["error"][1] == "decode: empty file (0 bytes)"
    assert out["error"][2].startswith("read: FileNotFoundError")
    assert out["inputs"].shape == (3, 3, 32, 32) and out["inputs"][0].any() and not out["inputs"][1].any()
    assert (out["width"][0], out["height"][0]) == (640, 427)


def test_a_users_error_in_a_stage_reaches_the_local_metrics_as_itself(tmp_path):
    """The stages tell their reporter of a UserError before raising it (stages.common); the local
    executor's metrics take it as the Ray actor's reporter does (it once failed with a TypeError)."""
    import pytest

    from imgclf_ray.errors import ArtifactError
    from imgclf_ray.runner.local import LocalMetrics

    metrics = LocalMetrics()
    with pytest.raises(ArtifactError):
        PredictStage(PredictConfig(str(tmp_path / "no-model"), StorageSpec(), 3, "r"), reporter=metrics.reporter())
    assert metrics.first_user_error()[0] == "ArtifactError"
