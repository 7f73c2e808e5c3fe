"""Job specs are refused before Ray starts, with the file and the dotted key named."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgclf_ray.cli import main
from imgclf_ray.errors import SpecError
from imgclf_ray.spec import load_spec

from tests.conftest import REPO

GOOD = """\
name: demo
source:
  uri: data/archive
model:
  uri: data/model
sink:
  uri: out/demo
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_minimal_spec_gets_documented_defaults(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.decode.allow_truncated is False
    assert spec.decode.max_image_pixels == 89_478_485
    assert ".jpg" in spec.source.extensions
    assert spec.run.max_error_rate is None


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("  uri: data/archive", "  uri: data/archive\n  recursve: true"),
     "job.yaml:4: source.recursve: unknown key"),
    (GOOD + "decode:\n  frame: first\n", "job.yaml:9: decode.frame: Input should be a valid integer"),
    (GOOD.replace("sink:\n  uri: out/demo\n", ""), "job.yaml: sink: required field is missing"),
    (GOOD + "run:\n  max_error_rate: 1.5\n", "job.yaml:9: run.max_error_rate: Input should be less than or equal to 1"),
    (GOOD + "storage:\n  secret: abc\n", "storage.secret: credentials do not belong in a job spec"),
    ("name: [unclosed\n", "job.yaml:2: not valid YAML"),
    ("- a\n- b\n", "job.yaml: a job spec is a mapping"),
    (GOOD + "source:\n  uri: elsewhere\n", "job.yaml:8: not valid YAML (key 'source' given twice in one mapping "
                                          "(first on line 2); keep one)"),  # PyYAML would keep the last silently
    (GOOD + "cluster:\n  algorithm: dbscan\n  params: {n_clusters: 3}\n",
     "job.yaml:10: cluster.params: n_clusters not accepted by DBSCAN"),
    (GOOD + "cluster:\n  algorithm: kmeans\n  fit: stream\n", "job.yaml:10: cluster.fit: stream needs partial_fit"),
    (GOOD + "curate:\n  checks: [outlier]\n", "job.yaml:9: curate.checks: outlier measures distances"),
    (GOOD + "curate:\n  checks: [label_issue]\n", "job.yaml:9: curate.checks: label_issue needs a model and true labels"),
    (GOOD + "curate:\n  near_duplicate_radius: 40\n", "curate.near_duplicate_radius: Input should be less than or equal to 20"),
    (GOOD + "decode:\n  max_seconds: 1e400\n", "job.yaml:9: decode.max_seconds: Input should be a finite number"),  # (YAML: inf)
    (GOOD + "run:\n  max_error_rate: .nan\n", "run.max_error_rate: Input should be a finite number"),
    (GOOD.replace("model:\n  uri: data/model\n", ""), "job.yaml: (top level): the job does nothing: give model, cluster or curate"),
])
def test_bad_specs_name_file_line_and_key(tmp_path, text, expected):
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    assert expected in str(info.value)


def test_a_url_holding_a_credential_is_refused_without_being_shown(tmp_path, monkeypatch):
    """A spec is recorded with its run: a password in a URL (user:password@, a token in its query)
    is refused naming the key, in the file or from --set; one from the environment
    (MLFLOW_TRACKING_URI) is never printed with its credential."""
    job = write(tmp_path, GOOD.replace("  uri: data/model\n",
                                       "  uri: data/model\n  tracking_uri: http://svc:S3CRET@mlflow:5000\n"))
    with pytest.raises(SpecError, match=r"/job.yaml:\d+: model.tracking_uri: a URL holding a credential") as refused:
        load_spec(job)
    assert "S3CRET" not in str(refused.value)
    with pytest.raises(SpecError, match=r"job.yaml \(--set source.uri\): source.uri: a URL holding") as refused:
        load_spec(write(tmp_path, GOOD), ["source.uri=https://h/x.tar?X-Amz-Signature=S3CRET&a=1"])
    assert "S3CRET" not in str(refused.value)
    with pytest.raises(SpecError, match=r"model.tracking_uri: a URL holding") as refused:
        load_spec(write(tmp_path, GOOD), ["model.tracking_uri=https://mlflow/#access_token=S3CRET"])
    assert "S3CRET" not in str(refused.value)
    for plain in ("https://h/x?author=me", "sftp://alice@host/data", "s3://b/photos?sort_key=1"):
        load_spec(write(tmp_path, GOOD), [f"source.uri={plain}"])  # (not credentials)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://svc:S3CRET@127.0.0.1:9")
    train = tmp_path / "train.yaml"
    train.write_text((REPO / "jobs" / "train" / "faces-hog.yaml").read_text())
    out = CliRunner().invoke(main, ["train", str(train), "--set", f"model.output={tmp_path / 'm'}",
                                    "--set", "registry={name: faces}"])
    assert out.exit_code == 2 and "S3CRET" not in out.output, out.output
    assert out.output.startswith("error: MLFLOW_TRACKING_URI http://127.0.0.1:9 is a tracking server"), out.output
    from imgclf_ray.models.mlflow_registry import Version  # (what a run's manifest and summary record)

    assert Version("http://svc:S3CRET@127.0.0.1:9", "m", "1", "s3://b/m", None).record()["tracking_uri"] == \
        "http://127.0.0.1:9"


def test_set_overrides_parse_yaml_values_and_create_sections(tmp_path):
    spec = load_spec(write(tmp_path, GOOD), [
        "source.uri=s3://bucket/prefix", "run.max_error_rate=0.1",
        "source.extensions=[.png, JPG]", "storage.endpoint_url=http://127.0.0.1:9000",
    ])
    assert spec.source.uri == "s3://bucket/prefix"
    assert spec.run.max_error_rate == 0.1
    assert spec.source.extensions == [".png", ".jpg"]
    assert spec.storage.endpoint_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize("override, expected", [
    ("source.urls=x", "job.yaml (--set source.urls): source.urls: unknown key"),
    ("sourc.uri=x", "job.yaml (--set sourc.uri): sourc: unknown key"),  # the typo in the key's first part
    ("model.topk=0", "job.yaml (--set model.topk): model.topk: Input should be greater than or equal to 1"),
    ("noequals", "--set 'noequals': expected dotted.key=value"),
    ("name.first=x", "--set 'name.first=x': name is not a mapping"),
])
def test_bad_overrides_point_at_the_command_line(tmp_path, override, expected):
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, GOOD), [override])
    assert expected in str(info.value)


def test_an_error_in_the_file_keeps_its_line_beside_a_set_of_the_same_section(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, GOOD.replace("source:\n", "source:\n  table: {}\n  webdataset: {}\n", 1)),
                  ["source.recursive=false"])
    assert re.search(r"job.yaml:\d+: source: ", str(info.value)), info.value


def test_cli_validate_exit_codes_and_no_traceback(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", str(write(tmp_path, GOOD))])
    assert ok.exit_code == 0 and "ok" in ok.output
    bad = runner.invoke(main, ["validate", str(write(tmp_path, GOOD + "sinks: 1\n"))])
    assert bad.exit_code == 2
    assert "job.yaml:8: sinks: unknown key" in bad.output
    missing = runner.invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "cannot read job spec" in missing.output


def test_validate_as_a_user_runs_it(tmp_path):
    """A real process: exit code 2, one message on stderr, no traceback, neither torch nor ray loaded."""
    job = write(tmp_path, GOOD + "extra_key: 1\n")
    probe = ("import sys, runpy; sys.argv = ['imgclf', 'validate', %r]\n"
             "try:\n    runpy.run_module('imgclf_ray.cli', run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    print('loaded:', [m for m in ('torch', 'ray') if m in sys.modules]); raise") % str(job)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "extra_key: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "loaded: []" in proc.stdout


@pytest.mark.parametrize("job", sorted((REPO / "jobs").glob("*.yaml")) + [REPO / "jobs" / "loop" / "nightly.yaml"],
                         ids=lambda p: p.name)
def test_every_job_validates_and_can_be_pointed_elsewhere(job):
    spec = load_spec(job, ["source.uri=s3://other-bucket/images", "sink.uri=s3://other-bucket/out"])
    assert spec.source.uri == "s3://other-bucket/images" and spec.sink.uri == "s3://other-bucket/out"


def test_import_and_help_stay_light():
    probe = ("import sys, imgclf_ray, imgclf_ray.cli, imgclf_ray.runner.job, imgclf_ray.stages;"
             "print([m for m in ('torch', 'ray', 'torchvision') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("job", sorted((REPO / "jobs" / "train").glob("*.yaml")) + [
    REPO / "jobs" / "loop" / "train-seed.yaml", REPO / "jobs" / "loop" / "train.yaml"], ids=lambda p: p.name)
def test_every_training_spec_validates(job):
    result = CliRunner().invoke(main, ["validate", str(job), "--set", "data.uri=s3://other-bucket/labelled"])
    assert result.exit_code == 0 and "ok (training" in result.output and "s3://other-bucket/labelled" in result.output


def test_extension_names_are_checked_when_a_spec_is_validated_not_frozen_at_import(monkeypatch, tmp_path):
    """An unknown estimator, clustering algorithm or curation check is refused naming its key and
    the known names; one registered after import (a plugin) is accepted by the next spec."""
    from imgclf_ray import registry
    from imgclf_ray.errors import SpecError
    from imgclf_ray.spec import TrainSpec, load_spec

    job = REPO / "jobs" / "train" / "digits-svm-pixels.yaml"
    with pytest.raises(SpecError, match=r"model\.estimator\.name: unknown estimator 'ridge'; known: .*svm"):
        load_spec(job, ["model.estimator={name: ridge}"], TrainSpec)
    monkeypatch.setattr(registry.ESTIMATORS, "_items", dict(registry.ESTIMATORS._items))
    registry.ESTIMATORS.register("ridge")(registry.Estimator("sklearn.linear_model.RidgeClassifier"))
    assert load_spec(job, ["model.estimator={name: ridge}"], TrainSpec).model.estimator.name == "ridge"
    quick = REPO / "jobs" / "quickstart.yaml"
    with pytest.raises(SpecError, match=r"cluster\.algorithm: unknown clustering algorithm 'kmeanz'; known: .*kmeans"):
        load_spec(quick, ["cluster={algorithm: kmeanz}"])
    with pytest.raises(SpecError, match=r"curate\.checks\.1: unknown curation check 'shiny'; known: .*blurry"):
        load_spec(quick, ["curate={checks: [blurry, shiny]}"])
    assert load_spec(quick, ["curate={checks: [light, exact_duplicates]}"]).curate.checks == ["overexposed", "duplicate"]


def test_a_spec_with_two_problems_is_two_error_lines(tmp_path):
    from click.testing import CliRunner

    from imgclf_ray.cli import main

    job = tmp_path / "two.yaml"
    job.write_text("name: j\nsource: {uri: in, recursve: true}\nmodel: {uri: m, topk: 0}\nsink: {uri: o}\n")
    result = CliRunner().invoke(main, ["validate", str(job)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 2 and all(line.startswith("error: ") for line in lines), lines
    assert "source.recursve: unknown key" in lines[0] and "model.topk" in lines[1]


def test_an_unreachable_tracking_server_is_named_without_its_credential(monkeypatch):
    """A registry that does not answer was `API request to <value> failed with exception
    HTTPConnectionPool(host=<value>))` after four silent minutes (a newcomer's walk): the server is
    named, without its password, with what to check."""
    import socket

    from imgclf_ray.errors import UserError
    from imgclf_ray.models import mlflow_registry
    from imgclf_ray.spec import StorageSpec

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(UserError, match=rf"^MLflow registry: models:/x@champion: the tracking server at "
                                        rf"http://127.0.0.1:{port} could not be reached") as refused:
        mlflow_registry.resolve("models:/x@champion", f"http://svc:S3CRET@127.0.0.1:{port}", StorageSpec())
    assert "S3CRET" not in str(refused.value)
