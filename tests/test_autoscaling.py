"""A GPU job on Ray's own local autoscaling cluster (its fake multi-node provider: worker nodes are
raylets the autoscaler starts on this machine, their GPUs resource counts): a CPU head, a CPU-only
worker group and a GPU group at zero replicas, as cluster/kuberay's RayCluster. Nothing but the
run asks for GPU nodes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO
from tests.support.heads import started_head
from tests.support.jobs import digits_subset, read_run

pytestmark = [pytest.mark.slow, pytest.mark.ray]

NODE_TYPES = {
    "cpu": {"resources": {"CPU": 1, "object_store_memory": 100_000_000}, "min_workers": 1, "max_workers": 1},
    "gpu": {"resources": {"CPU": 2, "GPU": 1, "object_store_memory": 100_000_000}, "min_workers": 0, "max_workers": 2},
}

JOB = """\
name: autoscaled
source: {{uri: {archive}, extensions: [".png"]}}
model: {{uri: {model}}}
resources: {{gpus: 2, gpu_wait: 240, batch_size: 4, decode_batch_size: 4}}
run: {{executor: ray}}
sink: {{uri: {sink}}}
"""

# The run's predictor actors, each with the GPUs of the node it is on (Ray's state API).
PREDICTORS = """\
import json, sys
from ray.util.state import list_actors, list_nodes
nodes = {n.node_id: n.resources_total for n in list_nodes(address=sys.argv[1], detail=True, limit=100)}
actors = [a for a in list_actors(address=sys.argv[1], detail=True, limit=1000) if "PredictStage" in a.class_name]
print(json.dumps({"nodes": list(nodes.values()), "predictors": [[a.state, nodes.get(a.node_id, {}).get("GPU", 0)] for a in actors]}))
"""


def test_a_gpu_job_on_a_cpu_head_starts_every_planned_gpu_node_from_zero_and_predicts_on_each(
        digits_archive, tiny_model, tmp_path):
    archive = tmp_path / "archive"
    digits_subset(digits_archive, archive, 12)
    n = sum(1 for _ in archive.rglob("*.png"))
    spec = tmp_path / "job.yaml"
    spec.write_text(JOB.format(archive=archive, model=tiny_model, sink=tmp_path / "out"))
    hold = tmp_path / "hold"
    # The fake GPU is a count: the predictor Ray places on it computes on this CPU (imgclf_ray.faults).
    # Each predictor waits at its first batch (a blocking fault point) until the test has seen both:
    # work remains queued meanwhile, however fast the machine.
    node_env = {"IMGCLF_FAKE_GPUS": "1", "IMGCLF_BLOCK_AT": "predict_batch", "IMGCLF_BLOCK_FILE": str(hold)}
    with started_head(Path(sys.executable).parent, cpus=2, memory=100_000_000, node_types=NODE_TYPES,
                      node_env=node_env) as (dashboard, env, temp):
        gcs = Path(temp, "ray_current_cluster").read_text().strip()
        with open(tmp_path / "run.out", "w") as out:  # a file, not a pipe nobody reads while the test waits
            run = subprocess.Popen([sys.executable, "-m", "imgclf_ray", "run", str(spec), "--address", gcs,
                                    "--run-id", "scaled", "-q"], env=env, cwd=REPO, stdout=out, stderr=out)
        try:
            deadline, state = time.monotonic() + 240, {"predictors": []}
            while sum(s == "ALIVE" and g == 1 for s, g in state["predictors"]) < 2 and time.monotonic() < deadline:
                assert run.poll() is None, (tmp_path / "run.out").read_text()[-3000:]
                time.sleep(1)
                state = json.loads(subprocess.run([sys.executable, "-c", PREDICTORS, dashboard], env=env, text=True,
                                                  capture_output=True, timeout=120, check=True).stdout)
        finally:
            hold.with_suffix(".release").touch()
            try:
                run.wait(timeout=300)
            finally:
                run.kill()
    assert run.returncode == 0, (tmp_path / "run.out").read_text()[-3000:]
    # Planned for the declared GPUs although the cluster had none; the run's pending GPU actors made
    # the autoscaler start both GPU nodes of the group; a predictor on each, none on the CPU-only nodes.
    plan = json.loads((tmp_path / "out" / "scaled" / "_manifest.json").read_text())["plan"]
    assert plan["present_gpus"] == 0 and plan["cluster_gpus"] == 2 and plan["actors"] == 2, plan
    assert sorted(g for s, g in state["predictors"] if s == "ALIVE") == [1, 1], state
    assert sorted(r.get("GPU", 0) for r in state["nodes"]) == [0, 0, 1, 1], state  # head, cpu, gpu, gpu
    rows = read_run(str(tmp_path / "out"), "scaled")
    assert len(rows) == n and {r["status"] for r in rows} == {"ok"}


def test_gpu_actors_that_never_come_fail_the_run_after_gpu_wait_committing_nothing(tiny_model, tmp_path):
    """A Ray of its own without an autoscaler (a GPU actor beyond its GPUs never starts), in a
    process of its own: the standing request for that GPU would stay with the session's Ray and
    its autoscaler would print about it into later tests' output."""
    import os

    archive = tmp_path / "archive"
    archive.mkdir()
    Image.new("RGB", (8, 8)).save(archive / "a.png")
    job = tmp_path / "job.yaml"
    job.write_text(f"name: nogpu\nsource: {{uri: {archive}}}\nmodel: {{uri: {tiny_model}}}\n"
                   f"resources: {{gpus: 8, gpu_wait: 2}}\nrun: {{executor: ray}}\nsink: {{uri: {tmp_path / 'out'}}}\n")
    raytmp = tempfile.mkdtemp(prefix="imgclf-rt-", dir="/tmp")  # short: Unix socket paths
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": raytmp}
    try:
        done = subprocess.run([sys.executable, "-m", "imgclf_ray", "run", str(job), "--run-id", "nogpu", "-q"],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(raytmp, ignore_errors=True)
    # One error line (after the quiet run's progress lines): Ray Data's own error, with its
    # traceback, goes to the session's log only.
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and lines[-1] == (
        "error: resources.gpus: 8 GPU actors planned, not all up after resources.gpu_wait (2 s; the cluster had "
        "0 GPUs when the run started): no GPU node joined, or too few; nothing was committed"), done.stderr[-3000:]
    assert all(line.startswith("classify: ") for line in lines[:-1]), done.stderr[-3000:]
    assert not (tmp_path / "out" / "nogpu" / "_SUCCESS").exists()
