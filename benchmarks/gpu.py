"""The GPU path in one command: decode rates on CPU cores and on the GPU, the predictor's rate on
the device, and from them the decode cores one GPU needs.

    .venv/bin/python benchmarks/gpu.py                    # on a CUDA machine; --json FILE keeps it
    .venv/bin/python benchmarks/gpu.py --images 16 --seconds 1 --batch 4   # the CPU fallback CI runs

Measured, in one process, on a 640x480 JPEG corpus cut from photographs scikit-image ships and a
seeded ResNet-18 (224 px, random weights, an imgclf artifact):

- CPU decode: Pillow decode + resize(256) + centre crop(224), one core, images/s (what one decode
  task does per core), with and without ``decode.jpeg_draft`` (DCT-domain downscaling);
- with ``decode.jpeg_on: predictor``: the decode task's header checks per core, and imgclf's own
  predictor-side decode (``imaging.device_decode``: ``torchvision.io.decode_jpeg`` batched on
  ``cuda`` (nvJPEG), then resize + crop there; on the CPU without a GPU), alone and followed by
  the forward pass;
- the predictor (imgclf's TorchClassifier) on the device: fp32, and bf16 (CPU, when native) or
  fp16 autocast (CUDA), from pinned host memory on CUDA; images/s at the batch it measured to fit
  (``max_batch``: the model's memory per image into the free device memory);
- decode cores per GPU = predictor images/s / CPU decode images/s per core; with
  ``jpeg_on: predictor``, (decode + predict images/s) / header checks per core.

Without CUDA every figure is measured on the CPU and labelled so: the script runs end to end and
CI checks that it does.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def corpus(n: int) -> list[bytes]:
    """n 640x480 JPEGs (random crops of scikit-image photographs), as encoded bytes."""
    import numpy as np
    import skimage.data
    from PIL import Image

    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((1024, 768))
              for name in ("astronaut", "coffee", "chelsea", "rocket")]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        x, y = int(rng.integers(0, 1024 - 640)), int(rng.integers(0, 768 - 480))
        buf = io.BytesIO()
        img.crop((x, y, x + 640, y + 480)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _rate(fn, items: int, seconds: float) -> float:
    """items/s of ``fn`` (which handles ``items`` per call), repeated for about ``seconds``."""
    fn()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or not done:
        fn()
        done += items
    return done / (time.perf_counter() - started)


def cpu_decode_rate(data: list[bytes], seconds: float, draft: bool) -> float:
    import torch
    from PIL import Image

    torch.set_num_threads(1)

    def one_pass():
        for blob in data:
            img = Image.open(io.BytesIO(blob))
            if draft:
                img.draft("RGB", (256, 256))
            img = img.convert("RGB")
            w, h = img.size
            s = 256 / min(w, h)
            img = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
            w, h = img.size
            left, top = round((w - 224) / 2), round((h - 224) / 2)
            img.crop((left, top, left + 224, top + 224)).tobytes()
    return _rate(one_pass, len(data), seconds)


def header_rate(data: list[bytes], seconds: float) -> float:
    """What a decode task does per JPEG with ``decode.jpeg_on: predictor``: the header checks only
    (imgclf's ``for_device``), one core."""
    from imgclf_ray.imaging.device_decode import for_device
    from imgclf_ray.spec import DecodeSpec

    options = DecodeSpec(jpeg_on="predictor")
    return _rate(lambda: [for_device(blob, options) for blob in data], len(data), seconds)


def device_decode_rate(data: list[bytes], device: str, seconds: float, clf=None) -> float:
    """imgclf's predictor-side decode (``imaging.device_decode.decode_batch``: torchvision's
    batched decode_jpeg on ``device``, resize + centre crop there), and with ``clf`` the forward
    pass after it: the predictor's whole work per batch with ``decode.jpeg_on: predictor``."""
    import torch

    from imgclf_ray.imaging.conditioning import Conditioning
    from imgclf_ray.imaging.device_decode import decode_batch
    from imgclf_ray.spec import DecodeSpec

    cond, options = Conditioning(256, 224, resampler="torch"), DecodeSpec(jpeg_on="predictor")

    def one_pass():
        images, _ = decode_batch(data, cond, options, torch.device(device))
        if clf is not None:
            clf.predict_proba(torch.stack(images))
        elif device == "cuda":
            torch.cuda.synchronize()
    return _rate(one_pass, len(data), seconds)


def predictor_rate(clf, device: str, batch: int, seconds: float) -> tuple[float, int]:
    """(images/s, batch used) of imgclf's predictor; on CUDA the batch it measured fits
    (``max_batch``, from the model's memory per image), at most 1,024."""
    import torch

    if device == "cuda":
        batch = min(1024, clf.max_batch)
    pixels = torch.zeros((batch, 3, 224, 224), dtype=torch.uint8)
    if device == "cuda":
        pixels = pixels.pin_memory()
    x = pixels.numpy()
    return _rate(lambda: clf.predict_proba(x), batch, seconds), batch


def _sig(x: float) -> float:
    return float(f"{x:.3g}")


def make_model(folder: str) -> str:
    import torch

    from imgclf_ray.models.artifact import save_artifact
    from imgclf_ray.models.torch_classifier import build_network

    torch.manual_seed(0)
    save_artifact(folder, {"architecture": "resnet18", "labels": [f"c{i}" for i in range(10)],
                           "preprocess": {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406],
                                          "std": [0.229, 0.224, 0.225]}},
                  build_network("resnet18", 10).state_dict())
    return folder


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="JPEGs in the decode corpus")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each rate is measured")
    parser.add_argument("--batch", type=int, default=64, help="predictor batch (CUDA: doubled while it fits)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import torch

    from imgclf_ray.models.torch_classifier import _native_bf16

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    data = corpus(args.images)
    result: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA: fallback)",
                    "cpu_cores": os.cpu_count()}
    result["cpu_decode_per_core"] = round(cpu_decode_rate(data, args.seconds, draft=False), 1)
    result["cpu_decode_draft_per_core"] = round(cpu_decode_rate(data, args.seconds, draft=True), 1)
    torch.set_num_threads(os.cpu_count())
    result["header_only_per_core"] = round(header_rate(data, args.seconds), 1)
    result["device_decode"] = round(device_decode_rate(data, device, args.seconds), 1)
    from imgclf_ray.models.loader import load_classifier

    with tempfile.TemporaryDirectory() as folder:
        model = make_model(folder)
        clf = load_classifier(model, device=device, threads=os.cpu_count())
        rate, batch = predictor_rate(clf, device, args.batch, args.seconds)
        result["predictor_fp32"], result["batch"] = round(rate, 1), batch
        result["device_decode_and_predict_fp32"] = round(
            device_decode_rate(data[:batch], device, args.seconds, clf), 1)
        low = "fp16" if cuda else ("bf16" if _native_bf16() else None)
        if low:
            low_clf = load_classifier(model, device=device, threads=os.cpu_count(), precision=low)
            result[f"predictor_{low}"] = round(predictor_rate(low_clf, device, batch, args.seconds)[0], 1)
    best = max(v for k, v in result.items() if k.startswith("predictor_"))
    # Three significant digits: on a CPU (the fallback) these are small, never rounded to 0.
    result["decode_cores_per_device"] = _sig(best / result["cpu_decode_per_core"])
    result["decode_cores_per_device_draft"] = _sig(best / result["cpu_decode_draft_per_core"])
    # With decode.jpeg_on: predictor the device decodes too; the tasks read files and headers.
    result["decode_cores_per_device_jpeg_on_predictor"] = _sig(
        result["device_decode_and_predict_fp32"] / result["header_only_per_core"])
    for key, value in result.items():
        print(f"{key:>32}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
