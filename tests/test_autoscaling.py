"""A GPU job on Ray's own local autoscaling cluster (its fake multi-node provider: worker nodes are
raylets the autoscaler starts on this machine, their GPUs resource counts): a CPU head, a CPU-only
worker group and a GPU group at zero replicas, as cluster/kuberay's RayCluster. Nothing but the
run asks for GPU nodes."""

from __future__ import annotations

import json
import subprocess
import sys
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


def test_gpu_actors_that_never_come_fail_the_run_after_gpu_wait_committing_nothing(ray_session, tiny_model, tmp_path):
    """No autoscaler here (the session's one-node Ray): a GPU actor beyond the node's GPUs never starts."""
    import ray

    from imgclf_ray.errors import RunFailed
    from imgclf_ray.io.listing import list_archive
    from imgclf_ray.runner.job import execute
    from imgclf_ray.spec import parse_spec

    archive = tmp_path / "archive"
    archive.mkdir()
    Image.new("RGB", (8, 8)).save(archive / "a.png")
    present = int(ray.cluster_resources().get("GPU", 0))  # none here; a GPU machine's session has some
    spec = parse_spec({"name": "nogpu", "source": {"uri": str(archive)}, "model": {"uri": tiny_model},
                       "resources": {"gpus": present + 1, "gpu_wait": 2}, "run": {"executor": "ray"},
                       "sink": {"uri": str(tmp_path / "out")}}, "<test>")
    actors = f"{present + 1} GPU actor{'s' * (present > 0)}"
    with pytest.raises(RunFailed, match=rf"resources.gpus: {actors} planned, not all up after "
                                        rf"resources.gpu_wait \(2 s; the cluster had {present} GPUs"):
        execute(spec, list_archive(spec.source), "nogpu")
    assert not (tmp_path / "out" / "nogpu" / "_SUCCESS").exists()
