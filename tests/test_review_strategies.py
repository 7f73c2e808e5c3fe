"""Review selection strategies on real nights (digits, the svm-hog example model, duplicates made
by copying files): diverse, label_issues and disagreement against references computed from the
rows as written, and the same selection whichever executor labelled the nights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import imgclf_ray
from imgclf_ray.errors import UserError
from imgclf_ray.io.sink import Sink
from imgclf_ray.review.select import Ask, select
from imgclf_ray.runner.job import run_job
from imgclf_ray.spec import TrainSpec, load_spec, parse_spec
from imgclf_ray.training.trainer import train_job
from tests.support.jobs import digits_subset

CURATE = "curate: {checks: [duplicate, near_duplicate, label_issue]}\n"


def _night(tmp_path: Path, archive: Path, model: str, sink: str, executor: str, run_id: str) -> Sink:
    job = tmp_path / f"{sink}.yaml"
    job.write_text(f"name: nightly\nsource: {{uri: {archive}, labels: {{kind: folder}}}}\nmodel: {{uri: {model}}}\n"
                   f"sink: {{uri: {tmp_path / sink}}}\nincremental: {{}}\n{CURATE}run: {{executor: {executor}}}\n")
    run_job(load_spec(job), run_id, quiet=True)
    return Sink(str(tmp_path / sink))


@pytest.fixture
def archive(tmp_path, digits_archive) -> Path:
    """120 digits, and 4 of them copied under new names: exact duplicate groups."""
    folder = tmp_path / "archive"
    digits_subset(digits_archive, folder, 15)
    for src in sorted(folder.rglob("*.png"))[:40:10]:
        shutil.copy(src, src.with_name("copy-" + src.name))
    return folder


def _margin(rows: list[dict]) -> dict[str, float]:
    return {r["image_id"]: 1 - float(np.diff(sorted(r["class_scores"])[-2:])[0]) for r in rows}


@pytest.mark.ray
def test_the_selection_is_the_same_whichever_executor_labelled_the_nights(ray_session, archive, svm_hog_model, tmp_path):
    local = _night(tmp_path, archive, svm_hog_model, "local", "local", "n1")
    ray = _night(tmp_path, archive, svm_hog_model, "ray", "ray", "n1")
    for strategy in ("uncertainty", "diverse", "label_issues", "random"):
        a, _ = select(local, 15, Ask(strategy, seed=2))
        b, _ = select(ray, 15, Ask(strategy, seed=2))
        assert a.column("image_id").to_pylist() == b.column("image_id").to_pylist(), strategy


def test_diverse_takes_one_per_duplicate_group_from_the_most_uncertain_and_spreads_them(archive, svm_hog_model,
                                                                                       tmp_path):
    probe = _night(tmp_path, archive, svm_hog_model, "probe", "local", "n1")
    margin = _margin(imgclf_ray.read_run(probe.uri, "n1").to_pylist())
    for uri in [r["uri"] for r in imgclf_ray.read_run(probe.uri, "n1").to_pylist()
                if r["image_id"] in sorted(margin, key=lambda i: -margin[i])[:3]]:
        src = Path(uri.removeprefix("file://"))
        shutil.copy(src, src.with_name("again-" + src.name))  # the most uncertain images, twice
    sink = _night(tmp_path, archive, svm_hog_model, "out", "local", "n1")
    rows = imgclf_ray.read_run(sink.uri, "n1").to_pylist()
    margin = _margin(rows)
    budget, pool = 8, 3
    top = set(sorted(margin, key=lambda i: (-margin[i], i))[:budget * pool])
    batch, _ = select(sink, budget, Ask("diverse", pool=pool))
    chosen = batch.column("image_id").to_pylist()
    assert len(chosen) == budget and set(chosen) <= top
    by_hash: dict[str, list[str]] = {}
    for r in rows:
        by_hash.setdefault(r["pixel_hash"], []).append(r["image_id"])
    assert any(len(set(ids) & top) > 1 for ids in by_hash.values())  # a group the pool holds whole...
    assert all(len(set(ids) & set(chosen)) <= 1 for ids in by_hash.values())  # ...gives one image

    def spread(ids: list[str]) -> float:  # the least distance between two chosen images' class scores
        x = np.array([next(r["class_scores"] for r in rows if r["image_id"] == i) for i in ids])
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        d = np.linalg.norm(x[:, None] - x[None], axis=2)
        return float(d[np.triu_indices(len(ids), 1)].min())

    plain, _ = select(sink, budget, Ask("uncertainty"))
    assert spread(chosen) >= spread(plain.column("image_id").to_pylist())


def test_label_issues_puts_the_labels_least_likely_right_first(archive, svm_hog_model, tmp_path):
    sink = _night(tmp_path, archive, svm_hog_model, "out", "local", "n1")
    rows = imgclf_ray.read_run(sink.uri, "n1").to_pylist()
    quality = {r["image_id"]: r["label_quality"] for r in rows if r["label_quality"] is not None}
    expected = sorted(quality, key=lambda i: (quality[i], i))[:10]  # flagged label issues included
    batch, _ = select(sink, 10, Ask("label_issues"))
    assert batch.column("image_id").to_pylist() == expected


def test_disagreement_puts_what_two_nights_or_two_models_labelled_differently_first(archive, svm_hog_model, tmp_path):
    sink = _night(tmp_path, archive, svm_hog_model, "out", "local", "n1")
    with pytest.raises(UserError, match="no image was labelled by two nights"):
        select(sink, 5, Ask("disagreement"))
    shutil.copytree(tmp_path / "out", tmp_path / "hog-only")
    sink_n1 = Sink(str(tmp_path / "hog-only"))
    other = tmp_path / "pixels"
    train_job(parse_spec({"name": "pixels", "data": {"uri": str(archive), "labels": {"kind": "folder"}},
                          "model": {"output": str(other), "preprocess": {"resize": 8, "crop": 8, "channels": 1},
                                    "features": {"name": "pixels"}, "estimator": {"name": "logistic_regression"}},
                          "split": {"test": 0.5, "seed": 0}}, "<test>", model=TrainSpec))
    _night(tmp_path, archive, str(other), "out", "local", "n2")  # a new model: the night labels every image again
    first = {r["image_id"]: r["label"] for r in imgclf_ray.read_run(sink.uri, "n1").to_pylist()}
    second = imgclf_ray.read_run(sink.uri, "n2").to_pylist()
    differ = {r["image_id"] for r in second if r["label"] != first[r["image_id"]]}
    assert 0 < len(differ) < len(second)
    margin = _margin(second)
    expected = sorted(differ, key=lambda i: (-margin[i], i))
    batch, _ = select(sink, len(differ) + 3, Ask("disagreement"))
    chosen = batch.column("image_id").to_pylist()
    assert chosen[:len(differ)] == expected and not set(chosen[len(differ):]) & differ
    # Two models, one night each in two sinks: the same comparison through --against.
    single = _night(tmp_path, archive, str(other), "single", "local", "n1")
    batch, _ = select(single, len(differ) + 3, Ask("disagreement", against=sink_n1.uri))
    chosen = batch.column("image_id").to_pylist()
    assert chosen[:len(differ)] == expected and not set(chosen[len(differ):]) & differ
    with pytest.raises(UserError, match="--against: compares .* not uncertainty"):
        select(single, 3, Ask("uncertainty", against=sink_n1.uri))
