"""Evaluation metrics for every task type, and `imgclf evaluate` on a labelled archive."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgclf_ray.cli import main
from imgclf_ray.errors import SourceError
from imgclf_ray.evaluate import evaluate_rows
from imgclf_ray.io.labels import attach_true_labels
from imgclf_ray.io.listing import list_archive
from imgclf_ray.spec import SourceSpec
from tests.conftest import REPO


def row(label=None, true=None, status="ok", **kw):
    return {"status": status, "label": label, "true_label": true, "labels": kw.get("labels"),
            "label_path": kw.get("path"), "class_scores": kw.get("scores")}


def test_multiclass_metrics():
    rows = [row("a", "a"), row("a", "b"), row("b", "b"), row("c", "c"), row(status="error", true="a"), row("a", None)]
    m = evaluate_rows(rows, "multiclass", ["a", "b", "c"])
    assert m["images"] == 4 and m["left_out"] == {"error_rows": 1, "without_true_label": 1}
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == pytest.approx(0.8333, abs=1e-4)
    assert m["confusion_matrix"]["matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}


def test_true_labels_that_are_none_of_the_models_are_one_clear_error_and_sklearn_notes_stay_quiet(recwarn):
    """source.uri one folder too high: the 'true labels' are the folder's own name. Or a labels
    table's wrong column: the values are data (a patient's name), counted, never shown."""
    from imgclf_ray.errors import UserError

    with pytest.raises(UserError, match=r"the true labels \(quickstart\) are none of the model's labels \(a, b, c\)"):
        evaluate_rows([row("a", "quickstart"), row("b", "quickstart")], "multiclass", ["a", "b", "c"])
    names = [row("a", f"DOE^JANE {i}") for i in range(7)]
    with pytest.raises(UserError, match=r"^no true label is one of the model's labels \(a, b, c\) \(7 distinct values "
                                        r"in the labels table's column\): is source.labels.label_column") as refused:
        evaluate_rows(names, "multiclass", ["a", "b", "c"], folders=False)
    assert "DOE" not in str(refused.value)
    m = evaluate_rows([row("a", "a"), row("b", "a")], "multiclass", ["a", "b", "c"])  # 'b' predicted, never true
    assert m["accuracy"] == 0.5 and not [w for w in recwarn if "sklearn" in str(w.filename)]


def test_binary_roc_auc_and_threshold():
    rows = [row("pos", "pos", scores=[0.1, 0.9]), row("neg", "pos", scores=[0.6, 0.4]),
            row("neg", "neg", scores=[0.7, 0.3]), row("pos", "neg", scores=[0.45, 0.55])]
    m = evaluate_rows(rows, "binary", ["neg", "pos"], threshold=0.5)
    assert m["roc_auc"] == 0.75 and m["accuracy"] == 0.5 and m["threshold"] == 0.5


def test_multilabel_metrics():
    rows = [row("x", "x|y", labels=["x", "y"]), row("x", "x", labels=["x", "z"]), row("y", "", labels=[])]
    m = evaluate_rows(rows, "multilabel", ["x", "y", "z"])
    assert m["subset_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["hamming_loss"] == pytest.approx(1 / 9, abs=1e-4)
    assert m["micro_f1"] == pytest.approx(0.8571, abs=1e-4)


def test_hierarchical_precision_recall_with_leaf_truths():
    leaf_paths = {"3": ["small", "3"], "7": ["large", "7"], "4": ["small", "4"]}
    rows = [row("3", "3", path=["small", "3"]), row("4", "small/3", path=["small", "4"]),
            row("7", "3", path=["large", "7"])]
    m = evaluate_rows(rows, "hierarchical", [], leaf_paths=leaf_paths)
    # |P∩T| = 2 + 1 + 0 over 6 predicted and 6 true nodes
    assert m["hierarchical_precision"] == 0.5 and m["hierarchical_recall"] == 0.5
    assert m["path_accuracy"] == pytest.approx(1 / 3, abs=1e-4)


def test_true_labels_from_nested_folders_and_from_a_table(tmp_path):
    for rel in ["fruit/apple/a.png", "fruit/pear/b.png", "veg/c.png", "d.png"]:
        (tmp_path / "arch" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "arch" / rel).write_bytes(b"x")
    source = SourceSpec(uri=str(tmp_path / "arch"), labels={"kind": "folder"})
    table = attach_true_labels(list_archive(source), source)
    assert table.column("true_label").to_pylist() == [None, "fruit/apple", "fruit/pear", "veg"]
    (tmp_path / "labels.csv").write_text("path,tags\nd.png,red|round\nveg/c.png,green\n")
    source = SourceSpec(uri=str(tmp_path / "arch"), labels={"kind": "table", "table": str(tmp_path / "labels.csv"),
                                                          "uri_column": "path", "label_column": "tags"})
    table = attach_true_labels(list_archive(source), source)
    assert table.column("true_label").to_pylist() == ["red|round", None, None, "green"]
    # Class codes keep their text ("007", not 7); a table that is not readable UTF-8 CSV, or has its
    # columns twice, is one error naming the spec key (it was an Arrow error, or b'caf\xe9' as a label).
    (tmp_path / "labels.csv").write_text("path,tags\nd.png,007\nveg/c.png,1.50\nfruit/pear/b.png,\n")
    assert attach_true_labels(list_archive(source), source).column("true_label").to_pylist() == ["007", None, "", "1.50"]
    # An empty cell: no label to score against (multilabel: no label applies).
    rows = [{"status": "ok", "label": "007", "labels": ["007"], "true_label": t} for t in ("007", "", None)]
    assert evaluate_rows(rows, "multiclass", ["007", "1"])["images"] == 1
    assert evaluate_rows(rows, "multilabel", ["007", "1"])["images"] == 2
    with pytest.raises(SourceError, match=r"^.*nothing\.csv: no such labels table \(data\.labels\)$"):
        attach_true_labels(list_archive(source), source.model_copy(update={"labels": source.labels.model_copy(
            update={"table": str(tmp_path / "nothing.csv")})}), section="data.labels")  # (a training spec's key)
    table_error = f"{tmp_path / 'labels.csv'}: not a readable CSV labels table (source.labels): "
    for content, message in ((b"path,tags\nd.png,caf\xe9\n",
                              table_error + "In CSV column #1: CSV conversion error to string: invalid UTF8 data"),
                             (b"path,ta\xe9s\nd.png,x\n", table_error + "its text is not UTF-8"),
                             (b"path,tags\nd.png,DOE^JANE,1960\n", table_error + "CSV parse error: Expected 2 columns, got 3"),
                             (b"path,tags,path\nd.png,x,y\n", f"{tmp_path / 'labels.csv'}: more than one column 'path' "
                                                             "(source.labels)")):
        (tmp_path / "labels.csv").write_bytes(content)
        with pytest.raises(SourceError) as refused:
            attach_true_labels(list_archive(source), source)
        assert str(refused.value) == message
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = SourceSpec(uri=str(tmp_path / "arch"), labels={"kind": "table", "table": str(tmp_path / "labels.parquet"),
                                                           "uri_column": "path", "label_column": "tags"})
    # Only the two columns named are read: the other is one 64 MiB value dictionary-encoded twice
    # (a 10 KB file that whole is 128 MiB); Arrow's peak, counted by a pool of this test's own.
    big = pa.array(["v" * 2 ** 26] * 2).dictionary_encode()
    pq.write_table(pa.table({"path": ["d.png", "veg/c.png"], "tags": ["x", "y"], "note": big}),
                   tmp_path / "labels.parquet", compression="zstd")
    assert (tmp_path / "labels.parquet").stat().st_size < 2 ** 20
    pool, default = pa.proxy_memory_pool(pa.default_memory_pool()), pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        assert attach_true_labels(list_archive(parquet), parquet).column("true_label").to_pylist() == ["x", None, None, "y"]
    finally:
        pa.set_memory_pool(default)
    assert pool.max_memory() < 2 ** 20
    pq.write_table(pa.table({"path": ["d.png", "veg/c.png"], "tags": ["x", "y"]}), tmp_path / "labels.parquet")
    good, rng = (tmp_path / "labels.parquet").read_bytes(), random.Random(0)
    for _ in range(100):  # damaged: Arrow raises OSError, ArrowInvalid ...; each is the one error
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        (tmp_path / "labels.parquet").write_bytes(bytes(damaged))
        try:
            attach_true_labels(list_archive(parquet), parquet)
        except SourceError as exc:
            assert str(exc).startswith(f"{tmp_path / 'labels.parquet'}: ") and "cannot read" not in str(exc), exc
    (tmp_path / "labels.csv").write_text("path,tags,part\nd.png,x,trian\nveg/c.png,y,DOE^JANE\n")
    split = SourceSpec(uri=str(tmp_path / "arch"), labels={"kind": "table", "table": str(tmp_path / "labels.csv"),
                                                         "uri_column": "path", "label_column": "tags", "split_column": "part"})
    with pytest.raises(SourceError) as refused:
        attach_true_labels(list_archive(split), split)
    assert str(refused.value) == (f"{tmp_path / 'labels.csv'}: column 'part' (source.labels.split_column) has 2 values "
                                  "other than train, validation and test")


@pytest.mark.ray
def test_evaluate_multilabel_from_a_labels_table(ray_session, digits_archive, attributes_model, tmp_path):
    from imgclf_ray.training.bundled import DIGIT_ATTRIBUTES

    archive = tmp_path / "arch"
    archive.mkdir()
    lines = ["file,attributes"]
    for src in sorted(Path(digits_archive).rglob("*.png"))[::45]:
        shutil.copy(src, archive / src.name)
        digit = int(src.parent.name)
        lines.append(f"{src.name},{'|'.join(a for a, ds in DIGIT_ATTRIBUTES.items() if digit in ds)}")
    (tmp_path / "truth.csv").write_text("\n".join(lines) + "\n")
    model = tmp_path / "model"
    shutil.copytree(attributes_model, model)
    def evaluate(run_id: str):
        return CliRunner().invoke(main, [
            "evaluate", str(REPO / "jobs" / "digits-multilabel.yaml"), "-q", "--run-id", run_id,
            "--set", "example=null", "--set", f"source.uri={archive}", "--set", f"model.uri={model}",
            "--set", f"sink.uri={tmp_path}/out", "--set", "source.labels.kind=table",
            "--set", f"source.labels.table={tmp_path}/truth.csv", "--set", "source.labels.uri_column=file",
            "--set", "source.labels.label_column=attributes"])

    result = evaluate("eval")
    assert result.exit_code == 0, result.output
    assert "multilabel evaluation on 40 labelled images" in result.output
    metrics = json.loads((tmp_path / "out" / "eval" / "_evaluation.json").read_text())
    assert metrics["micro_f1"] >= 0.9 and metrics["subset_accuracy"] >= 0.75
    assert not (model / "_evaluation.json").exists()  # the user's model folder is not the job's output
    assert metrics["data_digest"].startswith("sha256:") and metrics["evaluated_at"]
    manifest = json.loads((tmp_path / "out" / "eval" / "_manifest.json").read_text())
    assert "_evaluation.json" in manifest["side_files"]  # replacing the run deletes it too
    history = CliRunner().invoke(main, ["evaluate", str(REPO / "jobs" / "digits-multilabel.yaml"), "--history",
                                        "--set", f"sink.uri={tmp_path}/out", "--set", "example=null"])
    assert history.exit_code == 0, history.output
    lines = history.output.strip().splitlines()
    assert len(lines) == 2 and " eval " in lines[1] and f"micro_f1 {metrics['micro_f1']:.4f}" in lines[1]
    # A table naming none of the images scores nothing: an error, not "evaluation on 0 images" and exit 0.
    header, *body = (tmp_path / "truth.csv").read_text().splitlines()
    (tmp_path / "truth.csv").write_text("\n".join([header] + [f"x/{line}" for line in body]) + "\n")
    missed = evaluate("missed")
    assert missed.exit_code == 1, missed.output
    assert missed.output.strip().splitlines()[-1] == (
        "error: nothing was scored: of the run's 40 images none is an ok row with a true label (0 error rows, 40 "
        "without a true label); the labels table's source.labels.uri_column must name the images as the listing "
        "does (full URIs, or paths relative to source.uri) (run missed was committed)")


def test_evaluate_without_labels_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(REPO / "jobs" / "quickstart.yaml"), "--set", "example=null",
                                       "--set", "source.labels=null", "--set", f"model.uri={tmp_path}"])
    assert result.exit_code == 2 and "source.labels: imgclf evaluate needs true labels" in result.output
