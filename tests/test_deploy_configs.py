"""cluster/ and infra/: every file parses and names images, commands and job specs that exist."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from imgclf_ray.cli import main
from tests.conftest import REPO

IMAGES = {"imgclf-ray:cpu": REPO / "infra" / "Dockerfile", "imgclf-ray:cuda": REPO / "infra" / "Dockerfile.cuda"}
YAMLS = sorted((REPO / "cluster").rglob("*.yaml")) + [REPO / "infra" / "docker-compose.yaml"]


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _images(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in ("image", "worker_image") and isinstance(v, str)] + \
            [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_parses_and_its_images_are_built_here(path):
    docs = _docs(path)
    assert docs
    ours = [i for i in _images(docs) if i.startswith("imgclf-ray")]
    if path.name == "nightly-cronjob.yaml":  # it submits rayjob.yaml, which names the image
        assert "--from-file=cluster/kuberay/rayjob.yaml" in path.read_text()
    else:
        assert ours, "names an imgclf-ray image"
    for image in ours:
        assert image in IMAGES and IMAGES[image].exists(), image
        assert f"-t {image}" in IMAGES[image].read_text()  # the Dockerfile says it builds that tag
    text = path.read_text()
    assert not re.search(r"(?i)(secret|password|aws_secret_access_key)\s*:\s*['\"]?[A-Za-z0-9/+]{8,}", text)


def test_dockerfiles_copy_what_exists_and_pin_the_same_torch():
    pins = re.findall(r'"(torch(?:vision)?==[\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert len(pins) == 2
    for dockerfile in IMAGES.values():
        text = dockerfile.read_text()
        for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
            for item in src.split():
                assert (REPO / item).exists(), item
        for pin in pins:
            assert pin in text
        assert 'CMD ["imgclf"' in text


def _entrypoint_args(entrypoint: str) -> list[str]:
    args = shlex.split(entrypoint)
    assert args[:2] == ["imgclf", "run"]
    keep, skip = [], {"--quiet": 0, "--address": 1, "--run-id": 1, "--date": 1}
    it = iter(args[2:])
    for a in it:
        if a in skip:
            for _ in range(skip[a]):
                next(it)
        else:
            keep.append(a)
    return keep


def test_rayjob_entrypoint_is_a_valid_imgclf_run():
    job = _docs(REPO / "cluster" / "kuberay" / "rayjob.yaml")[0]
    assert job["kind"] == "RayJob"
    args = _entrypoint_args(job["spec"]["entrypoint"])
    assert (REPO / args[0]).exists()
    result = CliRunner().invoke(main, ["validate", *args])
    assert result.exit_code == 0, result.output


def test_nightly_cronjob_creates_one_dated_rayjob_that_runs_once_per_date():
    cron = _docs(REPO / "cluster" / "kuberay" / "nightly-cronjob.yaml")[0]
    assert cron["kind"] == "CronJob" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cron["spec"]["schedule"].split()) == 5
    script = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    rayjob = (REPO / "cluster" / "kuberay" / "rayjob.yaml").read_text()
    out = rayjob
    for old, new in re.findall(r'-e "s/([^/]+)/([^/]+)/"', script):
        assert old in rayjob, f"the CronJob's substitution {old!r} matches nothing in rayjob.yaml"
        out = out.replace(old, new.replace("$NIGHT", "2026-11-29"))
    job = yaml.safe_load(out)
    assert job["metadata"]["name"] == "imgclf-nightly-2026-11-29"
    assert "--date 2026-11-29" in job["spec"]["entrypoint"]  # run id <name>-2026-11-29, once


def test_cluster_launcher_and_compose_are_consistent():
    aws = _docs(REPO / "cluster" / "aws.yaml")[0]
    assert aws["head_node_type"] in aws["available_node_types"]
    assert {"cpu_workers", "gpu_workers"} <= set(aws["available_node_types"])
    compose = _docs(REPO / "infra" / "docker-compose.yaml")[0]
    assert {"minio", "ray-head", "ray-worker"} <= set(compose["services"])
    assert (REPO / compose["services"]["ray-head"]["build"]["dockerfile"]).exists()
    lifecycle = json.loads((REPO / "infra" / "s3-lifecycle.json").read_text())
    assert any("AbortIncompleteMultipartUpload" in rule for rule in lifecycle["Rules"])
