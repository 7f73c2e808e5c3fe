"""The prepared GPU check: on a machine with a CUDA GPU, one command (under 10 minutes) that runs
what this project could not run without one, and writes one JSON of figures for docs/performance.md.

    .venv/bin/python benchmarks/gpu_check.py --json gpu-check.json
    .venv/bin/python benchmarks/gpu_check.py --cpu-smoke --json out.json   # what CI runs, without a GPU

Sections (each recorded with its figures, or its error, and the seconds it took; one failing
section does not stop the others):

1. ``env``: torch, CUDA, cuDNN, the device; ONNX Runtime's providers and whether a session on
   ``cuda`` really runs the CUDA provider.
2. ``tests``: ``tests/test_gpu.py`` (CUDA actors against CPU ones; nvJPEG against task decoding).
3. ``gpu_benchmark``: ``benchmarks/gpu.py`` (decode rates, predictor rates, decode cores per GPU).
4. ``max_batch``: ResNet-50 fp32 and fp16: the batch the predictor measured to fit, its images/s
   at batches of 64 to 1,024 within that (does a batch past the plan's 128 pay?), and an
   out-of-memory error forced (a batch 4x that) caught by the predictor's halving, the labels
   equal to those of fitting passes.
5. ``nvjpeg``: baseline, progressive, 4:4:4, greyscale, CMYK, truncated, corrupt and 24 MP JPEGs:
   which the decode task passes on, and for those nvJPEG + torch resize against Pillow (grey levels).
6. ``numerics``: ResNet-50 probabilities on the GPU in IEEE fp32, in TF32 and fp16, against the CPU's.
7. ``training``: one epoch of a ResNet-18 on 512 digits on the GPU (fp32), seconds and loss.
8. ``ray_run``: a local Ray run over ``--jpegs`` JPEGs: ``jpeg_on`` tasks against predictor, and
   ``gpus_per_actor`` 1 against 0.5, two batches per actor at once (the default on a GPU) against
   one, the plan's batch of 128 against 512, images/s with GPU utilisation sampled every 0.2 s.

Without CUDA (``--cpu-smoke``) sections 1, 5 and 7 run on the CPU with tiny sizes so that the
script is known to run; the others say they need CUDA.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def env(args) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import torch

    out: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                           "device": torch.cuda.get_device_name(0) if _cuda() else "cpu",
                           "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers()}
    from onnx import TensorProto, helper

    from imgclf_ray.models.onnx_runtime import session

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    blob = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    try:
        made = session(blob, device="cuda" if _cuda() else "cpu")
        out["ort_session_providers"] = made.get_providers()
        out["ort_relu"] = made.run(None, {"x": np.array([-1, 0, 1, 2], np.float32)})[0].tolist()
    except Exception as exc:  # noqa: BLE001 - recorded: the figure is whether it runs
        out["ort_session_error"] = str(exc)[:300]
    return out


def tests(args) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"],
                          cwd=REPO, capture_output=True, text=True, timeout=400)
    return {"returncode": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:]}


def gpu_benchmark(args) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--seconds", "5", "--json", out.name],
                       cwd=REPO, check=True, capture_output=True, timeout=300)
        return json.loads(Path(out.name).read_text())


def _artifact(folder: str, architecture: str, size: int = 224) -> str:
    import torch

    from imgclf_ray.models.artifact import save_artifact
    from imgclf_ray.models.torch_classifier import build_network

    torch.manual_seed(0)
    save_artifact(folder, {"architecture": architecture, "labels": [f"c{i}" for i in range(1000)],
                           "preprocess": {"resize": size, "crop": size}}, build_network(architecture, 1000).state_dict())
    return folder


def max_batch(args) -> dict[str, Any]:
    import numpy as np

    from benchmarks.gpu import _rate
    from imgclf_ray.models.torch_classifier import TorchClassifier
    from imgclf_ray.stages.predict import Passes

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        uri = _artifact(folder, "resnet50")
        for precision in ("fp32", "fp16"):
            clf = TorchClassifier(uri, device="cuda", precision=precision)
            fits = clf.max_batch
            x = np.random.default_rng(0).integers(0, 256, (fits * 4, 3, 224, 224), dtype=np.uint8)
            by_batch = {b: round(_rate(lambda: clf.predict_proba(x[:b]), b, 2.0), 1)
                        for b in (64, 128, 256, 512, 1024) if b <= fits}
            passes = Passes()
            started = time.perf_counter()
            labels = np.concatenate(passes.run(lambda b: list(clf._forward(b).argmax(1)), x))
            reference = clf.predict_proba(x[:fits * 2]).argmax(1)
            out[precision] = {"max_batch": fits, "images_per_second_by_batch": by_batch,
                              "forced_batch": len(x), "halvings": passes.halved,
                              "pass_size_after": passes.size, "seconds": round(time.perf_counter() - started, 2),
                              "labels_equal_to_fitting_passes": bool((labels[:fits * 2] == reference).all())}
    return out


def _odd_jpegs() -> dict[str, bytes]:
    import numpy as np
    import skimage.data
    from PIL import Image

    photo = Image.fromarray(skimage.data.astronaut())

    def jpeg(img, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90, **kw)
        return buf.getvalue()

    base = jpeg(photo)
    corrupt = bytearray(base)
    corrupt[len(corrupt) // 2:len(corrupt) // 2 + 64] = bytes(64)
    big = photo.resize((6000, 4000))  # 24 MP
    return {"baseline": base, "progressive": jpeg(photo, progressive=True), "444": jpeg(photo, subsampling=0),
            "greyscale": jpeg(photo.convert("L")), "cmyk": jpeg(photo.convert("CMYK")),
            "truncated": base[: len(base) // 2], "corrupt": bytes(corrupt), "24mp": jpeg(big),
            "noise": jpeg(Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)))}


def nvjpeg(args) -> dict[str, Any]:
    import numpy as np
    import torch

    from imgclf_ray.imaging.conditioning import Conditioning
    from imgclf_ray.imaging.device_decode import _on_cpu, decode_batch, for_device
    from imgclf_ray.spec import DecodeSpec

    device = torch.device("cuda" if _cuda() else "cpu")
    cond = Conditioning(resize=256, crop=224, channels=3)
    options = DecodeSpec(jpeg_on="predictor")
    out: dict[str, Any] = {"device": str(device)}
    for name, blob in _odd_jpegs().items():
        size = for_device(blob, options)
        row: dict[str, Any] = {"to_device": size is not None}
        if size is not None:
            images, errors = decode_batch([blob], cond, options, device, [size[0] * size[1]])
            row["error"] = errors[0]
            if images[0] is not None:
                pil = _on_cpu(blob, cond, options).astype(np.int16)
                diff = np.abs(images[0].cpu().numpy().astype(np.int16) - pil)
                row.update(max_grey_levels=int(diff.max()), mean_grey_levels=round(float(diff.mean()), 4))
        out[name] = row
    return out


def numerics(args) -> dict[str, Any]:
    import numpy as np
    import torch

    from imgclf_ray.models.torch_classifier import TorchClassifier

    x = np.random.default_rng(1).integers(0, 256, (64, 3, 224, 224), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        uri = _artifact(folder, "resnet50")
        cpu = TorchClassifier(uri, device="cpu", threads=os.cpu_count()).predict_proba(x)
        out: dict[str, Any] = {}
        for precision in ("fp32", "tf32", "fp16"):
            gpu = TorchClassifier(uri, device="cuda", precision=precision).predict_proba(x)
            out[precision] = {"max_abs_diff": float(np.abs(gpu - cpu).max()),
                              "labels_equal": float((gpu.argmax(1) == cpu.argmax(1)).mean()),
                              "fp32_math": torch.backends.cudnn.conv.fp32_precision}
    return out


def training(args) -> dict[str, Any]:
    import numpy as np
    from sklearn.datasets import load_digits

    from imgclf_ray.spec import CnnSpec
    from imgclf_ray.training.cnn import fit_cnn

    digits = load_digits()
    n = 64 if args.cpu_smoke else 512
    x = np.repeat(np.repeat((digits.images[:n] * 16).astype(np.uint8), 4, axis=1), 4, axis=2)
    x = np.repeat(x[:, None], 3, axis=1)
    y = digits.target[:n]
    cnn = CnnSpec(architecture="resnet18", workers=0, use_gpu=_cuda(), epochs=1, batch_size=64)
    started = time.perf_counter()
    _, history = fit_cnn(cnn, x, y, x[:0], y[:0], 10, False, None, None, seed=0)
    return {"images": n, "seconds": round(time.perf_counter() - started, 2), "train_loss": history[-1]["train_loss"],
            "device": "cuda" if _cuda() else "cpu"}


class _Utilisation:
    """GPU utilisation sampled every 0.2 s (torch.cuda.utilization: NVML) while a block runs."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()

    def __enter__(self) -> "_Utilisation":
        import torch

        def sample() -> None:
            while not self._stop.wait(0.2):
                try:
                    self.samples.append(int(torch.cuda.utilization()))
                except Exception:  # noqa: BLE001 - no NVML: no samples
                    return

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        import numpy as np

        return {"mean": round(float(np.mean(self.samples)), 1), "p50": float(np.median(self.samples))} \
            if self.samples else {}


def ray_run(args) -> dict[str, Any]:
    from benchmarks.gpu import corpus
    from imgclf_ray.io.listing import list_archive
    from imgclf_ray.runner.job import execute
    from imgclf_ray.spec import parse_spec

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        archive = Path(work, "jpegs")
        archive.mkdir()
        for i, blob in enumerate(corpus(args.jpegs)):
            (archive / f"img-{i:05d}.jpg").write_bytes(blob)
        model = _artifact(str(Path(work, "model")), "resnet50")
        for name, decode, gpus, calls, batch in (
                ("tasks, 1 GPU per actor", "tasks", 1.0, 2, None),
                ("tasks, 1 GPU per actor, one batch at a time", "tasks", 1.0, 1, None),
                ("tasks, 1 GPU per actor, batches of 512", "tasks", 1.0, 2, 512),
                ("predictor, 1 GPU per actor", "predictor", 1.0, 2, None), ("tasks, 0.5 GPU per actor", "tasks", 0.5, 2, None)):
            spec = parse_spec({"name": "gpucheck", "source": {"uri": str(archive)}, "decode": {"jpeg_on": decode},
                               "model": {"uri": model, "device": "cuda", "precision": "fp16"},
                               "resources": {"gpus_per_actor": gpus, "calls_per_actor": calls,
                                             **({"batch_size": batch} if batch else {})},
                               "sink": {"uri": str(Path(work, "out", name.replace(" ", "-").replace(",", "")))}},
                              "<gpu_check>")
            with _Utilisation() as util:
                result = execute(spec, list_archive(spec.source), "r")
            out[name] = {"images": result.rows, "images_per_second": round(result.images_per_second, 1),
                         "wall_seconds": round(result.wall_seconds, 1), "gpu_utilisation": util.summary(),
                         "plan": result.plan}
    return out


SECTIONS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "env": env, "tests": tests, "gpu_benchmark": gpu_benchmark, "max_batch": max_batch, "nvjpeg": nvjpeg,
    "numerics": numerics, "training": training, "ray_run": ray_run}
CPU_SMOKE = ("env", "nvjpeg", "training")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--jpegs", type=int, default=2000, help="JPEGs of the Ray run")
    parser.add_argument("--cpu-smoke", action="store_true", help="without CUDA: the sections a CPU can run, tiny")
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), default=None)
    args = parser.parse_args(argv)
    cuda = _cuda()
    report: dict[str, Any] = {"cuda": cuda, "sections": {}}
    for name in args.only or list(SECTIONS):
        if not cuda and name not in CPU_SMOKE:
            report["sections"][name] = {"skipped": "needs CUDA"}
            continue
        started = time.perf_counter()
        try:
            figures = SECTIONS[name](args)
        except Exception as exc:  # noqa: BLE001 - a failing section is a finding, recorded
            figures = {"error": f"{type(exc).__name__}: {exc}"[:500], "traceback": traceback.format_exc()[-2000:]}
        figures["seconds"] = round(time.perf_counter() - started, 1)
        report["sections"][name] = figures
        print(f"{name}: {json.dumps(figures, default=str)[:300]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
