"""The stages as plain batch callables, without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf_ray.spec import DecodeSpec
from imgclf_ray.io.schema import OUTPUT_SCHEMA
from imgclf_ray.models.artifact import read_card
from imgclf_ray.spec import StorageSpec
from imgclf_ray.stages import LoadConfig, LoadStage, PredictConfig, PredictStage


def _batch(pixels: np.ndarray, status: list[str]) -> dict[str, np.ndarray]:
    n = len(pixels)
    return {
        "uri": np.array([f"file:///x/{i}.png" for i in range(n)], dtype=object),
        "size": np.array([10] * n), "etag": np.array(["e"] * n, dtype=object),
        "frame": np.zeros(n, np.int32), "width": np.array([8 if s == "ok" else 0 for s in status], np.int32),
        "height": np.array([8 if s == "ok" else 0 for s in status], np.int32),
        "status": np.array(status, dtype=object),
        "error": np.array([None if s == "ok" else "decode: empty file (0 bytes)" for s in status], dtype=object),
        "inputs": pixels,
    }


def test_predict_failure_is_isolated_to_its_rows(tiny_model):
    stage = PredictStage(PredictConfig(tiny_model, StorageSpec(), topk=2, run_id="r", threads=1))
    real = stage.classifier.predict_proba

    def flaky(pixels):
        if (pixels == 7).all(axis=(1, 2, 3)).any():
            raise ValueError("the model cannot take this input")  # an error of the row, not of the device
        return real(pixels)

    stage.classifier.predict_proba = flaky
    pixels = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    pixels[2] = 7
    batch = _batch(pixels, ["ok", "ok", "ok", "error"])
    table = stage(batch)
    assert table.schema == OUTPUT_SCHEMA
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error"]
    assert rows[2]["error"] == "predict: ValueError: the model cannot take this input"
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


def test_out_of_memory_halves_the_passes_and_loses_no_row(tiny_model):
    """torch's own OutOfMemoryError above 3 images: the batch is retried in halves (then kept at
    what fitted), every row gets the scores one pass over the whole batch gives."""
    import torch

    stage = PredictStage(PredictConfig(tiny_model, StorageSpec(), topk=2, run_id="r", threads=1))
    real = stage.classifier.predict_proba
    seen: list[int] = []

    def small_device(pixels):
        seen.append(len(pixels))
        if len(pixels) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pixels)

    pixels = np.random.default_rng(1).integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    reference = real(pixels)
    stage.classifier.predict_proba = small_device
    rows = stage(_batch(pixels, ["ok"] * 10)).to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 10
    np.testing.assert_allclose([r["class_scores"] for r in rows], reference, atol=1e-5)
    assert seen[:4] == [10, 5, 2, 2] and stage.passes.size == 2  # 10 -> 5 -> 2, then 2 at a time
    seen.clear()
    stage(_batch(pixels[:4], ["ok"] * 4))
    assert seen == [2, 2]  # the next batch starts at what fitted


@pytest.mark.parametrize("error", [
    "torch.AcceleratorError('CUDA error: an illegal memory access was encountered')",
    "RuntimeError('CUDA error: device-side assert triggered')",
    "RuntimeError('cuDNN error: CUDNN_STATUS_EXECUTION_FAILED')",
    "torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')",  # even one image
])
def test_a_device_fault_stops_the_stage_and_makes_no_error_row(tiny_model, error):
    import torch

    from imgclf_ray.errors import DeviceFault

    stage = PredictStage(PredictConfig(tiny_model, StorageSpec(), topk=2, run_id="r", threads=1))

    fault = eval(error, {"torch": torch})  # the parametrised errors name torch

    def broken(pixels):
        raise fault

    stage.classifier.predict_proba = broken
    pixels = np.random.default_rng(2).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    with pytest.raises(DeviceFault, match=r"predict: the device .*nothing was committed"):
        stage(_batch(pixels, ["ok"] * 3))


def test_a_device_fault_in_a_run_commits_nothing(tiny_model, digits_archive, tmp_path, monkeypatch):
    """The local executor's predictor runs in this process: a CUDA error injected there fails the
    run with one line and no committed run (the Ray executor's actors raise the same DeviceFault)."""
    from imgclf_ray.errors import DeviceFault
    from imgclf_ray.io.sink import Sink
    from imgclf_ray.models.torch_classifier import TorchClassifier
    from imgclf_ray.runner.job import run_job
    from imgclf_ray.spec import load_spec
    from tests.support.jobs import digits_subset

    def broken(self, pixels):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(TorchClassifier, "predict_proba", broken)
    digits_subset(digits_archive, tmp_path / "archive", 90)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: faulty\nsource: {{uri: {tmp_path / 'archive'}}}\nmodel: {{uri: {tiny_model}}}\n"
                   f"sink: {{uri: {tmp_path / 'out'}}}\nrun: {{executor: local}}\n")
    with pytest.raises(DeviceFault, match="illegal memory access"):
        run_job(load_spec(job), "r1", quiet=True)
    assert Sink(str(tmp_path / "out")).committed_runs() == {}


@pytest.mark.skipif("CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
                    reason="onnxruntime-gpu is installed: this node has the CUDA provider")
def test_onnx_runtime_on_cuda_refuses_a_node_without_its_cuda_provider():
    """This machine's onnxruntime is the CPU package: an actor told to run on cuda refuses, naming
    the fix, instead of running on the CPU of a GPU node."""
    import onnx
    from onnx import TensorProto, helper

    from imgclf_ray.errors import UserError
    from imgclf_ray.models.onnx_runtime import session

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    blob = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(blob))
    assert session(blob).get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(UserError, match="no CUDA provider .*install onnxruntime-gpu .*model.device: cpu"):
        session(blob, device="cuda")


def test_fp32_means_ieee_fp32_on_a_gpu_unless_tf32_is_asked_for():
    """cuDNN's default runs fp32 convolutions in TF32 (torch's cudnn.allow_tf32 is true): a GPU
    classifier sets the process's math before it runs (read by CUDA only; the legacy flags, which
    torch.export still reads: the ONNX export test passes after this one)."""
    import torch

    from imgclf_ray.models.torch_classifier import fp32_math

    fp32_math("tf32")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    fp32_math("fp32")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
