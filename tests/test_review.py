"""The review loop's first half on a real sink (the local executor, digits): a batch selected by
uncertainty or at random, the answers of a scripted reviewer in Label Studio's export formats
ingested (once, whatever the format), every refusal, stale reviews, and the current labels."""

from __future__ import annotations

import json
from collections import Counter
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import imgclf_ray
from imgclf_ray.cli import main
from imgclf_ray.errors import UserError
from imgclf_ray.io.sink import Sink
from imgclf_ray.review.ingest import ingest
from imgclf_ray.io.reviews import batch_records, reviews
from imgclf_ray.review.select import Ask, commit_batch
from imgclf_ray.runner.job import run_job
from imgclf_ray.spec import load_spec
from tests.support.jobs import digits_subset, killed_at


@pytest.fixture
def night(tmp_path, digits_archive, tiny_model):
    """A sink with one committed night over 60 digits, and how to run the next one."""
    archive = tmp_path / "archive"
    digits_subset(digits_archive, archive, 30)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: nightly\nsource: {{uri: {archive}}}\nmodel: {{uri: {tiny_model}}}\n"
                   f"sink: {{uri: {tmp_path / 'out'}}}\nincremental: {{}}\nrun: {{executor: local}}\n")
    run = lambda run_id: run_job(load_spec(job), run_id, quiet=True)  # noqa: E731
    assert run("n1").rows == 60
    return Sink(str(tmp_path / "out")), archive, run


def _answer(task: dict) -> str:
    """The scripted reviewer: the image's class folder, as the model names it."""
    return "class" + task["data"]["uri"].rsplit("/", 2)[-2]


def _export(tasks: list[dict], cancel: int = -1) -> bytes:
    """Label Studio's JSON export of the batch, every task answered (one cancelled)."""
    out = []
    for i, task in enumerate(tasks):
        out.append({"id": i, "data": task["data"], "predictions": task["predictions"], "annotations": [{
            "id": 1000 + i, "completed_by": {"id": 7, "email": "reviewer@example.org"}, "was_cancelled": i == cancel,
            "created_at": "2026-12-06T10:00:00.000000Z", "updated_at": f"2026-12-06T10:{i:02d}:00.000000Z",
            "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                        "value": {"choices": [_answer(task)]}}]}]})
    return json.dumps(out).encode()


def _export_min(tasks: list[dict]) -> bytes:
    """The same answers as JSON-MIN: the data fields, the control's answer, the annotation's facts."""
    return json.dumps([{**t["data"], "label": _answer(t), "annotator": "reviewer@example.org",
                        "annotation_id": 1000 + i, "created_at": "2026-12-06T10:00:00.000000Z",
                        "updated_at": f"2026-12-06T10:{i:02d}:00.000000Z"} for i, t in enumerate(tasks)]).encode()


def _tasks(record: dict) -> list[dict]:
    return json.loads(Path(record["uri"], "tasks.json").read_text())


def test_uncertainty_takes_the_smallest_margins_and_a_batch_is_never_selected_twice(night, tmp_path):
    sink, archive, _ = night
    rows = imgclf_ray.read_run(sink.uri, "n1").to_pylist()
    # The reference, from the rows as written: 1 - (p1 - p2), greatest first, ties by image id.
    margin = {r["image_id"]: 1 - float(np.diff(sorted(r["class_scores"])[-2:])[0]) for r in rows}
    expected = sorted(margin, key=lambda i: (-margin[i], i))[:12]
    first = commit_batch(sink, 12, Ask("uncertainty", "margin"), document_root=str(tmp_path))
    assert first["image_ids"] == expected and first["images"] == 12 and first["task"] == "multiclass"
    tasks = _tasks(first)
    assert [t["data"]["image_id"] for t in tasks] == expected
    assert all(t["predictions"][0]["result"][0]["value"]["choices"] == [t["data"]["model_label"]] for t in tasks)
    config = Path(first["uri"], "labeling-config.xml").read_text()
    assert 'choice="single"' in config and config.count("<Choice ") == 10
    assert len(Path(first["uri"], "batch.csv").read_text().splitlines()) == 13
    second = commit_batch(sink, 100, Ask("random", seed=3), document_root=str(tmp_path))
    assert second["images"] == 60 - 12 and not set(second["image_ids"]) & set(first["image_ids"])
    with pytest.raises(UserError, match="no image left to review"):
        commit_batch(sink, 5, document_root=str(tmp_path))
    # Nothing of a refused batch is left behind (local images need Label Studio's document root).
    out = CliRunner().invoke(main, ["review", "select", sink.uri, "--budget", "3", "--strategy", "random"])
    assert out.exit_code == 1 and out.output.startswith("error: ") and "Traceback" not in out.output
    assert len(list(Path(sink.root, "_reviews", "batches").iterdir())) == 2


def test_answers_come_back_once_whatever_the_format_and_become_the_current_labels(night, tmp_path):
    sink, archive, run = night
    record = commit_batch(sink, 10, document_root=str(tmp_path))
    tasks = _tasks(record)
    done = ingest(sink, _export(tasks, cancel=4), name="export.json")
    assert (done.added, done.cancelled, done.already, done.unknown) == (9, 1, 0, [])
    again = ingest(sink, _export(tasks, cancel=4))
    assert (again.added, again.already) == (0, 9)
    assert ingest(sink, _export_min(tasks)).added == 1  # the cancelled one's answer: the rest were there
    table = reviews(sink)
    assert table.num_rows == 10 and set(table.column("annotator").to_pylist()) == {"reviewer@example.org"}
    assert set(table.column("batch_id").to_pylist()) == {record["batch_id"]}
    labels = {r["image_id"]: r for r in imgclf_ray.read_labels(sink.uri).to_pylist()}
    assert len(labels) == 60
    human = {t["data"]["image_id"]: _answer(t) for t in tasks}
    for image_id, row in labels.items():
        if image_id in human:
            assert (row["label"], row["label_source"]) == (human[image_id], "human")
        else:
            assert (row["label"], row["label_source"]) == (row["model_label"], "model")
    # Reviewed images are not offered again.
    assert not set(commit_batch(sink, 100, document_root=str(tmp_path))["image_ids"]) & set(human)
    counted = CliRunner().invoke(main, ["labels", sink.uri])
    assert "60 images; 10 labelled by a reviewer, 50 by the model" in counted.output
    shown = CliRunner().invoke(main, ["labels", sink.uri, "--where", "label_source == 'human'", "--sort", "image_id",
                                      "--to", "csv"])
    assert [r.split(",")[0] for r in shown.output.splitlines()[1:]] == sorted(human)
    # The current labels beside the night's: only the reviewers' changes differ.
    compared = CliRunner().invoke(main, ["compare", "n1", "@labels", "--sink", sink.uri, "--json"])
    night_counts = Counter(r["label"] for r in imgclf_ray.read_run(sink.uri, "n1").to_pylist())
    now = Counter(row["label"] for row in labels.values())
    got = {r["label"]: (r["count_a"], r["count_b"]) for r in json.loads(compared.output)["labels"]}
    assert got == {lab: (night_counts[lab], now[lab]) for lab in set(night_counts) | set(now)}


def test_refusals_unknown_images_csv_and_stale_reviews(night, tmp_path):
    sink, archive, run = night
    tasks = _tasks(commit_batch(sink, 4, document_root=str(tmp_path)))
    wrong = json.loads(_export(tasks))
    wrong[2]["annotations"][0]["result"][0]["value"]["choices"] = ["class42"]
    with pytest.raises(UserError, match=rf"^bad.json: image {tasks[2]['data']['image_id']}: a label that is none of "
                                        r"the model's labels \(class0, class1, .*nothing was ingested") as refused:
        ingest(sink, json.dumps(wrong).encode(), name="bad.json")
    assert "class42" not in str(refused.value)  # (what a reviewer typed is not shown: free text can hold a name)
    assert reviews(sink).num_rows == 0
    ids = [t["data"]["image_id"] for t in tasks]
    csv = "image_id,label\n" + "\n".join(f"{i},class1" for i in ids[:2]) + "\nnot-an-image,class1\n"
    done = ingest(sink, csv.encode(), name="answers.csv")
    assert done.added == 2 and done.unknown == ["not-an-image"]
    # An image whose file changed after its task was made: the answer is kept, stale, not applied.
    target = next(t for t in tasks[2:])
    path = Path(target["data"]["uri"].removeprefix("file://"))
    path.write_bytes(path.read_bytes())
    later = path.stat().st_mtime_ns + 2_000_000_000  # a new mtime whatever the clock's grain: a new etag
    os.utime(path, ns=(later, later))
    run("n2")
    done = ingest(sink, _export([target]))
    assert done.added == 1 and done.stale == 1
    row = next(r for r in imgclf_ray.read_labels(sink.uri).to_pylist() if r["image_id"] == target["data"]["image_id"])
    assert row["label_source"] == "model" and row["run_id"] == "n2"
    out = CliRunner().invoke(main, ["review", "ingest", str(tmp_path / "nowhere.json"), "--sink", sink.uri])
    assert out.exit_code == 1 and "nowhere.json: no such file" in out.output
    # Hostile or odd exports: one line each, nothing written, nothing of the file in the message.
    before = reviews(sink).num_rows
    for blob, message in [
        (b"\x00\xff" * 50, "a review CSV needs the columns image_id and label"),
        (b"[" * 100_000, "not JSON"),
        (b'{"a": 1}', "expected Label Studio's export"),
        (json.dumps([{"data": "x", "annotations": "y"}, 3]).encode(), "expected Label Studio's export"),
        (json.dumps([{"image_id": ids[0], "label": "class42" + "X" * 500}]).encode(), "a label that is none of"),
        (json.dumps([{"image_id": "X" * 500, "label": "class42"}]).encode(), "image <not an image id>: a label"),
    ]:
        with pytest.raises(UserError, match=message) as refused:
            ingest(sink, blob, name="odd.json")
        assert "XXX" not in str(refused.value) and "class42" not in str(refused.value)
    # Empty answers and unusable times are no answers / no times; a BOM (Excel) CSV is a CSV.
    odd = [{"image_id": ids[3], "label": {"choices": []}}, {"image_id": ids[3], "label": ""},
           {"image_id": ids[3], "label": "class3", "updated_at": "0001-01-01T00:00:00+14:00", "annotation_id": 9}]
    assert ingest(sink, json.dumps(odd).encode()).added == 1
    assert ingest(sink, "\ufeffimage_id,label\n".encode() + f"{ids[3]},class4\n".encode()).added == 1
    assert reviews(sink).num_rows == before + 2 and imgclf_ray.read_labels(sink.uri).num_rows == 60


def test_reviews_label_a_training_set(night, tmp_path):
    """data.labels: {kind: reviewed}: the reviewers' answers that apply are the training labels
    (optionally the folders' for images nobody reviewed); a review of older content is not used."""
    from imgclf_ray.io.labels import attach_true_labels
    from imgclf_ray.io.listing import list_archive
    from imgclf_ray.models.artifact import read_card
    from imgclf_ray.spec import SourceSpec, TrainSpec
    from imgclf_ray.training.trainer import train_job
    from tests.conftest import REPO

    sink, archive, run = night
    rows = imgclf_ray.read_run(sink.uri, "n1").to_pylist()
    truth = {r["image_id"]: "class" + r["uri"].rsplit("/", 2)[-2] for r in rows}
    half = sorted(truth)[:30]
    assert ingest(sink, ("image_id,label\n" + "".join(f"{i},{truth[i]}\n" for i in half)).encode()).added == 30
    source = SourceSpec(uri=str(archive), labels={"kind": "reviewed", "sink": sink.uri})
    listed = list_archive(source)
    labelled = attach_true_labels(listed, source).column("true_label").to_pylist()
    by_uri = {r["uri"]: truth[r["image_id"]] for r in rows if r["image_id"] in half}
    assert {u: t for u, t in zip(listed.column("uri").to_pylist(), labelled) if t} == by_uri
    fallback = SourceSpec(uri=str(archive), labels={"kind": "reviewed", "sink": sink.uri, "folder_fallback": True})
    assert all(attach_true_labels(listed, fallback).column("true_label").to_pylist())
    # Every image reviewed: a model trained on the answers alone.
    assert ingest(sink, ("image_id,label\n" + "".join(f"{i},{truth[i]}\n" for i in sorted(truth)[30:])).encode()).added == 30
    metrics = train_job(load_spec(REPO / "jobs" / "train" / "digits-svm-pixels.yaml", [
        f"data.uri={archive}", f"data.labels={{kind: reviewed, sink: {sink.uri}}}", "example=null",
        f"model.output={tmp_path}/reviewed", "model.estimator={name: knn}"], TrainSpec))
    card = read_card(f"{tmp_path}/reviewed")
    assert card.labels == sorted(set(truth.values())) and card.training["unlabelled_images"] == 0
    assert metrics["images"] == card.training["test_images"] == 12


def test_an_interrupted_selection_or_ingest_leaves_no_batch_and_no_answer(night, tmp_path):
    sink, _, _ = night
    killed_at("review_batch", "review", "select", sink.uri, "--budget", "5", "--document-root", str(tmp_path))
    assert batch_records(sink) == []  # its files without a record: no batch; the lock died with it
    record = commit_batch(sink, 5, document_root=str(tmp_path))  # the same images are selectable again
    answers = tmp_path / "answers.json"
    answers.write_bytes(_export(_tasks(record)))
    killed_at("review_ingest", "review", "ingest", str(answers), "--sink", sink.uri)
    assert reviews(sink).num_rows == 0
    assert ingest(sink, answers.read_bytes()).added == 5
