"""The review loop's second half on a real sink and a real MLflow registry (sqlite in a temporary
folder; the local executor; digits, HOG + SVM and pixel models, not CNNs, for the suite's budget):
training registers versions, a job runs models:/NAME/VERSION and models:/NAME@champion, the gold set
is drawn once, answered by a scripted reviewer and never trained on, and the gate refuses a worse
model and accepts a better one, recording its evidence on the version."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from imgclf_ray.cli import main
from imgclf_ray.review.promote import METRICS, Gate, judge, paired_bootstrap
from imgclf_ray.training.trainer import train_job
from tests.support.jobs import digits_subset, killed_at



def _cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    print(f"$ imgclf {' '.join(args)}\n{result.output}")  # shown when a test fails
    assert result.exit_code == code, result.output
    return result.output


def _train(tmp_path: Path, name: str, data: Path, labels: str, features: str, estimator: str, tracking: str,
           test: float = 0.2) -> dict:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"name: {name}\ndata: {{uri: {data}, labels: {labels}}}\n"
                    f"model: {{output: {tmp_path / name}, preprocess: {{resize: 32, crop: 32, channels: 1}}, "
                    f"features: {features}, estimator: {estimator}}}\n"
                    f"split: {{test: {test}, seed: 0}}\nregistry: {{tracking_uri: '{tracking}', name: digits}}\n")
    out = _cli("train", str(spec))
    assert "registered: digits version" in out, out
    return {"out": out, "version": out.split("registered: digits version ")[1].split()[0]}


def _answer_gold(batch: Path) -> bytes:
    """The scripted reviewer: batch.csv with every label filled from the image's class folder."""
    rows = list(csv.DictReader(io.StringIO((batch / "batch.csv").read_text())))
    for r in rows:
        r["label"] = r["uri"].rsplit("/", 2)[-2]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def test_the_gate_promotes_on_gold_set_evidence_and_a_night_runs_the_champion(tmp_path, digits_archive):
    import mlflow

    archive, seed_data = tmp_path / "archive", tmp_path / "seed"
    digits_subset(digits_archive, archive, 6)  # 300 images the nights label
    digits_subset(digits_archive, seed_data, 60, start=1)  # 30 labelled images (20 to train): a weak first model
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = "{kind: folder}"
    weak = _train(tmp_path, "weak", seed_data, folder, "{name: pixels}", "{name: logistic_regression}", tracking,
                  test=0.34)
    sink = tmp_path / "out"
    job = tmp_path / "nightly.yaml"
    job.write_text(f"name: nightly\nsource: {{uri: {archive}}}\nmodel: {{uri: 'models:/digits/{weak['version']}', "
                   f"tracking_uri: '{tracking}'}}\nsink: {{uri: {sink}}}\nincremental: {{}}\nrun: {{executor: local}}\n")
    _cli("run", str(job), "--run-id", "n1", "-q")
    manifest = json.loads((sink / "n1" / "_manifest.json").read_text())
    assert manifest["registered_model"]["version"] == weak["version"] and manifest["registered_model"]["name"] == "digits"

    # The gold set: drawn once, stratified, answered, ingested.
    out = _cli("review", "gold", str(sink), "--size", "60", "--document-root", str(tmp_path))
    batch = Path(out.split("csv    : ")[1].split()[0]).parent
    record = json.loads((batch / "_batch.json").read_text())
    assert record["gold"] and record["images"] == 60
    assert "drawn already" in _cli("review", "gold", str(sink), "--size", "10", "--document-root", str(tmp_path),
                                  code=1)
    answers = tmp_path / "gold.csv"
    answers.write_bytes(_answer_gold(batch))
    _cli("review", "ingest", str(answers), "--sink", str(sink))

    # A first champion needs a stated floor; the weak model passes a low one.
    assert "--floor" in _cli("model", "promote", "digits", weak["version"], "--sink", str(sink),
                             "--tracking-uri", tracking, code=1)
    out = _cli("model", "promote", "digits", weak["version"], "--job", str(job), "--floor", "0.05")
    assert "promoted:" in out and "not promoted" not in out
    client = mlflow.MlflowClient(tracking)
    assert str(client.get_model_version_by_alias("digits", "champion").version) == weak["version"]

    # A better model, trained on the archive: the reviewers' labels (the sink's), folder labels
    # for the rest; the gold set's images are left out of its training.
    reviewed = f"{{kind: reviewed, sink: {sink}, folder_fallback: true}}"
    hog = "{name: hog, params: {orientations: 9, pixels_per_cell: 8, cells_per_block: 2}}"
    svm = "{name: svm, params: {C: 10.0, gamma: scale}, calibrate: sigmoid, scale: true}"
    strong = _train(tmp_path, "strong", archive, reviewed, hog, svm, tracking)
    assert "left out: 60 gold-set images" in strong["out"]
    # Killed between its evidence and the alias: the champion is unchanged, and the version's record
    # says the promotion did not finish (it never claims what it did not do); a new try completes it.
    killed_at("promote_alias", "model", "promote", "digits", strong["version"], "--job", str(job))
    assert str(client.get_model_version_by_alias("digits", "champion").version) == weak["version"]
    assert client.get_model_version("digits", strong["version"]).tags["imgclf.promotion.decision"] == "promoting"
    # Killed just after the alias moved: the next try completes the version's record, judging nothing.
    killed_at("promote_moved", "model", "promote", "digits", strong["version"], "--job", str(job))
    assert str(client.get_model_version_by_alias("digits", "champion").version) == strong["version"]
    assert client.get_model_version("digits", strong["version"]).tags["imgclf.promotion.decision"] == "promoting"
    out = _cli("model", "promote", "digits", strong["version"], "--job", str(job))
    assert "an interrupted promotion had moved the alias; its record now says so" in out, out
    assert str(client.get_model_version_by_alias("digits", "champion").version) == strong["version"]
    tags = client.get_model_version("digits", strong["version"]).tags
    assert tags["imgclf.promotion.decision"] == "promoted" and float(tags["imgclf.promotion.ci_low"]) > 0

    # The weak model again, as a new version (a folder of its own: a registered one is refused): refused
    # against the champion; the alias stays.
    assert "holds an artifact already" in _cli("train", str(tmp_path / "weak.yaml"), code=2)
    again = _train(tmp_path, "weak2", seed_data, folder, "{name: pixels}", "{name: logistic_regression}", tracking,
                   test=0.34)
    out = _cli("model", "promote", "digits", again["version"], "--job", str(job), code=1)
    assert "not promoted" in out
    assert str(client.get_model_version_by_alias("digits", "champion").version) == strong["version"]
    assert client.get_model_version("digits", again["version"]).tags["imgclf.promotion.decision"] == "refused"

    # A champion whose folder was trained into since (outside the registry) is refused, not judged.
    from imgclf_ray.spec import TrainSpec, load_spec

    shutil.copytree(tmp_path / "strong", tmp_path / "strong-kept")
    shutil.rmtree(tmp_path / "strong")
    train_job(load_spec(tmp_path / "weak.yaml", [f"model.output={tmp_path / 'strong'}", "registry=null"],
                        model=TrainSpec))
    assert "trained again into that folder" in _cli("model", "promote", "digits", again["version"], "--job", str(job),
                                                    code=1)
    shutil.rmtree(tmp_path / "strong")
    shutil.copytree(tmp_path / "strong-kept", tmp_path / "strong")  # the registered artifact back
    # The next night runs the champion; a new model relabels what the night before labelled.
    job.write_text(job.read_text().replace(f"models:/digits/{weak['version']}", "models:/digits@champion"))
    out = _cli("run", str(job), "--run-id", "n2")
    assert f"digits version {strong['version']}" in out
    manifest = json.loads((sink / "n2" / "_manifest.json").read_text())
    assert manifest["registered_model"]["alias"] == "champion" and manifest["by_status"]["ok"] == 300


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_the_metrics_are_scikit_learns(metric):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    rng = np.random.default_rng(3)
    truth = rng.choice(list("abcd"), 200).astype(object)
    pred = np.where(rng.random(200) < 0.7, truth, rng.choice(list("abcde"), 200)).astype(object)
    reference = {"accuracy": accuracy_score(truth, pred), "balanced_accuracy": balanced_accuracy_score(truth, pred),
                 "macro_f1": f1_score(truth, pred, labels=sorted({*truth, *pred}), average="macro",
                                      zero_division=0)}[metric]
    assert METRICS[metric](truth, pred) == pytest.approx(reference)


def test_the_paired_interval_is_scipys_percentile_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(5)
    truth = rng.integers(0, 5, 150).astype(str).astype(object)
    a = np.where(rng.random(150) < 0.85, truth, "x").astype(object)
    b = np.where(rng.random(150) < 0.75, truth, "x").astype(object)
    ours = np.percentile(paired_bootstrap(truth, a, b, "accuracy", 4000, 0), [2.5, 97.5])
    diff = (a == truth).astype(float) - (b == truth).astype(float)
    theirs = bootstrap((diff,), np.mean, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert ours == pytest.approx([theirs.low, theirs.high], abs=0.02)  # two random streams: 4,000 resamples each


def test_the_gate_at_its_edges():
    """Ten right answers do not make a floor of 0.95 (exact interval, not a collapsed bootstrap); an
    identical candidate is not shown better (margin 0) but is within a margin; a worse one never."""
    truth = np.array(list("ab") * 5, dtype=object)
    ok, facts = judge(truth, truth.copy(), None, Gate(floor=0.95, resamples=500))
    assert not ok and facts["interval"] == "Clopper-Pearson" and facts["ci_low"] == pytest.approx(0.6915, abs=1e-3)
    truth = np.array(list("abcd") * 25, dtype=object)
    same = truth.copy()
    assert not judge(truth, same, truth.copy(), Gate(margin=0.0, resamples=500))[0]
    assert judge(truth, same, truth.copy(), Gate(margin=0.01, resamples=500))[0]
    worse = truth.copy()
    worse[:20] = "x"
    assert not judge(truth, worse, truth.copy(), Gate(margin=0.05, resamples=500))[0]
