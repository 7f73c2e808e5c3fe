"""The CLI as a user drives it: the quickstart end to end, and user errors without tracebacks."""

from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from imgclf_ray.cli import main
from imgclf_ray.io.sink import committed_files
from imgclf_ray.models.artifact import read_card
from tests.conftest import REPO

QUICKSTART = str(REPO / "jobs" / "quickstart.yaml")


@pytest.mark.slow
@pytest.mark.ray
def test_quickstart_end_to_end(ray_session, tmp_path):
    """make demo's job as make demo runs it (the local executor: no Ray cluster named or running):
    the digits written, a resnet18 trained on them with Ray Train (jobs/train/digits-resnet18.yaml, the
    README's reference: >= 0.97 held out), every image labelled; then `imgclf evaluate` of the same
    job finds the data and the model cached. (The Ray executor's rows are the local one's: test_local.)"""
    import json

    where = [f"--set=source.uri={tmp_path}/archive", f"--set=model.uri={tmp_path}/model",
             f"--set=sink.uri={tmp_path}/out", "--set=run.executor=local", "--set=example.anywhere=true"]
    first = CliRunner().invoke(main, ["run", QUICKSTART, "--run-id", "first", "--quiet", *where])
    assert first.exit_code == 0, first.output
    assert "wrote 1797 digit images" in first.output and "training a resnet18" in first.output
    assert "run first: 1797 images" in first.output and "status : ok: 1797" in first.output
    card = read_card(f"{tmp_path}/model")
    assert card.metrics["test"]["accuracy"] >= 0.97
    assert card.framework == "torch" and card.weights.format == "safetensors" and card.preprocess.mean
    assert card.training["history"] and card.training["best_epoch"] == card.training["history"][-1]["epoch"]

    rows = pq.read_table([f.removeprefix("file://") for f in committed_files(f"{tmp_path}/out", "first")]).to_pylist()
    assert len(rows) == 1797
    truth = [r["uri"].rsplit("/", 2)[1] for r in rows]  # the class folders, not the model's own record
    accuracy = sum(t == r["label"] for t, r in zip(truth, rows)) / len(rows)
    assert accuracy >= 0.95

    again = CliRunner().invoke(main, ["evaluate", QUICKSTART, "--run-id", "second", "-q", *where])
    assert again.exit_code == 0, again.output
    assert "training" not in again.output and "wrote" not in again.output  # cached data and model
    (evaluation,) = (tmp_path / "out").glob("*second*/_evaluation.json")
    assert json.loads(evaluation.read_text())["accuracy"] >= 0.95
    assert json.loads(evaluation.read_text())["images"] == 1797


@pytest.mark.parametrize("override, message", [
    ("source.uri={tmp}/nowhere", "nowhere: no such folder or prefix (source.uri)"),
    ("model.uri={tmp}/nomodel", "nomodel: no readable model_card.json"),
])
def test_run_user_errors_are_one_line_without_traceback(tmp_path, tiny_model, override, message):
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "x.png").write_bytes(b"not really")
    args = ["run", QUICKSTART, "--set", "example=null", "--set", f"source.uri={tmp_path}/arch",
            "--set", f"model.uri={tiny_model}", "--set", f"sink.uri={tmp_path}/out", "--set", "run.executor=ray",
            "--set", override.format(tmp=tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_the_example_never_writes_into_an_archive_that_lists_no_images(tmp_path):
    """jobs/quickstart.yaml pointed at a user's own folder that lists no PNG (extensionless DICOM,
    other formats): one error line with the way out; not one file written there. A location where
    nothing is gets the digits (the S3 demo in the spec's header)."""
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "IM0001").write_bytes(b"\0" * 128 + b"DICM")
    before = sorted(p.name for p in archive.rglob("*"))
    where = [f"--set=source.uri={archive}", f"--set=model.uri={tmp_path}/model", f"--set=sink.uri={tmp_path}/out"]
    result = CliRunner().invoke(main, ["run", QUICKSTART, "--local", *where])
    assert result.exit_code == 1 and result.output.count("error:") == 1, result.output
    assert "no files with extensions .png (source.extensions); 1 other files were skipped" in result.output
    assert result.output.rstrip().endswith("the spec's example: writes its digit images only where there is nothing "
                                           "yet: --set example=null runs the job on this archive as it is (with "
                                           "source.extensions and a model.uri that fit it)")
    assert sorted(p.name for p in archive.rglob("*")) == before and not (tmp_path / "model").exists()
    # Where nothing is, but set on the command line: only with example.anywhere (a glob: never).
    for uri, anywhere, said in ((tmp_path / "new", "false", "this one was set on the command line "
                                 "(--set example.anywhere=true writes them there too)"),
                                (f"{archive}/*.png", "true", "only where there is nothing yet")):
        result = CliRunner().invoke(main, ["run", QUICKSTART, "--local", *where, f"--set=source.uri={uri}",
                                           f"--set=example.anywhere={anywhere}"])
        assert result.exit_code == 1 and result.output.count("error:") == 1 and said in result.output, result.output
    assert not (tmp_path / "new").exists() and sorted(p.name for p in archive.rglob("*")) == before


def test_an_example_archive_interrupted_while_written_is_not_taken_as_written(tmp_path, monkeypatch):
    """A local example archive appears whole or not at all: a write that fails half way (an
    interrupted `make demo`) leaves nothing where the next run looks, and that run writes it all."""
    from imgclf_ray.spec import SourceSpec
    from imgclf_ray.training import bundled

    real = bundled.WRITERS["faces"]

    def half_then_fail(uri, storage):
        real(uri, storage)
        raise KeyboardInterrupt  # (as Ctrl-C would, after the files, before the rename)

    monkeypatch.setitem(bundled.WRITERS, "faces", half_then_fail)
    source = SourceSpec(uri=str(tmp_path / "faces"))
    with pytest.raises(KeyboardInterrupt):
        bundled.ensure_example_archive("faces", source)
    assert not (tmp_path / "faces").exists()
    monkeypatch.setitem(bundled.WRITERS, "faces", real)
    assert bundled.ensure_example_archive("faces", source) == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"]  # (the interrupted write's staging: gone)
    assert len(list((tmp_path / "faces").rglob("*.png"))) == 200 and bundled.ensure_example_archive("faces", source) == 0


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "validate" in result.output and "run" in result.output


@pytest.mark.ray
def test_untrusted_artifact_is_refused_before_any_work(ray_session, tmp_path):
    """A skops file holding a type outside the trusted list: one error line, nothing written."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from imgclf_ray.models.artifact import save_sklearn_artifact
    from tests.models.test_sklearn import shout

    x = np.random.default_rng(0).random((20, 64)).astype(np.float32)
    est = make_pipeline(FunctionTransformer(shout), LogisticRegression()).fit(x, np.arange(20) % 2)
    save_sklearn_artifact(str(tmp_path / "model"), {"preprocess": {"resize": 8, "crop": 8, "channels": 1},
                                                    "features": {"name": "pixels"}}, est)
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "x.png").write_bytes(b"")
    result = CliRunner().invoke(main, ["run", QUICKSTART, "--set", "example=null",
                                       "--set", f"source.uri={tmp_path}/arch", "--set", f"model.uri={tmp_path}/model",
                                       "--set", f"sink.uri={tmp_path}/out", "--set", "run.executor=ray"])
    assert result.exit_code == 1 and "types that are not trusted" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


# Example models the session's fixtures train (tests/conftest.py), on the data the examples write.
TRAINED_BY_THE_SESSION = {"mlp-attributes": "attributes_model", "tree-hog": "tree_model", "svm-hog": "svm_hog_model"}
EXAMPLE_JOBS = sorted(p.name for p in (REPO / "jobs").glob("*.yaml") if p.name != "quickstart.yaml")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("job", EXAMPLE_JOBS)
def test_every_example_job_runs(ray_session, tmp_path, job, request):
    """Each example in jobs/ materialises its data and model and labels every image. An example
    model the session has trained already (a fixture: the same trainer on the same bundled data)
    is put in place, and the job finds it; the others are trained by the job."""
    import shutil

    import yaml

    where = [f"--set=source.uri={tmp_path}/archive", f"--set=model.uri={tmp_path}/model",
             f"--set=sink.uri={tmp_path}/out", "--set=run.executor=ray", "--set=example.anywhere=true", "--run-id", "r", "-q"]
    fixture = TRAINED_BY_THE_SESSION.get(yaml.safe_load((REPO / "jobs" / job).read_text())["example"]["model"])
    if fixture:
        shutil.copytree(request.getfixturevalue(fixture), tmp_path / "model")
    result = CliRunner().invoke(main, ["run", str(REPO / "jobs" / job), *where])
    assert result.exit_code == 0, result.output
    assert "example: wrote" in result.output
    if fixture:
        assert "example: train" not in result.output
    else:
        assert "example: trained" in result.output and "held out" in result.output
    assert re.search(r"status : ok: \d+$", result.output, re.M), result.output  # no error rows
    rows = pq.read_table([f.removeprefix("file://") for f in committed_files(f"{tmp_path}/out", "r")]).to_pylist()
    truth = [r["uri"].rsplit("/", 2)[-2] for r in rows]
    if job == "digits-multilabel.yaml":
        from imgclf_ray.training.bundled import DIGIT_ATTRIBUTES

        exact = [set(r["labels"]) == {a for a, ds in DIGIT_ATTRIBUTES.items() if int(t) in ds} for t, r in zip(truth, rows)]
        assert sum(exact) / len(rows) >= 0.9
    else:
        assert sum(t == r["label"] for t, r in zip(truth, rows)) / len(rows) >= 0.9
    if job == "textures-curate.yaml":  # clusters found without labels match the texture classes
        from sklearn.metrics import adjusted_rand_score

        assert adjusted_rand_score(truth, [r["cluster"] for r in rows]) >= 0.9
        assert not any(r["is_label_issue"] or r["is_duplicate"] for r in rows)


def test_an_unknown_option_or_command_is_one_error_line_with_where_to_look():
    for args, message in ((["run", "--no-such-thing", "job.yaml"], "imgclf run: No such option '--no-such-thing'."),
                          (["runn"], "imgclf: No such command 'runn'."), (["run"], "imgclf run: Missing argument 'JOB'."),
                          (["run", "job.yaml", "--run-id"], "imgclf run: Option '--run-id' requires an argument."),
                          (["review", "select", "job.yaml", "--region"],
                           "imgclf review select: Option '--region' requires an argument.")):
        result = CliRunner().invoke(main, args, prog_name="imgclf")
        assert result.exit_code == 2 and len(result.output.splitlines()) == 1, result.output
        where = message.split(":")[0]
        assert result.output.startswith(f"error: {message}") and result.output.endswith(f"(see {where} --help)\n")


def test_a_group_without_a_command_shows_its_help_and_a_bad_top_level_option_is_one_line():
    shown = CliRunner().invoke(main, ["model"], prog_name="imgclf")
    assert "Commands:" in shown.output and "error:" not in shown.output
    bogus = CliRunner().invoke(main, ["--bogus"], prog_name="imgclf")
    assert bogus.exit_code == 2 and bogus.output.strip() == "error: imgclf: No such option '--bogus'. (see imgclf --help)"
