"""Side-by-side benchmark: imgclf against the usual ways of doing the same job, in one run.

    .venv/bin/python benchmarks/run.py                 # N = 2000, 4N = 8000 (about 15 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --n 500         # a quicker look
    .venv/bin/python benchmarks/run.py --n 8 --quick   # the CI smoke: each harness, tiny, no Ray, no targets

It writes a corpus of 640x480 JPEGs cut from photographs that scikit-image and scikit-learn ship
(random crops, flips, one folder per source photo), a seeded ResNet-18 artifact (random weights,
224 px) and a classical model (logistic regression over HOG, trained here with ``imgclf train``),
then runs, each as its own process, end to end (interpreter and Ray start-up included):

  imgclf (CNN)          ``imgclf run`` on the corpus, exact torchvision pixels, on Ray (not with --quick)
  imgclf --local (CNN)  the same with ``run.executor: local`` (no Ray: decode workers + the model
                        in the command's process; what ``imgclf run`` with no flag does on a
                        machine without Ray running), ``model.runtime: torch``; also with
                        ``model.runtime: onnxruntime`` (what runtime auto takes from 1,000 images)
  imgclf (CNN, draft)   the same with ``decode.jpeg_draft`` (DCT-domain downscaling)
  imgclf (CNN, draft, bf16 / onnxruntime)  the same with ``model.precision: bf16`` / ``model.runtime:
                        onnxruntime`` (an ONNX export of the artifact run by ONNX Runtime); these
                        variants (and the --local ONNX Runtime row) are left out of --quick
  plain PyTorch loop    ``benchmarks/plain_torch.py``: Pillow + torchvision transforms, all cores
  Ray Data docs         ``benchmarks/ray_data_docs.py``: read_images -> map_batches -> actor pool
                        (not with --quick)
  Daft docs             ``benchmarks/daft_job.py``: from_glob_path -> download -> decode_image ->
                        resize -> a @daft.cls batch method (N and 4N; not with --quick or --skip-daft;
                        Daft, pinned in pyproject's ``bench`` extra, is installed with --no-deps into
                        benchmarks/.daft-env, outside the project's environment)
  imgclf (classical)    ``imgclf run`` with the HOG + logistic-regression artifact (and --local; --quick
                        runs only the --local one: the CNN row covers the harness on Ray)
  plain classical loop  ``benchmarks/plain_classical.py``: Pillow, HOG, predict_proba; one process
  imgclf 4N             the CNN job on four times the images (scaling)
  imgclf (S3)           the CNN job reading the corpus from an S3 server (moto on 127.0.0.1)

then, in one process, the predictor alone on the same model and uint8 batches (torch eager as a
plain script writes it, imgclf's fp32 path, its bf16 path, ONNX Runtime: images/s and the largest
probability difference from imgclf's fp32), and prints images/s, peak memory (PSS summed over the process tree, sampled every 0.25 s) and the
ratios the targets are stated in. ``--json FILE`` keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
IMGCLF = str(Path(PYTHON).with_name("imgclf"))


# -- corpus and models -------------------------------------------------------------------------

def source_photos():
    import numpy as np
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina",
             "hubble_deep_field")
    photos = {n: Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in names}
    photos.update({n: Image.fromarray(a) for n, a in zip(("china", "flower"), load_sample_images().images)})
    return {n: p for n, p in photos.items() if isinstance(np.asarray(p), np.ndarray)}


def make_corpus(root: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct 640x480 JPEGs (quality 90), one folder per source photograph."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = source_photos()
    names = sorted(photos)
    files = []
    for i in range(n):
        name = names[i % len(names)]
        img = photos[name]
        w, h = img.size
        cw = int(min(w, h * 4 / 3) * rng.uniform(0.5, 1.0))
        ch = int(cw * 3 / 4)
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = img.crop((x, y, x + cw, y + ch)).resize((640, 480), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = root / name / f"img-{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path, quality=90)
        files.append(path)
    return files


def link_subset(files: list[Path], src_root: Path, dst_root: Path) -> None:
    for f in files:
        dst = dst_root / f.relative_to(src_root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, dst)


def make_cnn_model(uri: Path) -> None:
    import torch

    from imgclf_ray.models.artifact import save_artifact
    from imgclf_ray.models.torch_classifier import build_network

    torch.manual_seed(0)
    save_artifact(str(uri), {
        "architecture": "resnet18", "labels": [f"class{i}" for i in range(1000)],
        "preprocess": {"resize": 256, "crop": 224, "channels": 3,
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }, build_network("resnet18", 1000).state_dict())


def make_classical_model(work: Path, corpus: Path, uri: Path) -> None:
    spec = work / "train-classical.yaml"
    spec.write_text(json.dumps({
        "name": "bench-classical",
        "data": {"uri": str(corpus), "labels": {"kind": "folder"}},
        "task": "multiclass",
        "model": {"output": str(uri), "preprocess": {"resize": 64, "crop": 64, "channels": 1},
                  "features": {"name": "hog"}, "estimator": {"name": "logistic_regression",
                                                             "params": {"max_iter": 2000}}},
    }))
    subprocess.run([IMGCLF, "train", str(spec)], check=True, stdout=subprocess.DEVNULL)


def write_job(work: Path, name: str, source: str, model_dir: Path, sink: Path, **extra) -> Path:
    # Rows not marked --local run on Ray (a local instance started for the run), named: since
    # run.executor auto became the default, `imgclf run` with no flag on this machine is the --local row.
    job = {"name": name, "source": {"uri": source, "extensions": [".jpg"]}, "model": {"uri": str(model_dir)},
           "sink": {"uri": str(sink)}, "run": {"executor": "ray"}}
    for key, value in extra.items():
        job[key] = {**job.get(key, {}), **value}
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(job))
    return path


# -- measuring ---------------------------------------------------------------------------------

@dataclass
class Row:
    method: str
    images: int
    seconds: float
    peak_mb: float
    first_batch_s: Optional[float] = None
    pipeline_s: Optional[float] = None  # without interpreter, imports and Ray start-up

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def pipeline_rate(self) -> Optional[float]:
        return self.images / self.pipeline_s if self.pipeline_s else None


def _tree_memory(proc) -> int:
    """Proportional set size summed over the process tree: shared pages (Ray's object store is
    mapped into every worker, torch's libraries into most) are counted once, not once per process."""
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def publish(figures: dict, path: Optional[str]) -> dict:
    """A benchmark's figures printed as JSON, and written to ``path`` when given."""
    print(json.dumps(figures, indent=1))
    if path:
        Path(path).write_text(json.dumps(figures, indent=1))
    return figures


def measure(cmd: list[str], env: Optional[dict] = None, log: Optional[Path] = None) -> tuple[float, float]:
    """Run ``cmd`` to completion; (wall seconds, peak memory (PSS) of its process tree in MB)."""
    import psutil

    started = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_memory(ps))
        time.sleep(0.25)
    wall = time.perf_counter() - started
    if proc.returncode:
        tail = log.read_text()[-3000:] if log else ""
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}\n{tail}")
    return wall, peak / 2 ** 20


def run_imgclf(method: str, job: Path, images: int, work: Path, env: Optional[dict] = None) -> Row:
    wall, peak = measure([IMGCLF, "run", str(job), "-q", "--run-id", "bench"], env, work / f"{job.stem}.log")
    summary = json.loads(Path(json.loads(job.read_text())["sink"]["uri"], "bench", "_run_summary.json").read_text())
    assert summary["rows"] == images and summary["by_status"].get("ok") == images, summary["by_status"]
    return Row(method, images, wall, peak, summary.get("first_batch_seconds"), summary["wall_seconds"])


def _label_agreement(a: Path, b: Path) -> float:
    """Share of a's images that b labels the same (each a run folder or one Parquet file)."""
    import pyarrow.parquet as pq

    la, lb = ({r["uri"].removeprefix("file://"): r["label"] for r in pq.read_table(
        [p] if p.is_file() else sorted(p.glob("*.parquet"))).select(["uri", "label"]).to_pylist()} for p in (a, b))
    return sum(la[u] == lb.get(u) for u in la) / max(1, len(la))


def daft_env() -> Path:
    """A folder holding Daft (the ``bench`` extra's pin), installed without its dependencies: Daft
    0.7 declares pyarrow<26, the project runs pyarrow 26, and Daft works beside it."""
    import tomllib

    target = REPO / "benchmarks" / ".daft-env"
    pin = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"][0]
    marker = target / ".installed"
    if not marker.exists() or marker.read_text() != pin:
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), pin], check=True)
        marker.write_text(pin)
    return target


def run_daft(method: str, corpus: Path, images: int, work: Path, out: str) -> Row:
    env = {"PYTHONPATH": str(daft_env()), "DO_NOT_TRACK": "1"}
    wall, peak = measure([PYTHON, str(REPO / "benchmarks" / "daft_job.py"), str(corpus), str(work / "cnn"),
                          str(work / out)], env, work / f"{out}.log")
    return Row(method, images, wall, peak, None, _loop_seconds(work / out))


def _loop_seconds(out: Path) -> float:
    return json.loads(Path(str(out) + ".timing.json").read_text())["loop_seconds"]


def predictor_rates(model: Path, seconds: float, batch: int = 32) -> list[dict]:
    """The model alone, one process, all cores, one (batch, 3, 224, 224) uint8 batch: images/s of
    torch eager fp32 (no folding, contiguous), imgclf's torch fp32 (batch-norm folded, channels
    last), its bf16, and ONNX Runtime on the cached export; max |p - p(imgclf fp32)| for each."""
    import numpy as np
    import torch

    from imgclf_ray.models.loader import load_classifier

    cores = os.cpu_count() or 1
    x = np.random.default_rng(0).integers(0, 256, (batch, 3, 224, 224), dtype=np.uint8)

    class Eager:
        def __init__(self):
            from imgclf_ray.models.artifact import load_state_dict, read_card
            from imgclf_ray.models.torch_classifier import build_network, normalise

            card = read_card(str(model))
            self.net = build_network(card.architecture, len(card.labels)).eval()
            self.net.load_state_dict(load_state_dict(str(model), card))
            self.mean = torch.tensor(card.preprocess.mean).view(1, 3, 1, 1)
            self.std = torch.tensor(card.preprocess.std).view(1, 3, 1, 1)
            self.normalise = normalise

        def predict_proba(self, pixels):
            with torch.inference_mode():
                return torch.softmax(self.net(self.normalise(torch.from_numpy(pixels), self.mean, self.std)), 1).numpy()

    paths = [("torch eager fp32 (plain)", Eager),
             ("imgclf torch fp32", lambda: load_classifier(str(model), device="cpu", threads=cores)),
             ("imgclf torch bf16", lambda: load_classifier(str(model), device="cpu", threads=cores, precision="bf16")),
             ("imgclf onnxruntime", lambda: load_classifier(str(model), device="cpu", threads=cores,
                                                             runtime="onnxruntime"))]
    out, reference = [], None
    for name, make in paths:
        clf = make()
        probs = clf.predict_proba(x)  # warm-up (kernel selection)
        reference = probs if name == "imgclf torch fp32" else reference
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            clf.predict_proba(x)
            count += 1
        out.append({"path": name, "rate": round(batch * count / (time.perf_counter() - start), 1), "probs": probs})
        del clf
    for row in out:
        row["max_abs_diff"] = float(np.abs(row.pop("probs") - reference).max())
    return out


def decode_resize_rate(files: list[Path], seconds: float = 3.0) -> float:
    """Single-core Pillow decode + resize (shorter side 224) rate, images/s."""
    from PIL import Image

    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        img = Image.open(files[done % len(files)]).convert("RGB")
        w, h = img.size
        img.resize((int(224 * w / h), 224), Image.Resampling.BILINEAR)
        done += 1
    return done / (time.perf_counter() - started)


# -- S3 ----------------------------------------------------------------------------------------

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def start_s3(corpus: Path) -> tuple[object, str]:
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    os.environ.update(S3_ENV)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("bench")
    fs.put(str(corpus) + "/", "bench/corpus/", recursive=True)
    return server, endpoint


# -- main --------------------------------------------------------------------------------------

def _variant_rows(add, work: Path, corpus: Path, n: int, ort_env: dict) -> tuple[float, float, float]:
    """The CNN rows with other options (JPEG draft, bf16, ONNX Runtime); their label agreements."""
    add(run_imgclf("imgclf (CNN, draft)", write_job(work, "cnn-draft", str(corpus), work / "cnn", work / "out-draft",
                                                    decode={"jpeg_draft": True}), n, work))
    add(run_imgclf("imgclf (CNN, draft, bf16)", write_job(
        work, "cnn-bf16", str(corpus), work / "cnn", work / "out-bf16", decode={"jpeg_draft": True},
        model={"precision": "bf16"}), n, work))
    agreement = _label_agreement(work / "out-draft" / "bench", work / "out-bf16" / "bench")
    print(f"  bf16 vs fp32 top-1 labels agree on {100 * agreement:.1f} % of images", flush=True)
    add(run_imgclf("imgclf (CNN, draft, onnxruntime)", write_job(
        work, "cnn-ort", str(corpus), work / "cnn", work / "out-ort", decode={"jpeg_draft": True},
        model={"runtime": "onnxruntime"}), n, work, env=ort_env))
    ort_agreement = _label_agreement(work / "out-draft" / "bench", work / "out-ort" / "bench")
    print(f"  onnxruntime vs torch fp32 top-1 labels agree on {100 * ort_agreement:.1f} % of images", flush=True)
    local_ort_agreement = _label_agreement(work / "out-cnn" / "bench", work / "out-local-ort" / "bench")
    print(f"  --local onnxruntime vs Ray torch fp32 (exact pixels): labels agree on "
          f"{100 * local_ort_agreement:.1f} %", flush=True)
    return agreement, ort_agreement, local_ort_agreement


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="images in the base corpus (N)")
    parser.add_argument("--work", default="benchmarks/work", help="scratch folder (recreated)")
    parser.add_argument("--quick", action="store_true", help="smoke run: no 4N row, no targets")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--skip-daft", action="store_true", help="no Daft rows (they need PyPI once)")
    parser.add_argument("--predictor-seconds", type=float, default=10.0,
                        help="how long each path of the predictor-alone comparison runs")
    parser.add_argument("--predictor-batch", type=int, default=32, help="its batch size")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)

    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n = args.n
    scale = 1 if args.quick else 4
    print(f"corpus: {scale * n} JPEGs 640x480 ...", flush=True)
    all_files = make_corpus(work / "corpus-all", scale * n)
    corpus = work / "corpus"
    link_subset(all_files[:n], work / "corpus-all", corpus)
    train_corpus = work / "corpus-train"
    link_subset(make_corpus(work / "train-src", 9 * 12, seed=1), work / "train-src", train_corpus)
    make_cnn_model(work / "cnn")
    make_classical_model(work, train_corpus, work / "classical")
    files = sorted(corpus.rglob("*.jpg"))
    cores = os.cpu_count()

    rows: list[Row] = []

    def add(row: Row) -> None:
        rows.append(row)
        print(f"  {row.method:<24} {row.images:>6} images {row.seconds:7.1f} s {row.rate:7.1f} img/s "
              f"(pipeline {row.pipeline_rate or 0:5.1f}) peak {row.peak_mb:7.0f} MB", flush=True)

    print("running (each end to end, in its own process):", flush=True)
    if not args.quick:  # the smoke starts no Ray (the suite's time budget): its rows run the same harness
        add(run_imgclf("imgclf (CNN)", write_job(work, "cnn", str(corpus), work / "cnn", work / "out-cnn"), n, work))
    add(run_imgclf("imgclf --local (CNN)", write_job(work, "cnn-local", str(corpus), work / "cnn", work / "out-local",
                                                     run={"executor": "local"}, model={"runtime": "torch"}), n, work))
    ort_env = {"IMGCLF_CACHE": str(work / "cache")}  # the ONNX export, made once (by the warm-up run)
    if not args.quick:
        run_imgclf("(warm-up: the ONNX export)", write_job(
            work, "cnn-export", str(corpus), work / "cnn", work / "out-export", run={"executor": "local"},
            model={"runtime": "onnxruntime"}), n, work, env=ort_env)
        add(run_imgclf("imgclf --local (CNN, onnxruntime)", write_job(
            work, "cnn-local-ort", str(corpus), work / "cnn", work / "out-local-ort", run={"executor": "local"},
            model={"runtime": "onnxruntime"}), n, work, env=ort_env))
    agreement = ort_agreement = local_ort_agreement = None
    if not args.quick:  # the variants run the same code with other options: not in the smoke
        agreement, ort_agreement, local_ort_agreement = _variant_rows(add, work, corpus, n, ort_env)
    wall, peak = measure([PYTHON, str(REPO / "benchmarks" / "plain_torch.py"), str(corpus), str(work / "cnn"),
                          str(work / "plain.parquet")], log=work / "plain.log")
    add(Row("plain PyTorch loop", n, wall, peak, None, _loop_seconds(work / "plain.parquet")))
    if not args.quick:  # a second Ray start: not in the smoke (the suite's time budget)
        wall, peak = measure([PYTHON, str(REPO / "benchmarks" / "ray_data_docs.py"), str(corpus), str(work / "cnn"),
                              str(work / "out-docs")], log=work / "docs.log")
        add(Row("Ray Data docs pattern", n, wall, peak, None, _loop_seconds(work / "out-docs")))
    daft = not (args.quick or args.skip_daft)
    if daft:
        add(run_daft("Daft docs pattern", corpus, n, work, "out-daft"))
    if not args.quick:  # the smoke's CNN row already runs this harness on Ray
        add(run_imgclf("imgclf (classical)", write_job(work, "classical", str(corpus), work / "classical",
                                                       work / "out-classical", decode={"jpeg_draft": True}), n, work))
    add(run_imgclf("imgclf --local (classical)", write_job(
        work, "classical-local", str(corpus), work / "classical", work / "out-classical-local",
        decode={"jpeg_draft": True}, run={"executor": "local"}), n, work))
    wall, peak = measure([PYTHON, str(REPO / "benchmarks" / "plain_classical.py"), str(corpus), str(work / "classical"),
                          str(work / "plain-classical.parquet")], log=work / "plain-classical.log")
    add(Row("plain classical loop", n, wall, peak, None, _loop_seconds(work / "plain-classical.parquet")))
    classical_agreement = _label_agreement(work / "out-classical-local" / "bench", work / "plain-classical.parquet")
    print(f"  imgclf classical (draft) vs the plain loop: labels agree on {100 * classical_agreement:.1f} % "
          "of images", flush=True)
    if not args.quick:
        add(run_imgclf("imgclf (CNN, draft) 4N", write_job(work, "cnn-4n", str(work / "corpus-all"), work / "cnn",
                                                          work / "out-4n", decode={"jpeg_draft": True}), 4 * n, work))
        add(run_imgclf("imgclf (CNN) 4N", write_job(work, "cnn-4n-exact", str(work / "corpus-all"), work / "cnn",
                                                   work / "out-4n-exact"), 4 * n, work))
        add(run_imgclf("imgclf --local (CNN) 4N", write_job(
            work, "cnn-4n-local", str(work / "corpus-all"), work / "cnn", work / "out-4n-local",
            run={"executor": "local"}, model={"runtime": "torch"}), 4 * n, work))
        add(run_imgclf("imgclf --local (CNN, onnxruntime) 4N", write_job(
            work, "cnn-4n-local-ort", str(work / "corpus-all"), work / "cnn", work / "out-4n-local-ort",
            run={"executor": "local"}, model={"runtime": "onnxruntime"}), 4 * n, work, env=ort_env))
        if daft:
            add(run_daft("Daft docs pattern 4N", work / "corpus-all", 4 * n, work, "out-daft-4n"))
    if not args.skip_s3:
        server, endpoint = start_s3(corpus)
        try:
            add(run_imgclf("imgclf (CNN, draft) S3", write_job(
                work, "cnn-s3", "s3://bench/corpus", work / "cnn", work / "out-s3", decode={"jpeg_draft": True},
                storage={"endpoint_url": endpoint}), n, work, env=S3_ENV))
        finally:
            server.stop()
    decode_plain = decode_resize_rate(files, seconds=min(3.0, args.predictor_seconds))
    os.environ["IMGCLF_CACHE"] = str(work / "cache")
    predictor = predictor_rates(work / "cnn", seconds=args.predictor_seconds, batch=args.predictor_batch)
    by = {r.method: r for r in rows}
    # The targets are judged on exact fp32 output; bf16 (opt-in, other numerics) is reported beside.
    ours = max([r for r in rows if r.method in ("imgclf (CNN)", "imgclf (CNN, draft)")] or
               [by["imgclf --local (CNN)"]], key=lambda r: r.rate)
    ratios = {"CNN vs plain PyTorch loop": (ours.rate / by["plain PyTorch loop"].rate, 1.5)}
    if "Ray Data docs pattern" in by:
        ratios["CNN vs Ray Data docs pattern"] = (ours.rate / by["Ray Data docs pattern"].rate, 3.0)
    if "imgclf (CNN, draft, bf16)" in by:
        bf16 = by["imgclf (CNN, draft, bf16)"]
        ratios["CNN bf16 vs plain PyTorch loop (fp32)"] = (bf16.rate / by["plain PyTorch loop"].rate, 1.5)
        ratios["CNN bf16 vs Ray Data docs pattern (fp32)"] = (bf16.rate / by["Ray Data docs pattern"].rate, 3.0)
        ratios["CNN onnxruntime vs CNN torch fp32 (draft)"] = (
            by["imgclf (CNN, draft, onnxruntime)"].rate / by["imgclf (CNN, draft)"].rate, None)
    ratios.update({
        "predictor onnxruntime vs imgclf torch fp32": (
            predictor[3]["rate"] / predictor[1]["rate"], None),
        "classical --local vs plain classical loop": (
            by["imgclf --local (classical)"].rate / by["plain classical loop"].rate, 1.0),
        "CNN --local vs plain PyTorch loop": (by["imgclf --local (CNN)"].rate / by["plain PyTorch loop"].rate, None),
        "CNN --local peak memory / plain PyTorch loop": (
            by["imgclf --local (CNN)"].peak_mb / by["plain PyTorch loop"].peak_mb, -1.5),
        "CNN vs plain PyTorch loop, without start-up": (
            (ours.pipeline_rate or 0) / by["plain PyTorch loop"].pipeline_rate, None),
    })
    if "imgclf (classical)" in by:
        classical = by["imgclf (classical)"]
        ratios["classical vs decode+resize x cores"] = (classical.rate / (decode_plain * cores), 0.7)
        ratios["classical (Ray) vs plain classical loop"] = (classical.rate / by["plain classical loop"].rate, None)
        ratios["classical vs decode+resize x cores, without start-up"] = (
            (classical.pipeline_rate or 0) / (decode_plain * cores), None)
    if "imgclf (CNN, draft) 4N" in by:
        big, small = by["imgclf (CNN, draft) 4N"], by["imgclf (CNN, draft)"]
        ratios["time 4N / time N"] = (big.seconds / small.seconds, -4.4)
        ratios["peak memory 4N / N"] = (big.peak_mb / small.peak_mb, -1.25)
    if "Daft docs pattern" in by:
        exact = by["imgclf (CNN)"]  # exact torchvision pixels, fp32: the like-for-like row
        ratios["CNN vs Daft docs pattern"] = (exact.rate / by["Daft docs pattern"].rate, None)
        ratios["CNN --local vs Daft docs pattern"] = (by["imgclf --local (CNN)"].rate / by["Daft docs pattern"].rate, 1.0)
        ratios["CNN --local onnxruntime vs Daft docs pattern"] = (  # Daft rows: never with --quick
            by["imgclf --local (CNN, onnxruntime)"].rate / by["Daft docs pattern"].rate, 1.0)
        ratios["CNN onnxruntime vs Daft docs pattern"] = (
            by["imgclf (CNN, draft, onnxruntime)"].rate / by["Daft docs pattern"].rate, None)
        if "Daft docs pattern 4N" in by:
            ratios["CNN 4N vs Daft docs pattern 4N"] = (
                by["imgclf (CNN) 4N"].rate / by["Daft docs pattern 4N"].rate, None)
            ratios["CNN --local 4N vs Daft docs pattern 4N"] = (
                by["imgclf --local (CNN) 4N"].rate / by["Daft docs pattern 4N"].rate, 1.2)
            ratios["CNN --local onnxruntime 4N vs Daft docs pattern 4N"] = (
                by["imgclf --local (CNN, onnxruntime) 4N"].rate / by["Daft docs pattern 4N"].rate, 1.2)
    if "imgclf (CNN, draft) S3" in by:
        ratios["S3 source vs local"] = (by["imgclf (CNN, draft) S3"].rate / by["imgclf (CNN, draft)"].rate, 0.8)
    first = ours.first_batch_s
    first_local = by["imgclf --local (CNN)"].first_batch_s
    print(f"\nsingle-core Pillow decode + resize: {decode_plain:.0f} img/s ({cores} cores)")
    print(f"best imgclf CNN row: {ours.method}; CLI start -> first predicted batch: "
          f"{first if first is None else round(first, 1)} s (target < 15 s); with --local "
          f"{first_local if first_local is None else round(first_local, 1)} s (target <= 8 s)\n")
    print("| method | images | seconds | images/s | pipeline images/s | peak MB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.method} | {r.images} | {r.seconds:.1f} | {r.rate:.1f} | "
              f"{r.pipeline_rate or 0:.1f} | {r.peak_mb:.0f} |")
    print("\n| predictor alone (ResNet-18, batch 32, 224 px) | images/s | max abs p diff vs imgclf fp32 |\n|---|---|---|")
    for p in predictor:
        print(f"| {p['path']} | {p['rate']:.1f} | {p['max_abs_diff']:.1e} |")
    print("\n| ratio | measured | target | met |\n|---|---|---|---|")
    for name, (value, target) in ratios.items():
        if target is None:
            print(f"| {name} | {value:.2f} | (diagnostic) | - |")
            continue
        ok = value <= -target if target < 0 else value >= target
        print(f"| {name} | {value:.2f} | {'<=' if target < 0 else '>='} {abs(target)} | "
              f"{'-' if args.quick else ('yes' if ok else 'NO')} |")
    result = {"n": n, "cores": cores, "bf16_label_agreement": agreement and round(agreement, 4),
              "onnxruntime_label_agreement": ort_agreement and round(ort_agreement, 4), "predictor": predictor,
              "rows": [asdict(r) | {"rate": round(r.rate, 2), "pipeline_rate": r.pipeline_rate} for r in rows],
              "classical_label_agreement": round(classical_agreement, 4),
              "local_onnxruntime_label_agreement": local_ort_agreement and round(local_ort_agreement, 4),
              "decode_resize_per_core": round(decode_plain, 1), "first_batch_seconds": first,
              "first_batch_seconds_local": first_local,
              "ratios": {k: round(v, 3) for k, (v, _) in ratios.items()}}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
