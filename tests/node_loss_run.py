"""A run on a local three-node Ray cluster (``ray.cluster_utils.Cluster``, resources planned as
for any cluster) that loses the node holding a predictor actor mid-run (a replacement node joins
a few seconds later). Run by tests/test_node_loss.py in a process of its own (the
test session has its own Ray instance); writes what happened to REPORT as JSON (stdout is Ray's:
its log lines arrive until shutdown).

    python -m tests.node_loss_run ARCHIVE MODEL SINK REPORT
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def main(archive: str, model: str, sink_uri: str, report: str) -> None:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from imgclf_ray.io.listing import list_archive
    from imgclf_ray.runner.ray_setup import ensure_ray
    from imgclf_ray.runner.job import execute
    from imgclf_ray.spec import parse_spec

    # Every decode task waits at a fault point until the node is gone (imgclf_ray.faults): the loss
    # comes while all the work remains, whatever the machine's speed. Set before the nodes start,
    # so that their workers inherit it.
    flag = report + ".block"
    os.environ.update(IMGCLF_BLOCK_AT="decode_batch", IMGCLF_BLOCK_FILE=flag)
    # The head runs the driver only: the work, and so the loss, is on two 2-CPU worker nodes.
    # The GCS checks each node every second (Ray's default: every 3 s, dead after 5 misses): the
    # lost node is marked dead in seconds.
    # Its own ports: a `ray start` elsewhere on this machine holds Ray's defaults (6379, 8265).
    from tests.support.heads import free_port as _free_port

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 150_000_000, "gcs_server_port": _free_port(), "dashboard_port": _free_port(),
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
    workers = [cluster.add_node(num_cpus=2, object_store_memory=150_000_000) for _ in range(2)]
    cluster.wait_for_nodes()
    ensure_ray(cluster.address)
    spec = parse_spec({"name": "node-loss", "source": {"uri": archive, "extensions": [".png"]},
                       "model": {"uri": model}, "run": {"executor": "ray"},
                       "sink": {"uri": sink_uri}}, "<node-loss>")
    manifest = list_archive(spec.source)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = execute(spec, manifest, "loss-1")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = exc

    # The run goes in a thread; this (main) thread removes the node of a predictor actor while
    # the decode tasks wait, then adds a replacement, as KubeRay or the cluster launcher would (Ray
    # needs the main thread to start a node), then lets the tasks go. Ray Data does not shrink a
    # pool while an actor restart waits for room, so on a cluster that stays smaller the run would
    # wait for capacity.
    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    by_id = {w.node_id: w for w in workers}
    victim, deadline = None, time.monotonic() + 240
    while victim is None and runner.is_alive() and time.monotonic() < deadline:
        try:
            actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True)
        except Exception:  # noqa: BLE001 - the state API may not answer yet
            actors = []
        if os.path.exists(flag + ".reached"):
            victim = next((a.node_id for a in actors if "PredictStage" in a.class_name and a.node_id in by_id), None)
        if victim is None:
            time.sleep(0.2)
    dead = victim is not None and replace_node(cluster, by_id[victim], victim)
    open(flag + ".release", "w").close()
    runner.join(timeout=400)
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    with open(report, "w") as fh:
        json.dump({"listed": manifest.num_rows, "rows": result.rows, "by_status": result.by_status,
                   "removed": victim is not None, "marked_dead": dead,
                   "alive_nodes": sum(1 for n in ray.nodes() if n["Alive"])}, fh)
    ray.shutdown()
    cluster.shutdown()


def replace_node(cluster, node, node_id: str) -> bool:
    """Kill ``node``, wait until Ray marks it dead (until the GCS's health check does, Ray still
    counts it alive, and the run may finish before it does: an event, bounded), then add a
    replacement; whether it was marked dead."""
    import ray

    cluster.remove_node(node, allow_graceful=False)
    dead, deadline = False, time.monotonic() + 120
    while not dead and time.monotonic() < deadline:
        dead = not any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())
        if not dead:
            time.sleep(0.2)
    cluster.add_node(num_cpus=2, object_store_memory=150_000_000)
    return dead


if __name__ == "__main__":
    main(*sys.argv[1:5])
