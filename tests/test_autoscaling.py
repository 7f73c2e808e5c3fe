"""A GPU job on Ray's own local autoscaling cluster (its fake multi-node provider: worker nodes are
raylets the autoscaler starts on this machine, their GPUs resource counts): a CPU head, a CPU-only
worker group and a GPU group at zero replicas, as cluster/kuberay's RayCluster. Nothing but the
run's own GPU actor asks for a GPU node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.heads import started_head
from tests.support.jobs import digits_subset, read_run

pytestmark = [pytest.mark.slow, pytest.mark.ray]

NODE_TYPES = {
    "cpu": {"resources": {"CPU": 1, "object_store_memory": 100_000_000}, "min_workers": 1, "max_workers": 1},
    "gpu": {"resources": {"CPU": 2, "GPU": 1, "object_store_memory": 100_000_000}, "min_workers": 0, "max_workers": 1},
}

JOB = """\
name: autoscaled
source: {{uri: {archive}, extensions: [".png"]}}
model: {{uri: {model}}}
resources: {{gpus: 1, gpu_wait: 240}}
run: {{executor: ray}}
sink: {{uri: {sink}}}
"""

STATE = """\
import json, sys
from ray.util.state import list_actors, list_nodes
nodes = {n.node_id: n.resources_total for n in list_nodes(address=sys.argv[1], detail=True, limit=100)}
actors = [a for a in list_actors(address=sys.argv[1], detail=True, limit=1000) if "PredictStage" in a.class_name]
print(json.dumps({"nodes": nodes, "predictors": [nodes.get(a.node_id, {}) for a in actors]}))
"""


def test_a_gpu_job_on_a_cpu_head_starts_the_zero_replica_gpu_group_and_predicts_there(digits_archive, tiny_model,
                                                                                     tmp_path):
    archive = tmp_path / "archive"
    digits_subset(digits_archive, archive, 12)
    n = sum(1 for _ in archive.rglob("*.png"))
    spec = tmp_path / "job.yaml"
    spec.write_text(JOB.format(archive=archive, model=tiny_model, sink=tmp_path / "out"))
    # The fake GPU is a count: the predictor Ray places on it computes on this CPU (imgclf_ray.faults).
    with started_head(Path(sys.executable).parent, cpus=2, memory=100_000_000, node_types=NODE_TYPES,
                      node_env={"IMGCLF_FAKE_GPUS": "1"}) as (dashboard, env, temp):
        gcs = Path(temp, "ray_current_cluster").read_text().strip()
        done = subprocess.run([sys.executable, "-m", "imgclf_ray", "run", str(spec), "--address", gcs,
                               "--run-id", "scaled", "-q"], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=400)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        state = json.loads(subprocess.run([sys.executable, "-c", STATE, dashboard], env=env, capture_output=True,
                                          text=True, timeout=120, check=True).stdout)
    # Planned for the declared GPU although the cluster had none: one GPU actor, whose pending demand
    # made the autoscaler start the GPU group's node; the predictor ran there, beside a CPU-only node.
    plan = json.loads((tmp_path / "out" / "scaled" / "_manifest.json").read_text())["plan"]
    assert plan["present_gpus"] == 0 and plan["cluster_gpus"] == 1 and plan["gpus_per_actor"] == 1, plan
    assert [r.get("GPU") for r in state["predictors"]] and all(r.get("GPU") == 1 for r in state["predictors"])
    assert sorted(r.get("GPU", 0) for r in state["nodes"].values()) == [0, 0, 1]  # head, cpu worker, gpu worker
    rows = read_run(str(tmp_path / "out"), "scaled")
    assert len(rows) == n and {r["status"] for r in rows} == {"ok"}
