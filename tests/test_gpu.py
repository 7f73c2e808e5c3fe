"""The GPU path: the same job on a CUDA actor gives the CPU's answers (skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf_ray.io.listing import list_archive
from imgclf_ray.runner.job import execute
from imgclf_ray.planner import plan_resources
from tests.corpus import good_files
from tests.support.jobs import make_spec, read_run

pytestmark = [pytest.mark.gpu, pytest.mark.ray]


def test_cuda_actors_match_cpu(ray_session, tiny_model, tmp_path, sample_photo):
    archive = tmp_path / "arch"
    archive.mkdir()
    for rel, data in good_files(sample_photo).items():
        (archive / Path(rel).name).write_bytes(data)
    assert plan_resources(ray_session.cluster_resources()).device == "cuda"
    runs = {}
    for device in ("cpu", "cuda"):
        spec = make_spec(str(archive), str(tmp_path / "out"), tiny_model, model={"device": device})
        result = execute(spec, list_archive(spec.source), device)
        assert result.plan["gpus_per_actor"] == (1.0 if device == "cuda" else 0.0)
        runs[device] = {r["uri"]: r for r in read_run(spec.sink.uri, device)}
    for uri, cpu_row in runs["cpu"].items():
        gpu_row = runs["cuda"][uri]
        assert gpu_row["label"] == cpu_row["label"]
        assert gpu_row["score"] == pytest.approx(cpu_row["score"], abs=2e-3)


def test_jpegs_decoded_on_the_gpu_label_as_cpu_decoding(ray_session, tiny_model, tmp_path, sample_photo):
    """decode.jpeg_on: predictor on a CUDA actor (nvJPEG, batched): the labels of task decoding."""
    archive = tmp_path / "arch"
    archive.mkdir()
    for rel, data in good_files(sample_photo).items():
        (archive / Path(rel).name).write_bytes(data)
    runs = {}
    for where in ("tasks", "predictor"):
        spec = make_spec(str(archive), str(tmp_path / where), tiny_model, model={"device": "cuda"},
                         decode={"jpeg_on": where})
        result = execute(spec, list_archive(spec.source), where)
        runs[where] = {r["uri"]: r for r in read_run(spec.sink.uri, where)}
    assert result.stages["device_decode"]["rows"] == 3  # the three JPEG photographs
    for uri, row in runs["tasks"].items():
        assert runs["predictor"][uri]["label"] == row["label"]
        assert runs["predictor"][uri]["score"] == pytest.approx(row["score"], abs=2e-2)


def test_the_gpu_batch_limit_comes_from_measured_memory_and_splits_batches(tiny_model):
    import numpy as np

    from imgclf_ray.models.torch_classifier import TorchClassifier

    clf = TorchClassifier(tiny_model, device="cuda")
    assert clf.max_batch >= 64  # a 32 px resnet18 on a GPU of several GiB
    pixels = np.random.default_rng(0).integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)
    whole = clf.predict_proba(pixels)
    clf.max_batch = 3
    np.testing.assert_allclose(clf.predict_proba(pixels), whole, atol=1e-5)
