"""``model.precision: int8``: a CNN quantized to int8 with ONNX Runtime, for CPU predictors.

Done once, on the driver, before the archive is listed: the model's ONNX graph (a torch artifact's
cached export, or an ONNX artifact's own) is quantized statically — QDQ, per-channel int8 weights
(uint8 where the driver's CPU has no VNNI), uint8 activations, calibrated (MinMax) on images decoded
and conditioned exactly as the run's — and written as an ONNX artifact of its own under
``<sink>/_int8/<base>-<calibration>[-u8]/``, which every
actor on every node reads like any other artifact. Its card keeps the base model's labels,
preprocessing and thresholds and records (``source.int8``) the base model id, the calibration
images' digest and the nodes left in float, so its model id is derived from them: rows, manifest
and incremental state name the int8 model.

Calibration images: ``model.calibration`` (a folder or prefix), or a seeded sample of the archive
drawn on first use and recorded (``calibration-<base>.json`` beside), so that later nights
calibrate on the same images however the archive grows. 64 of them (at most half) calibrate; the
others (up to 256) are held back: before anything is labelled the int8 model's labels (top-1; multilabel: the labels over their thresholds) are compared with fp32's on them;
below ``model.int8_min_agreement`` the first convolution and the classifier head are left in float
and the model quantized again; below it again the run is refused with both figures.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from imgclf_ray.errors import ArtifactError, SpecError
from imgclf_ray.io.storage import filesystem, join, to_uri
from imgclf_ray.messages import describe
from imgclf_ray.models.artifact import ModelCard, read_card, read_weights, write_artifact
from imgclf_ray.spec import JobSpec, SourceSpec

log = logging.getLogger(__name__)

INT8_DIR = "_int8"
SAMPLE = 320  # images drawn from the archive: 64 to calibrate on, the others held back to check
CALIBRATE = 64
MIN_IMAGES = 32  # fewer calibrate and check nothing worth trusting
RECORD = "int8.json"


@dataclass(frozen=True)
class Int8:
    """What the manifest records of an int8 run."""

    model_id: str
    base_model_id: str
    uri: str
    calibration: dict[str, Any]  # source, images, held_back, digest
    agreement: float  # labels equal to fp32's, share of the held-back images
    first_agreement: Optional[float]  # when a first quantization missed and layers were left in float
    float_nodes: list[str]
    seconds: float


def _short(model_id: str) -> str:
    return model_id.split(":", 1)[-1][:16]


@functools.cache
def _vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: say nothing
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _calibration_uris(spec: JobSpec, base: ModelCard, fs, folder: str) -> tuple[list[str], str]:
    """The images to calibrate on (uri and etag per image), and where they come from."""
    from imgclf_ray.io.listing import list_archive

    if spec.model.calibration:
        listed = list_archive(SourceSpec(uri=spec.model.calibration), spec.storage)
        return _sorted(listed), spec.model.calibration
    record = join(folder, f"calibration-{_short(base.model_id())}.json")
    if fs.exists(record):
        return json.loads(fs.cat_file(record))["images"], "the archive (a sample recorded on first use)"
    if spec.source.inventory or spec.source.container:
        raise SpecError("model.calibration: give a folder of images to calibrate int8 on (an inventory or "
                        "container source is not sampled)")
    listed = list_archive(spec.source, spec.storage)
    rng = np.random.default_rng(0)
    picked = listed.take(np.sort(rng.choice(listed.num_rows, min(SAMPLE, listed.num_rows), replace=False)))
    images = _sorted(picked)
    if len(images) >= MIN_IMAGES:
        fs.makedirs(folder, exist_ok=True)
        fs.pipe_file(record, json.dumps({"base_model_id": base.model_id(), "images": images}, indent=1).encode())
    return images, "the archive (a seeded sample, recorded)"


def _sorted(listed) -> list[list]:
    rows = listed.select(["uri", "etag"]).to_pylist()
    return sorted([[r["uri"], r["etag"]] for r in rows])


def _inputs(spec: JobSpec, card: ModelCard, uris: list[str]) -> np.ndarray:
    """The network's float32 inputs of the images that decode, conditioned as the run conditions."""
    from imgclf_ray.io.schema import STATUS_OK
    from imgclf_ray.models.onnx_runtime import normalise
    from imgclf_ray.stages import LoadConfig, LoadStage

    stage = LoadStage(LoadConfig(spec.storage, spec.decode, card.preprocess.conditioning()))
    out = stage({"uri": np.asarray(uris, dtype=object), "size": np.full(len(uris), None, dtype=object),
                 "etag": np.full(len(uris), None, dtype=object)})
    pixels = np.asarray(out["inputs"])[np.asarray(out["status"]) == STATUS_OK]
    prep = card.preprocess
    mean = std = None
    if prep.normalize == "dataset":
        mean = np.asarray(prep.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(prep.std, np.float32).reshape(1, -1, 1, 1)
    return normalise(pixels, mean, std)


def _base_onnx(spec: JobSpec, card: ModelCard, work: Path) -> Path:
    """The fp32 ONNX graph to quantize: a torch artifact's export, an ONNX artifact's own."""
    if card.framework == "onnx":
        path = work / "base.onnx"
        path.write_bytes(read_weights(spec.model.uri, card, spec.storage))
        return path
    from imgclf_ray.models import onnx_runtime
    from imgclf_ray.models.torch_classifier import TorchClassifier

    TorchClassifier(spec.model.uri, spec.storage, device="cpu", threads=1, trusted=spec.model.trusted,
                    runtime="onnxruntime")  # exports into the cache, once per machine
    return onnx_runtime.export_path(card)


def _quantized(base: Path, out: Path, calibration: np.ndarray, exclude: list[str]) -> None:
    """QDQ, per-channel int8 weights, uint8 activations; on a CPU without VNNI/AMX uint8 weights
    (ONNX Runtime's U8U8): its AVX2/AVX-512 kernels for uint8 x int8 (VPMADDUBSW) saturate 16-bit
    sums. Measured on an AVX2 EPYC (ResNet-18, 2 threads; fp32 43.5 images/s): int8 weights 78.9
    images/s, in 7 bits (reduce_range) 77.0, uint8 57.1; a random timm network's held-back labels
    equal to fp32's on 11, 15 and 16 of 18 images, and only uint8 kept a transformers model's
    clear multilabel decisions."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name("prepared.onnx")
    try:
        quant_pre_process(str(base), str(prepared), skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 - the optimisation is optional: quantize the graph as it is
        prepared = base
    name = _input_name(prepared)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: calibration[i:i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8 if _vnni() else QuantType.QUInt8,
                    nodes_to_exclude=exclude)


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def sensitive_nodes(path: Path) -> list[str]:
    """The nodes quantization hurts most, left in float on a second try: the first convolution
    (the image's full range) and the last Gemm / MatMul (the classifier head)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    first = next((n.name for n in nodes if n.op_type == "Conv"), None)
    head = next((n.name for n in reversed(nodes) if n.op_type in ("Gemm", "MatMul")), None)
    return [n for n in (first, head) if n]


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    from imgclf_ray.models.onnx_runtime import session

    s = session(str(path), threads=None)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 32]})[0] for i in range(0, len(x), 32)])


def _labels(path: Path, x: np.ndarray, card: ModelCard, spec: JobSpec) -> list:
    """Each image's labels as the run decides them: the top label (binary: its positive label's
    threshold), or, multilabel, every label at or above its threshold."""
    from imgclf_ray.models.heads import Head
    from imgclf_ray.models.onnx_runtime import scores

    head = Head(card.task, card.labels, card.thresholds, spec.model.threshold, spec.model.thresholds)
    decided = head.decide(scores(_outputs(path, x), card))
    return [tuple(c) for c in decided.chosen] if decided.chosen is not None else decided.label.tolist()


def _agreement(a: list, b: list) -> float:
    return float(np.mean([x == y for x, y in zip(a, b)]))


def _rate(path: Path, x: np.ndarray) -> float:
    started = time.perf_counter()
    _outputs(path, x)
    return len(x) / max(time.perf_counter() - started, 1e-9)


def prepare(spec: JobSpec, sink_root: str, progress: Any = None) -> tuple[JobSpec, Int8]:
    """The job with ``model.uri`` replaced by its int8 artifact (made now, or found made), and
    what the manifest records of it. Refuses (SpecError, ArtifactError) what cannot be quantized,
    too few calibration images, and an agreement with fp32 below ``model.int8_min_agreement``."""
    note = progress or (lambda text: log.info("%s", text))
    started = time.perf_counter()
    base = read_card(spec.model.uri, spec.storage)
    if base.framework not in ("torch", "onnx"):
        raise SpecError(f"model.precision int8: for CNNs (torch and ONNX artifacts); {spec.model.uri} is a "
                        f"{base.framework} model")
    fs, root = filesystem(sink_root, spec.storage)
    folder = join(root, INT8_DIR)
    images, source = _calibration_uris(spec, base, fs, folder)
    if len(images) < MIN_IMAGES:
        raise SpecError(f"model.calibration: {len(images)} images in {spec.model.calibration or spec.source.uri}; "
                        f"int8 calibrates on at least {MIN_IMAGES}")
    digest = hashlib.sha256(json.dumps(images).encode()).hexdigest()
    # uint8 weights where this CPU has no VNNI (_quantized): an artifact of its own.
    target = join(folder, f"{_short(base.model_id())}-{digest[:16]}" + ("" if _vnni() else "-u8"))
    if fs.exists(join(target, RECORD)):
        found = Int8(**json.loads(fs.cat_file(join(target, RECORD))))
        note(f"int8: {found.uri} (quantized earlier; label agreement with fp32 {found.agreement:.3f})")
        return _with(spec, target, fs), found
    note(f"int8: calibrating on {len(images)} images of {source} ...")
    x = _inputs(spec, base, [u for u, _ in images])
    if len(x) < MIN_IMAGES:
        raise SpecError(f"model.calibration: {len(x)} of {len(images)} images decode; int8 calibrates on at "
                        f"least {MIN_IMAGES}")
    x = x[np.random.default_rng(0).permutation(len(x))]  # calibrate and check on every kind of image
    with tempfile.TemporaryDirectory(prefix="imgclf-int8-") as tmp:
        work = Path(tmp)
        fp32 = _base_onnx(spec, base, work)
        out = work / "int8.onnx"
        agreement, first, excluded = _quantized_checked(spec, base, fp32, out, x, note)
        import onnxruntime

        calibration = {"source": source, "images": len(images), "held_back": len(x) - min(CALIBRATE, len(x) // 2),
                       "digest": "sha256:" + digest}
        fields = base.model_dump(mode="json", exclude={"weights", "framework", "library", "network_config"})
        fields.update(framework="onnx", source={**base.source, "int8": {
            "base_model_id": base.model_id(), "calibration_digest": calibration["digest"], "float_nodes": excluded,
            "onnxruntime": onnxruntime.__version__,
            "format": f"QDQ, per-channel {'int8' if _vnni() else 'uint8 (made on a CPU without VNNI)'} weights, "
                      "uint8 activations"}})
        card = write_artifact(target, fields, "model.onnx", "onnx", out.read_bytes(), spec.storage)
    made = Int8(card.model_id(), base.model_id(), to_uri(fs, target), calibration,
                round(agreement, 4), None if first is None else round(first, 4), excluded,
                round(time.perf_counter() - started, 1))
    fs.pipe_file(join(target, RECORD), json.dumps(asdict(made), indent=1).encode())
    note(f"int8: label agreement with fp32 {agreement:.3f} on {calibration['held_back']} held-back images; {target}")
    return _with(spec, target, fs), made


def _quantized_checked(spec: JobSpec, base: ModelCard, fp32: Path, out: Path, x: np.ndarray, note
                       ) -> tuple[float, Optional[float], list[str]]:
    """Quantize ``fp32`` into ``out``, calibrated on the first images of ``x`` and checked on the
    others; again with the sensitive nodes in float when the first agreement misses. Returns
    (agreement, the first one when a second try was made, the nodes left in float)."""
    n = min(CALIBRATE, len(x) // 2)
    calibrate, check = x[:n], x[n:]
    reference = _labels(fp32, check, base, spec)
    first, excluded = None, []
    try:
        _quantized(fp32, out, calibrate, excluded)
        agreement = _agreement(_labels(out, check, base, spec), reference)
        if agreement < spec.model.int8_min_agreement:
            first, excluded = agreement, sensitive_nodes(fp32)
            note(f"int8: label agreement with fp32 {agreement:.3f} < {spec.model.int8_min_agreement}; "
                 f"again with {', '.join(excluded) or 'no node'} in float")
            _quantized(fp32, out, calibrate, excluded)
            agreement = _agreement(_labels(out, check, base, spec), reference)
    except (SpecError, ArtifactError):
        raise
    except Exception as exc:  # noqa: BLE001 - what ONNX Runtime's quantizer cannot do with this graph
        raise ArtifactError(f"model.precision int8: ONNX Runtime cannot quantize {base.architecture} "
                            f"({describe(exc)}); use precision: fp32") from None
    if agreement < spec.model.int8_min_agreement:
        raise SpecError(f"model.precision int8: labels equal fp32's on {first:.3f} of {len(check)} held-back "
                        f"images, and {agreement:.3f} with {', '.join(excluded)} in float; both below "
                        f"model.int8_min_agreement {spec.model.int8_min_agreement}: run in fp32, or lower it")
    if not _vnni():
        note(f"WARNING: model.precision int8: this CPU has no VNNI/AMX int8 instructions; int8 measured "
             f"{_rate(out, check):.0f} images/s here against {_rate(fp32, check):.0f} for fp32")
    return agreement, first, excluded


def _with(spec: JobSpec, target: str, fs) -> JobSpec:
    model = spec.model.model_copy(update={"uri": to_uri(fs, target), "precision": "fp32", "runtime": "torch",
                                          "device": "cpu", "calibration": None})
    return spec.model_copy(update={"model": model})
