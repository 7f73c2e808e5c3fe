"""Review batches of every task's shape, and the selection as the engine's tasks.

Hierarchical (the tree-hog example: small/large, then the digit): a Taxonomy of the tree, the
model's path as the pre-annotation, the least confident node shown, taxonomy answers and CSV leaf
names ingested as paths. Multilabel (the mlp-attributes example with job thresholds): uncertainty
measured against the thresholds the night applied. Any partitioning of the archive selects the
same images, and the driver receives only each partition's best candidates. References come from
the committed rows and the artifact's own card files, read with pyarrow and json."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import imgclf_ray
from imgclf_ray.errors import UserError
from imgclf_ray.io.sink import Sink
from imgclf_ray.review.ingest import ingest
from imgclf_ray.review.select import Ask, _merged, _query, commit_batch, commit_gold, select
from imgclf_ray.runner.job import run_job
from imgclf_ray.runner.local import LocalTasks
from imgclf_ray.spec import load_spec
from tests.support.jobs import digits_subset


class Partitioned(LocalTasks):
    """The in-process executor's tasks with more partitions than one (as a cluster's CPUs make)."""

    def __init__(self, cpus: int):
        self.cpus = cpus


def _night(tmp_path: Path, archive: Path, model: str, extra: str = "", more: str = "") -> Sink:
    job = tmp_path / "night.yaml"
    job.write_text(f"name: nightly\nsource: {{uri: {archive}}}\nmodel: {{uri: {model}{extra}}}\n"
                   f"sink: {{uri: {tmp_path / 'sink'}}}\nincremental: {{}}\nrun: {{executor: local}}\n{more}")
    run_job(load_spec(job), "n1", quiet=True)
    return Sink(str(tmp_path / "sink"))


def _tree_paths(model: str) -> list[list[str]]:
    """Root-to-leaf paths from the tree's card files, read by hand."""
    root = json.loads((Path(model) / "model_card.json").read_text())["root"]

    def walk(node: dict, path: list[str]) -> list[list[str]]:
        labels = json.loads((Path(model) / node["model"] / "model_card.json").read_text())["labels"]
        out = []
        for label in labels:
            child = node.get("children", {}).get(label)
            out += walk(child, path + [label]) if child else [path + [label]]
        return out

    return sorted(walk(root, []))


def test_a_hierarchical_batch_is_a_taxonomy_and_its_answers_come_back_as_paths(digits_archive, tree_model, tmp_path):
    archive = tmp_path / "archive"
    digits_subset(digits_archive, archive, 6)
    sink = _night(tmp_path, archive, tree_model)
    paths = _tree_paths(tree_model)
    manifest = sink.list_runs()[-1]
    assert manifest["label_tree"] == paths
    rows = imgclf_ray.read_run(sink.uri, "n1").to_pylist()
    least = {r["image_id"]: 1 - min(r["path_scores"]) for r in rows}

    record = commit_batch(sink, 5, document_root=str(tmp_path))
    expected = sorted(least, key=lambda i: (-least[i], i))[:5]
    assert record["image_ids"] == expected
    folder = Path(record["uri"].removeprefix("file://"))
    config = ET.fromstring((folder / "labeling-config.xml").read_text())
    taxonomy = config.find("Taxonomy")
    assert taxonomy is not None and taxonomy.get("leafsOnly") == "true" and config.find("Choices") is None

    def leaves(node, path):
        kids = node.findall("Choice")
        return [p for k in kids for p in leaves(k, path + [k.get("value")])] if kids else [path]

    assert sorted(leaves(taxonomy, [])) == paths
    by_id = {r["image_id"]: r for r in rows}
    for task in json.loads((folder / "tasks.json").read_text()):
        row = by_id[task["data"]["image_id"]]
        assert task["predictions"][0]["result"][0]["value"] == {"taxonomy": [row["label_path"]]}
        low = min(row["path_scores"])
        depth = max(i for i, s in enumerate(row["path_scores"]) if s == low)
        assert task["data"]["uncertain_node"] == "/".join(row["label_path"][:depth + 1])

    # Answers: the true path of each digit, as Label Studio's Taxonomy exports it; and a CSV of leaf names.
    truth = {r["image_id"]: next(p for p in paths if p[-1] == r["uri"].rsplit("/", 2)[-2]) for r in rows}
    export = [{"id": k, "data": {"image_id": i}, "annotations": [{"id": 100 + k, "completed_by": 1,
               "result": [{"from_name": "label", "to_name": "image", "type": "taxonomy",
                           "value": {"taxonomy": [truth[i]]}}]}]} for k, i in enumerate(expected[:3])]
    assert ingest(sink, json.dumps(export).encode(), name="export.json").added == 3
    csv = "image_id,label\n" + "".join(f"{i},{truth[i][-1]}\n" for i in expected[3:])
    assert ingest(sink, csv.encode(), name="answers.csv").added == 2
    with pytest.raises(UserError, match="its label is none of the model's paths; the model's leaf paths: .*small/0"):
        ingest(sink, f"image_id,label\n{expected[0]},large/3\n".encode(), name="bad.csv")
    current = {r["image_id"]: r for r in imgclf_ray.read_labels(sink.uri).to_pylist()}
    for i in expected:
        assert current[i]["label_source"] == "human"
        assert current[i]["label_path"] == truth[i] and current[i]["label"] == truth[i][-1]


def test_multilabel_uncertainty_is_measured_against_the_nights_thresholds(digits_archive, attributes_model, tmp_path):
    archive = tmp_path / "archive"
    digits_subset(digits_archive, archive, 4)
    sink = _night(tmp_path, archive, attributes_model, ", thresholds: {prime: 0.3, large: 0.8}")
    card = json.loads((Path(attributes_model) / "model_card.json").read_text())
    t = {lab: {"prime": 0.3, "large": 0.8}.get(lab, card.get("thresholds", {}).get(lab, 0.5)) for lab in card["labels"]}
    assert sink.list_runs()[-1]["thresholds"] == pytest.approx(t)
    rows = imgclf_ray.read_run(sink.uri, "n1").to_pylist()
    # nearest its threshold, as a share of the farthest a score can be from it
    nearest = {r["image_id"]: max(1 - abs(p - t[lab]) / max(t[lab], 1 - t[lab])
                                  for lab, p in zip(card["labels"], r["class_scores"])) for r in rows}
    batch, _ = select(sink, 6)
    assert batch.column("image_id").to_pylist() == sorted(nearest, key=lambda i: (-nearest[i], i))[:6]


def test_any_partitioning_selects_the_same_images_and_the_driver_gets_only_the_best(
        digits_archive, svm_hog_model, tmp_path, monkeypatch):
    from imgclf_ray.review import labels

    monkeypatch.setattr(labels, "MIN_PARTITION_ROWS", 1)  # a tiny archive split as a large one is
    archive = tmp_path / "archive"
    n = digits_subset(digits_archive, archive, 15)
    sink = _night(tmp_path, archive, svm_hog_model)
    for strategy in ("uncertainty", "diverse", "random"):
        one, _ = select(sink, 8, Ask(strategy, seed=5))
        many, _ = select(sink, 8, Ask(strategy, seed=5), Partitioned(7))
        assert one.column("image_id").to_pylist() == many.column("image_id").to_pylist(), strategy
        keep = 3 * 5 if strategy == "diverse" else 3  # a budget of 3
        q, _, excluded = _query(sink, sink.list_runs(), strategy=strategy, seed=5, keep=keep)
        rows, stats = _merged(sink, q, Partitioned(7), excluded, sink.list_runs())
        assert stats["candidates"] == n and keep < rows.num_rows <= 7 * keep < n  # several partitions, each its best
    # The gold set: drawn from a copy of the sink with each partitioning, the same images.
    other = tmp_path / "copy"
    shutil.copytree(tmp_path / "sink", other)
    one = commit_gold(sink, 20, seed=3, document_root=str(tmp_path))["image_ids"]
    many = commit_gold(Sink(str(other)), 20, seed=3, document_root=str(tmp_path), tasks=Partitioned(7))["image_ids"]
    assert one == many and len(one) == 20
    night = {r["image_id"]: r["label"] for r in imgclf_ray.read_run(sink.uri, "n1").to_pylist()}
    share = {lab: sum(v == lab for v in night.values()) / n * 20 for lab in set(night.values())}
    drawn = [night[i] for i in one]
    assert all(abs(drawn.count(lab) - s) < 1 for lab, s in share.items())  # proportional, largest remainders


@pytest.mark.ray
def test_ray_tasks_select_what_this_process_selects_and_read_labels_gives_a_dataset(
        ray_session, digits_archive, svm_hog_model, tmp_path):
    from imgclf_ray.runner.build import RayTasks

    archive = tmp_path / "archive"
    n = digits_subset(digits_archive, archive, 6)
    sink = _night(tmp_path, archive, svm_hog_model)
    picked: list = []
    for strategy in ("uncertainty", "diverse"):
        here, _ = select(sink, 7, Ask(strategy))
        there, _ = select(sink, 7, Ask(strategy), RayTasks())
        assert here.column("image_id").to_pylist() == there.column("image_id").to_pylist()
        picked = picked if strategy == "diverse" else here.column("image_id").to_pylist()
    from click.testing import CliRunner
    from imgclf_ray.cli import main

    out = CliRunner().invoke(main, ["review", "select", sink.uri, "--budget", "7", "--address", "auto",
                                    "--document-root", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert json.loads(Path(sink.root, "_reviews", "batches", out.output.split()[2].rstrip(":"), "_batch.json")
                      .read_text())["image_ids"] == picked
    table = imgclf_ray.read_labels(sink.uri)
    ds = imgclf_ray.read_labels(sink.uri, ray=True)
    got = sorted(ds.select_columns(["image_id", "label", "label_source"]).take_all(), key=lambda r: r["image_id"])
    want = sorted(table.select(["image_id", "label", "label_source"]).to_pylist(), key=lambda r: r["image_id"])
    assert got == want and len(want) == n
    assert isinstance(table, pa.Table)
    assert np.all(np.asarray(table.column("label_source").to_pylist()) == "model")


@pytest.mark.parametrize("spread, spread_on", [("k_center", "hog"), ("clusters", "scores")])
def test_diverse_computes_hashes_and_an_embedding_for_its_pool_when_the_nights_stored_none(
        digits_archive, svm_hog_model, tmp_path, spread, spread_on):
    from PIL import Image
    from skimage.feature import hog

    archive = tmp_path / "archive"
    digits_subset(digits_archive, archive, 15)
    (tmp_path / "probe").mkdir()
    probe = _night(tmp_path / "probe", archive, svm_hog_model)
    rows = imgclf_ray.read_run(probe.uri, "n1").to_pylist()
    margin = {r["image_id"]: 1 - float(np.diff(sorted(r["class_scores"])[-2:])[0]) for r in rows}
    for r in sorted(rows, key=lambda r: -margin[r["image_id"]])[:3]:  # the most uncertain images, twice
        src = Path(r["uri"].removeprefix("file://"))
        shutil.copy(src, src.with_name("again-" + src.name))
    sink = _night(tmp_path, archive, svm_hog_model)  # no curate checks: no groups, no hashes, no embedding
    rows = imgclf_ray.read_run(sink.uri, "n1").to_pylist()
    assert all(r.get("phash") is None and r.get("embedding") is None and r.get("duplicate_group") is None
               for r in rows)
    margin = {r["image_id"]: 1 - float(np.diff(sorted(r["class_scores"])[-2:])[0]) for r in rows}
    budget, pool = 8, 3
    top = set(sorted(margin, key=lambda i: (-margin[i], i))[:budget * pool])
    batch, _ = select(sink, budget, Ask("diverse", pool=pool, spread=spread, spread_on=spread_on))
    chosen = batch.column("image_id").to_pylist()
    assert len(chosen) == budget and set(chosen) <= top
    names = {r["image_id"]: Path(r["uri"]).name.removeprefix("again-") + Path(r["uri"]).parent.name for r in rows}
    assert len({names[i] for i in top}) < len(top)  # the pool holds a file and its copy...
    assert len({names[i] for i in chosen}) == budget  # ...the batch one of them
    first, _ = select(sink, budget, Ask("diverse", pool=1, spread=spread, spread_on=spread_on))  # no spread to hide a pair: the hashes must
    assert len({names[i] for i in first.column("image_id").to_pylist()}) == first.num_rows == budget - 3

    def spread(ids: list[str]) -> float:  # least distance between two chosen images' HOG, computed by hand
        x = []
        for i in ids:
            uri = next(r["uri"] for r in rows if r["image_id"] == i).removeprefix("file://")
            grey = np.asarray(Image.open(uri).convert("L").resize((64, 64), Image.BILINEAR), np.float64) / 255
            x.append(hog(grey, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2)))
        x = np.array(x) / np.linalg.norm(x, axis=1, keepdims=True)
        d = np.linalg.norm(x[:, None] - x[None], axis=2)
        return float(d[np.triu_indices(len(ids), 1)].min())

    if spread_on == "scores":  # the default: the model's class scores, no embedding computed
        assert "embedding" not in batch.column_names or batch.column("embedding").null_count == budget
        return
    plain, _ = select(sink, budget, Ask("uncertainty"))
    assert spread(chosen) > spread(plain.column("image_id").to_pylist())
    assert batch.column("embedding").null_count == 0


def test_images_a_quality_check_flagged_are_left_out_unless_asked(digits_archive, svm_hog_model, tmp_path):
    archive = tmp_path / "archive"
    n = digits_subset(digits_archive, archive, 60)
    sink = _night(tmp_path, archive, svm_hog_model, more="curate: {checks: [grayscale]}\n")
    rows = imgclf_ray.read_run(sink.uri, "n1").to_pylist()
    assert all(r["is_grayscale"] for r in rows)  # the digits are grey: every image flagged
    batch, _ = select(sink, 5)
    assert batch.num_rows == 0
    batch, _ = select(sink, 5, Ask(include_flagged=True))
    margin = {r["image_id"]: 1 - float(np.diff(sorted(r["class_scores"])[-2:])[0]) for r in rows}
    assert batch.column("image_id").to_pylist() == sorted(margin, key=lambda i: (-margin[i], i))[:5] and n > 5
