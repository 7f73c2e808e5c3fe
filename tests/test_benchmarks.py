"""The benchmark script's smoke run (CI runs each kind of row tiny; speed is measured by running it, not here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_benchmark_smoke_runs_every_path(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--n", "4", "--quick", "--skip-s3",
                           "--predictor-seconds", "0.5", "--predictor-batch", "2", "--work", str(tmp_path / "work"),
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    methods = [r["method"] for r in result["rows"]]
    assert methods == ["imgclf --local (CNN)", "plain PyTorch loop",
                       "imgclf --local (classical)", "plain classical loop"]
    assert all(r["images"] == 4 and r["seconds"] > 0 and r["peak_mb"] > 0 for r in result["rows"])
    assert "| ratio | measured | target | met |" in proc.stdout
    assert result["first_batch_seconds"] and result["first_batch_seconds_local"] and result["decode_resize_per_core"] > 0
    assert [p["path"] for p in result["predictor"]] == ["torch eager fp32 (plain)", "imgclf torch fp32",
                                                        "imgclf torch bf16", "imgclf onnxruntime"]
    assert result["predictor"][3]["max_abs_diff"] < 1e-4


def test_gpu_benchmark_runs_its_cpu_fallback(tmp_path):
    """benchmarks/gpu.py, the one-command GPU measurement, runs end to end without CUDA."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--images", "4", "--seconds", "0.2",
                           "--batch", "2", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["cpu_decode_per_core"] > 0 and result["device_decode"] > 0 and result["predictor_fp32"] > 0
    assert result["decode_cores_per_device"] > 0 and result["device_decode_and_predict_fp32"] > 0
    assert result["decode_cores_per_device_jpeg_on_predictor"] > 0


def test_review_loop_benchmark_smoke(tmp_path):
    """benchmarks/review_loop.py end to end on 300 digits, one seed (its figures are in docs/review-loop.md)."""
    out = tmp_path / "loop.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "review_loop.py"), "--quick", "--datasets", "digits",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = json.loads(out.read_text())["datasets"]["digits"]["runs"]
    assert sorted(runs) == sorted(f"{s}/{loop}/0" for s in ("random", "uncertainty", "diverse")
                                  for loop in ("retrain", "fixed"))
    for run in runs.values():  # every round spent one batch, until every image outside the gold set was reviewed
        reviews = [p["reviews"] for p in run["curve"]]
        assert reviews == sorted(reviews) and reviews[-1] == run["archive"] - run["seed_labels"]
        assert run["curve"][-1]["current_right"] == 1.0
    assert "| digits (300, rounds of 30) | retrain | uncertainty |" in proc.stdout


def test_the_prepared_gpu_check_runs_its_cpu_sections(tmp_path):
    """benchmarks/gpu_check.py, the one command for a GPU machine: without CUDA its CPU sections run
    and the others say they need CUDA (its figures go to docs/performance.md when a GPU is lent)."""
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu-smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = json.loads(out.read_text())["sections"]
    assert not any("error" in s for s in sections.values()), sections
    assert sections["env"]["ort_session_providers"] == ["CPUExecutionProvider"]
    assert sections["nvjpeg"]["progressive"] == {"to_device": False} and sections["nvjpeg"]["cmyk"] == {"to_device": False}
    assert sections["nvjpeg"]["baseline"]["error"] is None and sections["training"]["images"] == 64
    assert sections["max_batch"] == {"skipped": "needs CUDA"}
