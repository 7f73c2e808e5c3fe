"""imgclf train -> evaluate -> run round trips, on data that dependencies ship."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from imgclf_ray.cli import main
from imgclf_ray.errors import ArtifactError
from imgclf_ray.models.artifact import read_card
from imgclf_ray.models.hierarchy import describe_artifact
from imgclf_ray.spec import load_spec, TrainSpec
from imgclf_ray.training.trainer import train_job
from tests.conftest import REPO
from tests.support.jobs import digits_subset

pytestmark = pytest.mark.ray


def _evaluation(tmp_path):
    """The evaluation an `imgclf evaluate` wrote into its run folder (never the model folder)."""
    (found,) = (tmp_path / "runs").glob("*/_evaluation.json")
    return json.loads(found.read_text())


def _train(job: str, *overrides: str) -> dict:
    return train_job(load_spec(REPO / "jobs" / job, list(overrides), TrainSpec))


def test_svm_on_pixels_with_grid_search_then_run_and_evaluate(ray_session, digits_archive, tmp_path):
    out = tmp_path / "model"
    metrics = _train("train/digits-svm-pixels.yaml", f"data.uri={digits_archive}", f"model.output={out}", "example=null")
    assert metrics["accuracy"] >= 0.97  # README reference: SVM on pixels, digits
    card = read_card(str(out))
    assert card.metrics["search"]["best_params"] and card.training["test_images"] == 360
    assert card.training["data_digest"].startswith("sha256:")
    result = CliRunner().invoke(main, ["evaluate", str(REPO / "jobs" / "quickstart.yaml"), "-q",
                                       "--set", "example=null", "--set", f"source.uri={digits_archive}",
                                       "--set", f"model.uri={out}", "--set", f"sink.uri={tmp_path}/runs"])
    assert result.exit_code == 0, result.output
    assert _evaluation(tmp_path)["accuracy"] >= 0.97


def test_textures_lbp_and_faces_binary_reference_results(ray_session, faces_archive, tmp_path):
    textures = _train("train/textures-lbp.yaml", f"data.uri={tmp_path}/textures", f"model.output={tmp_path}/tex",
                      "example.anywhere=true")  # (the example's textures written where --set says)
    assert textures["accuracy"] >= 0.95  # README reference: LBP on texture patches
    faces = _train("train/faces-hog.yaml", f"data.uri={faces_archive}", f"model.output={tmp_path}/faces", "example=null")
    assert faces["roc_auc"] >= 0.95 and faces["positive_label"] == "face"  # README reference
    assert read_card(f"{tmp_path}/faces").labels == ["non-face", "face"]


def test_multilabel_from_a_table_with_tuned_thresholds(ray_session, digits_archive, tmp_path):
    from imgclf_ray.training.bundled import DIGIT_ATTRIBUTES

    lines = ["uri,attributes"]
    for src in sorted(Path(digits_archive).rglob("*.png")):
        digit = int(src.parent.name)
        lines.append(f"{src.relative_to(digits_archive)},{'|'.join(a for a, ds in DIGIT_ATTRIBUTES.items() if digit in ds)}")
    (tmp_path / "attributes.csv").write_text("\n".join(lines) + "\n")
    metrics = _train("train/digits-svm-pixels.yaml", f"data.uri={digits_archive}", "example=null", "task=multilabel",
                     "data.labels={kind: table, table: %s, label_column: attributes}" % (tmp_path / "attributes.csv"),
                     f"model.output={tmp_path}/ml", "model.estimator={name: mlp, params: {hidden_layer_sizes: [64]}}",
                     "split.validation=0.2")
    assert metrics["micro_f1"] >= 0.9 and metrics["subset_accuracy"] >= 0.8
    card = read_card(f"{tmp_path}/ml")
    assert card.task == "multilabel" and set(card.thresholds) == set(DIGIT_ATTRIBUTES)


def test_hierarchical_from_nested_folders(ray_session, digits_archive, tmp_path):
    from imgclf_ray.training.bundled import DIGIT_GROUPS

    nested = tmp_path / "nested"
    for group, digits in DIGIT_GROUPS.items():
        for d in digits:
            shutil.copytree(Path(digits_archive) / d, nested / group / d)
    metrics = _train("train/digits-svm-pixels.yaml", f"data.uri={nested}", "example=null", "task=hierarchical",
                     f"model.output={tmp_path}/tree", "model.estimator={name: svm, params: {C: 10}}")
    assert set(metrics["nodes"]) == {"root", "node/small", "node/large"}
    assert all(m["accuracy"] >= 0.95 for m in metrics["nodes"].values())
    info = describe_artifact(f"{tmp_path}/tree")
    assert info.task == "hierarchical" and info.features.name == "pixels"
    result = CliRunner().invoke(main, ["evaluate", str(REPO / "jobs" / "quickstart.yaml"), "-q",
                                       "--set", "example=null", "--set", f"source.uri={nested}",
                                       "--set", f"model.uri={tmp_path}/tree", "--set", f"sink.uri={tmp_path}/runs"])
    assert result.exit_code == 0, result.output
    assert _evaluation(tmp_path)["path_accuracy"] >= 0.95


def test_tampered_trained_artifact_is_refused(ray_session, digits_archive, tmp_path):
    out = tmp_path / "model"
    _train("train/digits-svm-pixels.yaml", f"data.uri={digits_archive}", f"model.output={out}", "example=null",
           "model.estimator={name: knn}")
    blob = bytearray((out / "model.skops").read_bytes())
    blob[len(blob) // 2] ^= 1
    (out / "model.skops").write_bytes(bytes(blob))
    from imgclf_ray.models.loader import load_classifier

    with pytest.raises(ArtifactError, match="does not match the model card"):
        load_classifier(str(out))
    assert hashlib.sha256(bytes(blob)).hexdigest() != read_card(str(out)).weights.sha256


def test_train_spec_errors_name_the_key(tmp_path):
    result = CliRunner().invoke(main, ["train", str(REPO / "jobs" / "train/faces-hog.yaml"),
                                       "--set", "model.estimator.name=xgboost"])
    assert result.exit_code == 2 and "(--set model.estimator.name): model.estimator.name" in result.output
    result = CliRunner().invoke(main, ["train", str(REPO / "jobs" / "train/faces-hog.yaml"), "--set", "data.labels=null"])
    assert result.exit_code == 2 and "data.labels must say where the labels are" in result.output
    result = CliRunner().invoke(main, ["train", str(REPO / "jobs" / "train/faces-hog.yaml"), "--set", "data.video={fps: 1}"])
    assert result.exit_code == 2 and "data.video: training reads one image per file" in result.output


def test_messages_about_the_labels_count_them_and_never_show_them(tmp_path):
    """A labels table's wrong column (patient names) printed its values in `imgclf train`'s error
    line; a table's labels are data: the messages count them. Folder names are the user's own (in
    every path shown): named, so that a stray folder is seen."""
    from imgclf_ray.errors import SourceError, SpecError
    from imgclf_ray.training.trainer import _fit_one, _targets

    folders = load_spec(REPO / "jobs" / "train/faces-hog.yaml", [], TrainSpec)
    with pytest.raises(SpecError, match=r"^task: binary needs two labels, the data has 3: a, b, tmp$"):
        _targets(folders.model_copy(update={"task": "binary"}), np.array(["a", "b", "tmp"]))
    spec = load_spec(REPO / "jobs" / "train/faces-hog.yaml", ["data.labels={kind: table, table: /l.csv}"], TrainSpec)
    names = np.array([f"DOE^JANE {i % 3}" for i in range(9)])
    with pytest.raises(SpecError, match=r"^task: binary needs two labels, the data has 3$"):
        _targets(spec.model_copy(update={"task": "binary"}), names)
    with pytest.raises(SpecError, match=r"^positive: 'yes' is not one of the data's two labels$"):
        _targets(spec.model_copy(update={"task": "binary", "positive": "yes"}), names[names != "DOE^JANE 2"])
    with pytest.raises(SourceError, match=r"training needs at least two labels, the data has 1$") as refused:
        _fit_one(spec.model_copy(update={"task": "multiclass"}), np.zeros((3, 4)), np.array(["DOE^JANE"] * 3),
                 str(tmp_path / "m"), 0)
    assert "DOE" not in str(refused.value)


def test_cnn_multilabel_fine_tuned_from_an_artifact(ray_session, digits_archive, tiny_model, tmp_path):
    """BCE training of a multilabel head on top of another artifact's weights; thresholds tuned."""
    from imgclf_ray.training.bundled import DIGIT_ATTRIBUTES

    archive = tmp_path / "arch"
    lines = ["uri,attributes"]
    for src in sorted(Path(digits_archive).rglob("*.png"))[::4]:
        (archive / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, archive / src.parent.name / src.name)
        digit = int(src.parent.name)
        lines.append(f"{src.parent.name}/{src.name},{'|'.join(a for a, ds in DIGIT_ATTRIBUTES.items() if digit in ds)}")
    (tmp_path / "attributes.csv").write_text("\n".join(lines) + "\n")
    metrics = _train("train/digits-cnn.yaml", f"data.uri={archive}", "example=null", "task=multilabel",
                     "data.labels={kind: table, table: %s, label_column: attributes}" % (tmp_path / "attributes.csv"),
                     f"model.output={tmp_path}/ml", f"model.cnn.init_weights={tiny_model}", "model.cnn.epochs=2", "model.cnn.workers=0",  # in this process: the quickstart trains on Ray Train
                     "model.preprocess={resize: 36, crop: 32, channels: 3, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}")
    card = read_card(f"{tmp_path}/ml")
    assert card.task == "multilabel" and card.labels == sorted(DIGIT_ATTRIBUTES)
    assert set(card.thresholds) == set(DIGIT_ATTRIBUTES)  # tuned on the validation split
    assert card.training["cnn"]["init_weights"] == tiny_model
    assert 0.0 <= metrics["hamming_loss"] <= 1.0 and metrics["images"] == card.training["test_images"]


def test_cnn_trained_with_per_image_standardisation(ray_session, digits_archive, tmp_path):
    """normalize: per_image in training: no mean/std measured or recorded, and the artifact runs."""
    archive = tmp_path / "arch"
    digits_subset(digits_archive, archive, 6)
    metrics = _train("train/digits-cnn.yaml", f"data.uri={archive}", "example=null", f"model.output={tmp_path}/m",
                     "model.cnn.epochs=2", "model.preprocess.normalize=per_image",
                     "model.cnn.workers=0")  # the loop in this process (the quickstart trains on Ray Train)
    card = read_card(f"{tmp_path}/m")
    assert card.preprocess.normalize == "per_image" and card.preprocess.mean is None
    assert metrics["images"] == card.training["test_images"] and metrics["accuracy"] > 0.2  # 10 classes


def test_a_split_given_by_the_labels_table_is_used(ray_session, digits_archive, tmp_path):
    files = sorted(Path(digits_archive).rglob("*.png"))[::3]
    lines = ["uri,label,part"] + [f"{f.relative_to(digits_archive)},{f.parent.name},{'test' if i % 5 == 0 else 'train'}"
                                  for i, f in enumerate(files)]
    (tmp_path / "labels.parquet.csv").write_text("\n".join(lines) + "\n")
    metrics = _train("train/digits-svm-pixels.yaml", f"data.uri={digits_archive}", "example=null",
                     "data.labels={kind: table, table: %s, split_column: part}" % (tmp_path / "labels.parquet.csv"),
                     f"model.output={tmp_path}/m", "model.estimator={name: knn}")
    card = read_card(f"{tmp_path}/m")
    assert card.training["test_images"] == len(range(0, len(files), 5)) == metrics["images"]
    assert card.training["train_images"] == len(files) - metrics["images"]
    assert card.training["unlabelled_images"] == 1797 - len(files)


def test_multilabel_one_vs_rest_with_a_grid_search():
    """Estimators without native multilabel support are fitted one-vs-rest; the search reaches them."""
    import numpy as np
    from sklearn.datasets import load_digits

    from imgclf_ray.training.bundled import DIGIT_ATTRIBUTES
    from imgclf_ray.spec import EstimatorSpec
    from imgclf_ray.training.trainer import make_estimator

    d = load_digits()
    x = d.data[:600] / 16.0
    y = np.array([[int(t in DIGIT_ATTRIBUTES[a]) for a in DIGIT_ATTRIBUTES] for t in d.target[:600]])
    spec = EstimatorSpec(name="logistic_regression", search={"grid": {"C": [0.1, 1.0]}, "cv": 2})
    est = make_estimator(spec, multilabel=True).fit(x, y)
    assert set(est.best_params_) == {"onevsrestclassifier__estimator__C"}
    assert est.predict_proba(x[:5]).shape == (5, 4)
    svm = make_estimator(EstimatorSpec(name="svm", search={"grid": {"C": [1.0]}, "cv": 2}), multilabel=True,
                         features="pixels")
    assert "estimator__C" in svm.param_grid  # no scaler on bounded features, no calibration unless asked
    calibrated = make_estimator(EstimatorSpec(name="svm", calibrate="sigmoid", search={"grid": {"C": [1.0]}, "cv": 2}),
                                multilabel=True)
    assert "onevsrestclassifier__estimator__estimator__C" in calibrated.param_grid


def test_conditioning_ops_are_recorded_and_applied_at_inference(ray_session, faces_archive, tmp_path):
    """Train with CLAHE + median denoising; the card carries the ops and `imgclf evaluate` (a real
    run) applies them again: its accuracy matches the held-out one's level."""
    out = tmp_path / "faces"
    metrics = _train("train/faces-hog.yaml", f"data.uri={faces_archive}", f"model.output={out}", "example=null",
                     "model.preprocess={resize: 32, crop: 32, channels: 1, ops: [{name: clahe}, "
                     "{name: median, params: {size: 3}}]}")
    card = read_card(str(out))
    assert [op.name for op in card.preprocess.ops] == ["clahe", "median"]
    result = CliRunner().invoke(main, ["evaluate", str(REPO / "jobs" / "faces-binary.yaml"), "-q",
                                       "--set", "example=null", "--set", f"source.uri={faces_archive}",
                                       "--set", f"model.uri={out}", "--set", f"sink.uri={tmp_path}/runs"])
    assert result.exit_code == 0, result.output
    assert metrics["roc_auc"] >= 0.9 and _evaluation(tmp_path)["roc_auc"] >= 0.9


def test_every_example_model_is_a_training_spec_in_jobs_train(tmp_path):
    """example.model names a spec in jobs/train/ that the one trainer runs; its data and output
    follow the job, and a label table inside the spec's data folder moves with the data."""
    from typing import get_args

    from imgclf_ray.config.job import ExampleSpec
    from imgclf_ray.training.example_models import EXAMPLE_MODELS, example_training_spec

    names = get_args(ExampleSpec.model_fields["model"].annotation)
    assert set(names) == set(EXAMPLE_MODELS)
    for name in names:
        spec = example_training_spec(name, f"{tmp_path}/data", f"{tmp_path}/model")
        assert spec.data.uri == f"{tmp_path}/data" and spec.model.output == f"{tmp_path}/model"
        if spec.data.labels.kind == "table":
            assert spec.data.labels.table.startswith(f"{tmp_path}/data/_labels/")
        if spec.model.cnn is not None:
            assert spec.model.cnn.architecture == (name if name != "resnet18" else "resnet18")
            assert spec.model.cnn.workers == 0  # the small-data path: no Ray Train worker group


def test_features_made_here_equal_those_made_by_ray_data(ray_session, faces_archive, monkeypatch):
    """The small-data path (this process) and Ray Data tasks run the same stage: same features."""
    from imgclf_ray.io.labels import attach_true_labels
    from imgclf_ray.io.listing import list_archive
    from imgclf_ray.training import trainer

    spec = load_spec(REPO / "jobs" / "train" / "faces-hog.yaml", [f"data.uri={faces_archive}", "example=null"],
                     TrainSpec)
    manifest = attach_true_labels(list_archive(spec.data, spec.storage), spec.data, spec.storage)
    here = trainer.extract_features(spec, manifest)
    monkeypatch.setattr(trainer, "IN_PROCESS_IMAGES", 0)
    by_ray = trainer.extract_features(spec, manifest)
    assert here[0].shape == by_ray[0].shape == (200, here[0].shape[1])
    assert (here[0] == by_ray[0]).all() and (here[1] == by_ray[1]).all() and here[3] == by_ray[3] == 0


@pytest.mark.ray
def test_two_ray_train_workers_with_uneven_rows_and_early_stopping_finish(ray_session):
    """33 rows on 2 workers (Ray Train, gloo on CPUs): once one worker took a step more than the
    other and DDP's all-reduces stopped pairing up, a hang; and each worker decided early stopping
    on its own batch-norm statistics. Now the same steps on each, the first worker's decision."""
    from imgclf_ray.spec import CnnSpec
    from imgclf_ray.training.cnn import fit_cnn

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (42, 3, 16, 16), dtype=np.uint8)
    y = rng.integers(0, 3, 42)
    cnn = CnnSpec(architecture="resnet18", workers=2, use_gpu=False, epochs=4, patience=1, batch_size=4)
    state, history = fit_cnn(cnn, x[:33], y[:33], x[33:], y[33:], 3, False, None, None, seed=0)
    assert state and 1 <= len(history) <= 4 and all("val_loss" in h for h in history)


def test_imgclf_train_starts_ray_for_ray_train_workers_and_trains_a_last_batch_of_one(digits_archive, tmp_path):
    """`imgclf train jobs/train/digits-cnn.yaml` (cnn.workers: 1) in a shell where nothing started
    Ray: a small archive's features are made without Ray, and Ray Train then met no Ray ("Ray has
    not been started yet"). Here its 129 training rows in batches of 64 leave one row: batch norm
    refused a batch of one ("Expected more than 1 value per channel"); it joins the batch before."""
    import os
    import subprocess

    from tests.support.jobs import IMGCLF

    archive = tmp_path / "arch"
    digits_subset(digits_archive, archive, 10)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([IMGCLF, "train", str(REPO / "jobs" / "train" / "digits-cnn.yaml"), "--set", f"data.uri={archive}",
                           "--set", "example=null", "--set", f"model.output={tmp_path}/cnn", "--set", "model.cnn.epochs=1",
                           "--set", "run.ray_address=null"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    card = read_card(f"{tmp_path}/cnn")
    assert "held-out multiclass evaluation" in done.stdout and len(card.training["history"]) == 1
    assert card.training["train_images"] % 64 == 1  # (the case above)


def test_a_cnn_is_fine_tuned_from_the_registered_champion(ray_session, digits_archive, tiny_model, tmp_path):
    """cnn.init_weights: models:/NAME@champion, resolved with registry.tracking_uri (a temporary
    sqlite registry), the champion's artifact the starting point; the result a new version."""
    import mlflow

    from imgclf_ray.models import mlflow_registry as registry

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    champion = tmp_path / "champion"
    shutil.copytree(tiny_model, champion)
    first = registry.register(tracking, "digits-cnn", str(champion), read_card(str(champion)).model_id(), {}, {}, {})
    mlflow.MlflowClient(tracking).set_registered_model_alias("digits-cnn", "champion", first.version)
    archive = tmp_path / "arch"
    digits_subset(digits_archive, archive, 8)
    _train("train/digits-cnn.yaml", f"data.uri={archive}", "example=null", f"model.output={tmp_path}/ft",
           "model.cnn.init_weights=models:/digits-cnn@champion", "model.cnn.epochs=1", "model.cnn.workers=0",
           f"registry={{tracking_uri: '{tracking}', name: digits-cnn}}")
    card = read_card(f"{tmp_path}/ft")
    assert card.training["cnn"]["init_weights"] == str(champion) and card.architecture == "resnet18"
    versions = mlflow.MlflowClient(tracking).search_model_versions("name='digits-cnn'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
