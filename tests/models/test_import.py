"""Models trained elsewhere: each format is built offline with its own library, imported with
``imgclf model import``, run through Ray on real photographs, and compared with the library's own
inference (its own preprocessing) on the same files: same top-1, probabilities within 1e-3."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from imgclf_ray.cli import main
from imgclf_ray.io.listing import list_archive
from imgclf_ray.io.sink import committed_files
from imgclf_ray.models.artifact import read_card
from imgclf_ray.runner.job import execute
from imgclf_ray.spec import parse_spec
from tests.curation.photos import photos
from tests.support.jobs import digits_subset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZES = [(331, 247), (247, 331), (300, 301), (97, 140), (640, 480), (225, 224), (500, 333), (256, 256)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Eight real photographs at shapes that exercise the resize and crop rounding (odd margins,
    portrait, smaller than the model input), as PNG so every reader sees the same pixels."""
    root = tmp_path_factory.mktemp("photos")
    for (name, img), size in zip(sorted(photos((400, 300)).items()), SIZES):
        img.resize(size, Image.Resampling.BICUBIC).save(root / f"{name}.png")
    return root


def images(archive: Path) -> tuple[list[str], list[Image.Image]]:
    files = sorted(archive.glob("*.png"))
    return [f.name for f in files], [Image.open(f).convert("RGB") for f in files]


def decisive(head, reference) -> None:
    """Scale a random head so its logits spread about 10 (top-1 decided, not a near tie), and
    centre each class's logit on these images (so that they do not all get one class)."""
    with torch.no_grad():
        head.bias.zero_()
        head.weight.mul_(10.0 / float(reference().std()))
        head.bias.sub_(reference().mean(0))


def imported(*args: str) -> str:
    result = CliRunner().invoke(main, ["model", "import", *args])
    assert result.exit_code == 0, result.output
    return result.output


def through_ray(model_uri: str, archive: Path, sink: Path, **model) -> dict[str, np.ndarray]:
    """class_scores per file name from a real run on the session's Ray."""
    spec = parse_spec({"name": "import", "source": {"uri": str(archive)}, "sink": {"uri": str(sink)},
                       "model": {"uri": model_uri, "topk": 3, **model},
                       "resources": {"decode_batch_size": 4, "batch_size": 8}}, "<test>")
    execute(spec, list_archive(spec.source), "r")
    rows = pq.read_table([f.removeprefix("file://") for f in committed_files(str(sink), "r")]).to_pylist()
    assert rows and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    return {Path(r["uri"]).name: np.asarray(r["class_scores"]) for r in rows}


def assert_same(ours: dict[str, np.ndarray], names: list[str], ref: np.ndarray, multilabel: bool = False) -> None:
    got = np.stack([ours[n] for n in names])
    assert got.shape == ref.shape
    if multilabel:
        assert ((got > 0.5) == (ref > 0.5)).all()
    else:
        assert (got.argmax(1) == ref.argmax(1)).all()
        assert len(set(ref.argmax(1))) > 1  # the images are told apart, not all one class
    assert np.abs(got - ref).max() < 1e-3


# -- the four formats ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timm_model(tmp_path_factory, archive):
    """A timm network saved as timm saves it for the hub (config.json with pretrained_cfg and
    label_names, model.safetensors); the reference is timm's own eval transform."""
    import timm
    from timm.data import create_transform, resolve_data_config

    folder = tmp_path_factory.mktemp("timm") / "hub"
    torch.manual_seed(0)
    net = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=4).eval()
    transform = create_transform(**resolve_data_config({}, model=net))
    _, imgs = images(archive)
    x = torch.stack([transform(i) for i in imgs])
    decisive(net.get_classifier(), lambda: net(x))
    timm.models.save_for_hf(net, str(folder), model_config={"label_names": ["w", "x", "y", "z"]},
                            safe_serialization=True)
    with torch.inference_mode():
        ref = torch.softmax(net(x), 1).numpy()
    return folder, ref


def test_timm_hub_folder_labels_as_timm(ray_session, archive, timm_model, tmp_path):
    folder, ref = timm_model
    out = imported(str(folder), "--format", "timm", "--out", str(tmp_path / "a"))
    assert "labels      : w, x, y, z (config.json label_names)" in out and "bicubic" in out
    card = read_card(str(tmp_path / "a"))
    assert (card.library, card.architecture, card.preprocess.resize, card.preprocess.crop) == \
        ("timm", "mobilenetv3_small_050", 256, 224)  # floor(224 / crop_pct 0.875)
    assert set(card.source["files"]) == {"config.json", "model.safetensors"}
    assert card.library_versions["timm"]
    names, _ = images(archive)
    assert_same(through_ray(str(tmp_path / "a"), archive, tmp_path / "out"), names, ref)


def test_onnxruntime_runtime_equals_torch_and_caches_its_export(ray_session, archive, timm_model, tmp_path):
    """model.runtime: onnxruntime exports once into $IMGCLF_CACHE (never the model folder)."""
    from imgclf_ray.models.onnx_runtime import export_path

    folder, ref = timm_model
    uri = tmp_path / "a"
    imported(str(folder), "--format", "timm", "--out", str(uri))
    before = sorted(p.name for p in uri.iterdir())
    names, _ = images(archive)
    assert_same(through_ray(str(uri), archive, tmp_path / "out", runtime="onnxruntime"), names, ref)
    assert export_path(read_card(str(uri))).is_file()
    assert sorted(p.name for p in uri.iterdir()) == before


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory, archive):
    """A transformers ConvNeXt multilabel classifier (problem_type) with its image processor
    (shortest edge 64, crop_pct: resize to 73, centre crop 64)."""
    from transformers import (AutoImageProcessor, ConvNextConfig, ConvNextForImageClassification,
                              ConvNextImageProcessor)

    folder = tmp_path_factory.mktemp("hf") / "convnext"
    torch.manual_seed(0)
    labels = ["blue", "round", "sharp"]
    cfg = ConvNextConfig(hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], num_labels=3,
                         id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                         problem_type="multi_label_classification")
    net = ConvNextForImageClassification(cfg).eval()
    ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875).save_pretrained(str(folder))
    processor = AutoImageProcessor.from_pretrained(str(folder))  # the reference, as the library picks it
    _, imgs = images(archive)
    x = processor(imgs, return_tensors="pt")["pixel_values"]
    decisive(net.classifier, lambda: net(x).logits)
    net.save_pretrained(str(folder))
    with torch.inference_mode():
        ref = torch.sigmoid(net(x).logits).numpy()
    return folder, ref, type(processor).__name__


def test_hugging_face_folder_labels_as_transformers(ray_session, archive, hf_model, tmp_path):
    folder, ref, processor = hf_model
    out = imported(str(folder), "--format", "hf", "--out", str(tmp_path / "a"))
    assert "multilabel (config.json problem_type)" in out and f"({processor} (preprocessor_config.json))" in out
    card = read_card(str(tmp_path / "a"))
    assert card.task == "multilabel" and card.labels == ["blue", "round", "sharp"]
    assert (card.preprocess.resize, card.preprocess.crop, card.preprocess.crop_offset) == (73, 64, "floor")
    names, _ = images(archive)
    assert_same(through_ray(str(tmp_path / "a"), archive, tmp_path / "out"), names, ref, multilabel=True)


@pytest.fixture(scope="module")
def torchvision_model(tmp_path_factory, archive):
    """A MobileNetV3 state_dict as torch hub caches one (.pth); categories and transforms from
    torchvision's ImageNet weights metadata."""
    import torchvision

    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=1000).eval()
    _, imgs = images(archive)
    x = torch.stack([weights.transforms()(i) for i in imgs])
    decisive(net.classifier[-1], lambda: net(x))
    path = tmp_path_factory.mktemp("tv") / "mobilenet_v3_small-047dcff4.pth"
    torch.save(net.state_dict(), path)
    with torch.inference_mode():
        ref = torch.softmax(net(x), 1).numpy()
    return path, ref


def test_torchvision_weights_label_as_torchvision(ray_session, archive, torchvision_model, tmp_path):
    path, ref = torchvision_model
    out = imported(str(path), "--format", "torchvision", "--weights", "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
                   "--out", str(tmp_path / "a"))
    assert "tench, goldfish, great white shark" in out and "MobileNet_V3_Small_Weights.IMAGENET1K_V1.transforms()" in out
    card = read_card(str(tmp_path / "a"))
    assert card.architecture == "mobilenet_v3_small" and len(card.labels) == 1000
    names, _ = images(archive)
    assert_same(through_ray(str(tmp_path / "a"), archive, tmp_path / "out"), names, ref)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory, archive):
    """torch.onnx.export (dynamo, external data beside the .onnx); the reference is ONNX Runtime
    on the team's own torchvision preprocessing."""
    import onnxruntime as ort
    import torchvision
    from torchvision import transforms as T

    folder = tmp_path_factory.mktemp("onnx") / "export"
    folder.mkdir()
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).eval()
    prep = {"resize": 72, "crop": 64, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225]}
    tf = T.Compose([T.Resize(72), T.CenterCrop(64), T.ToTensor(), T.Normalize(prep["mean"], prep["std"])])
    _, imgs = images(archive)
    x = torch.stack([tf(i) for i in imgs])
    decisive(net.fc, lambda: net(x))
    torch.onnx.export(net, (x[:1],), str(folder / "model.onnx"), dynamo=True, input_names=["input"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert (folder / "model.onnx.data").is_file()  # the exporter's default: external data
    (folder.parent / "labels.txt").write_text("alpha\nbeta\ngamma\n")
    (folder.parent / "preprocess.json").write_text(json.dumps(prep))
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x.numpy()})[0]
    return folder, torch.softmax(torch.from_numpy(logits), 1).numpy()


def test_onnx_with_external_data_labels_as_onnxruntime(ray_session, archive, onnx_model, tmp_path):
    folder, ref = onnx_model
    out = imported(str(folder), "--format", "onnx", "--labels", str(folder.parent / "labels.txt"),
                   "--preprocess", str(folder.parent / "preprocess.json"), "--out", str(tmp_path / "a"))
    assert "outputs     : logits" in out
    card = read_card(str(tmp_path / "a"))
    assert card.framework == "onnx" and set(card.source["files"]) == {"model.onnx", "model.onnx.data"}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["model.onnx", "model_card.json"]
    names, _ = images(archive)
    assert_same(through_ray(str(tmp_path / "a"), archive, tmp_path / "out"), names, ref)


def test_onnx_labels_and_preprocessing_from_metadata(onnx_model, tmp_path):
    """Labels and preprocessing written into the model's metadata_props need no flags; a
    softmax at the end of the graph is read as probabilities."""
    import onnx

    folder, _ = onnx_model
    model = onnx.load(str(folder / "model.onnx"))
    node = onnx.helper.make_node("Softmax", [model.graph.output[0].name], ["probs"], axis=1)
    model.graph.node.append(node)
    out_info = onnx.helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, None)
    del model.graph.output[:]
    model.graph.output.append(out_info)
    onnx.helper.set_model_props(model, {"labels": json.dumps(["alpha", "beta", "gamma"]),
                                        "preprocess": (folder.parent / "preprocess.json").read_text()})
    onnx.save(model, str(tmp_path / "with-meta.onnx"))
    out = imported(str(tmp_path / "with-meta.onnx"), "--format", "onnx", "--out", str(tmp_path / "a"))
    assert "(ONNX metadata_props)" in out and "outputs     : probabilities" in out
    assert read_card(str(tmp_path / "a")).labels == ["alpha", "beta", "gamma"]


# -- refusals: one error line each, nothing written ---------------------------------------------

def refused(tmp_path, *args: str) -> str:
    result = CliRunner().invoke(main, ["model", "import", *args, "--out", str(tmp_path / "never")])
    assert result.exit_code != 0 and result.output.startswith("error: ")
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output and not (tmp_path / "never").exists()
    return result.output


def test_label_count_must_match_the_output_layer(torchvision_model, tmp_path):
    path, _ = torchvision_model
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    out = refused(tmp_path, str(path), "--format", "torchvision", "--weights",
                  "MobileNet_V3_Small_Weights.IMAGENET1K_V1", "--labels", str(tmp_path / "three.txt"))
    assert "output layer has 1000 outputs, not 3 labels" in out
    # Another architecture's weights name: said to be the architecture, not the labels.
    out = refused(tmp_path, str(path), "--format", "torchvision", "--weights", "ResNet18_Weights.IMAGENET1K_V1")
    assert "the weights are not this architecture's" in out and "torchvision resnet18" in out


def test_a_pth_that_needs_unpickling_is_refused(tmp_path):
    import collections

    marker = tmp_path / "ran"
    torch.save({"state_dict": collections.Counter(a=1), "hook": os.system}, tmp_path / "evil.pth")
    out = refused(tmp_path, str(tmp_path / "evil.pth"), "--format", "torchvision", "--architecture", "resnet18",
                  "--weights", "ResNet18_Weights.IMAGENET1K_V1")
    assert "without unpickling code" in out and not marker.exists()


def test_a_timm_training_checkpoint_loads_its_ema_weights(timm_model, tmp_path):
    """A .pth.tar as timm's train.py writes it: argparse.Namespace args, optimizer state, EMA."""
    import argparse

    from safetensors.torch import load_file

    folder, _ = timm_model
    state = load_file(str(folder / "model.safetensors"))
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"epoch": 3, "arch": "mobilenetv3_small_050", "args": argparse.Namespace(lr=0.1),
                "state_dict": {f"module.{k}": v for k, v in state.items()}, "state_dict_ema": ema,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, tmp_path / "checkpoint-3.pth.tar")
    (tmp_path / "labels.txt").write_text("w\nx\ny\nz\n")
    imported(str(tmp_path / "checkpoint-3.pth.tar"), "--format", "timm", "--architecture", "mobilenetv3_small_050",
             "--labels", str(tmp_path / "labels.txt"), "--out", str(tmp_path / "a"))
    loaded = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert all(torch.equal(loaded[k], ema[k]) for k in ema)


def test_remote_code_configs_are_refused(hf_model, tmp_path):
    import shutil

    folder, _, _ = hf_model
    shutil.copytree(folder, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.EvilModel"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    (tmp_path / "m" / "modeling_evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\n")
    out = refused(tmp_path, str(tmp_path / "m"), "--format", "hf")
    assert "trust_remote_code" in out and not (tmp_path / "ran").exists()


def test_onnx_external_data_outside_its_folder_is_refused(onnx_model, tmp_path):
    import onnx

    folder, _ = onnx_model
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = "../secret.bin"
    (tmp_path / "m").mkdir()
    onnx.save(model, str(tmp_path / "m" / "model.onnx"))
    out = refused(tmp_path, str(tmp_path / "m" / "model.onnx"), "--format", "onnx")
    assert "outside the model's folder" in out


def test_onnxruntime_runs_in_fp32_only():
    from imgclf_ray.errors import SpecError

    with pytest.raises(SpecError, match="runtime onnxruntime runs in fp32"):
        parse_spec({"name": "j", "source": {"uri": "in"}, "sink": {"uri": "out"},
                    "model": {"uri": "m", "runtime": "onnxruntime", "precision": "bf16"}}, "<test>")


# -- int8 ------------------------------------------------------------------------------------------

def test_int8_of_imported_timm_hugging_face_and_onnx_models_labels_as_their_libraries(
        archive, timm_model, hf_model, onnx_model, tmp_path):
    """model.precision: int8 on each imported kind (timm, a multilabel transformers model, an ONNX
    artifact with external data): calibrated on five crops of each photograph, then the photographs
    that fp32 decides clearly labelled as the library labels them (multilabel: the same labels over 0.5)."""
    from imgclf_ray.runner.job import run_job
    from imgclf_ray.spec import load_spec
    from tests.support.jobs import read_run

    crops = tmp_path / "calibration"
    crops.mkdir()
    for f in sorted(archive.glob("*.png")):
        img = Image.open(f).convert("RGB")
        w, h = img.size
        for k, box in enumerate([(0, 0, w, h), (0, 0, w * 3 // 4, h * 3 // 4), (w // 4, h // 4, w, h),
                                 (w // 8, 0, w, h * 7 // 8), (0, h // 8, w * 7 // 8, h)]):
            img.crop(box).save(crops / f"{f.stem}-{k}.png")
    onnx_folder, onnx_ref = onnx_model
    kinds = {"timm": (timm_model[0], timm_model[1], []), "hf": (hf_model[0], hf_model[1], []),
             "onnx": (onnx_folder, onnx_ref, ["--labels", str(onnx_folder.parent / "labels.txt"),
                                               "--preprocess", str(onnx_folder.parent / "preprocess.json")])}
    names, _ = images(archive)
    for kind, (folder, ref, extra) in kinds.items():
        imported(str(folder), "--format", kind, *extra, "--out", str(tmp_path / kind))
        job = tmp_path / f"{kind}.yaml"
        job.write_text(f"name: q\nsource: {{uri: {archive}}}\nsink: {{uri: {tmp_path / kind}-out}}\n"
                       f"model: {{uri: {tmp_path / kind}, precision: int8, calibration: {crops}, "
                       f"int8_min_agreement: 0.8}}\nrun: {{executor: local}}\n")
        result = run_job(load_spec(job), "n", quiet=True)  # (random weights: near-ties; 18 held-back images)
        assert result.int8["calibration"]["images"] == len(list(crops.iterdir())) and result.int8["agreement"] >= 0.8, kind
        rows = {Path(r["uri"]).name: r for r in read_run(f"{tmp_path / kind}-out", "n")}
        assert all(r["model_id"] == result.int8["model_id"] for r in rows.values())
        got = np.stack([rows[n]["class_scores"] for n in names])
        if kind == "hf":  # the labels fp32 decides clearly (over or under 0.5 by 0.1)
            clear = np.abs(ref - 0.5) > 0.1
            assert ((got > 0.5) == (ref > 0.5))[clear].all() and 0 < (ref[clear] > 0.5).sum() < clear.sum()
        else:  # the images fp32 decides clearly (the random-weight networks have near-ties too)
            ranked = np.sort(ref, axis=1)
            decided = ranked[:, -1] - ranked[:, -2] > 0.25
            assert decided.sum() >= 4 and (got.argmax(1) == ref.argmax(1))[decided].all(), kind
        # int8: close, not equal (less close on a CPU without VNNI: uint8 weights there)
        assert np.abs(got - ref).mean() < 0.08, kind


# -- fine-tuning an imported model ----------------------------------------------------------------

@pytest.mark.slow
def test_fine_tune_an_imported_timm_model_then_evaluate(ray_session, digits_archive, timm_model, tmp_path):
    from tests.test_train import REPO, _evaluation, _train

    folder, _ = timm_model
    imported(str(folder), "--format", "timm", "--out", str(tmp_path / "timm"))
    data = tmp_path / "digits"
    digits_subset(digits_archive, data, 8)
    _train("train/digits-cnn.yaml", f"data.uri={data}", "example=null", f"model.output={tmp_path}/ft",
           "model.cnn.architecture=null", f"model.cnn.init_weights={tmp_path}/timm", "model.cnn.epochs=1", "model.cnn.workers=0",
           "model.preprocess={resize: 36, crop: 32, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}")
    card = read_card(f"{tmp_path}/ft")
    assert (card.library, card.architecture, len(card.labels)) == ("timm", "mobilenetv3_small_050", 10)
    result = CliRunner().invoke(main, ["evaluate", str(REPO / "jobs" / "quickstart.yaml"), "-q",
                                       "--set", "example=null", "--set", f"source.uri={data}",
                                       "--set", f"model.uri={tmp_path}/ft", "--set", f"sink.uri={tmp_path}/runs"])
    assert result.exit_code == 0, result.output
    assert _evaluation(tmp_path)["images"] == len(list(data.rglob("*.png")))


def test_a_skops_pipeline_over_our_features(svm_hog_model, tmp_path):
    """A fitted scikit-learn estimator saved with skops, over one of imgclf's extractors: imported,
    it scores as the original; a file holding a type outside the trusted list is refused."""
    import skops.io as sio
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from imgclf_ray.models.loader import load_classifier

    card = read_card(svm_hog_model)
    (tmp_path / "prep.json").write_text(card.preprocess.model_dump_json())
    features = json.dumps(card.features.model_dump())
    imported(str(Path(svm_hog_model) / "model.skops"), "--format", "skops", "--features", features,
             "--preprocess", str(tmp_path / "prep.json"), "--out", str(tmp_path / "a"))
    x = np.random.default_rng(0).random((5, load_classifier(svm_hog_model).estimator.n_features_in_))
    np.testing.assert_allclose(load_classifier(str(tmp_path / "a")).predict_proba(x),
                               load_classifier(svm_hog_model).predict_proba(x))
    sio.dump(make_pipeline(FunctionTransformer(json.loads), load_classifier(svm_hog_model).estimator),
             tmp_path / "custom.skops")
    out = refused(tmp_path, str(tmp_path / "custom.skops"), "--format", "skops", "--features", "hog",
                  "--preprocess", str(tmp_path / "prep.json"))
    assert "not trusted" in out and "json.loads" in out
