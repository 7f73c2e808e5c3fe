"""The GPU path: the same job on a CUDA actor gives the CPU's answers (skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf_ray.io.listing import list_archive
from imgclf_ray.runner.job import execute
from imgclf_ray.planner import plan_resources
from tests.corpus import good_files
from tests.test_pipeline import make_spec, read_run

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
