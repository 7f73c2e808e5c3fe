"""A run on a local three-node Ray cluster (``ray.cluster_utils.Cluster``, resources planned as
for any cluster) that loses the node holding a predictor actor mid-run. Run by tests/test_node_loss.py in a process of its own (the
test session has its own Ray instance); writes what happened to REPORT as JSON (stdout is Ray's:
its log lines arrive until shutdown).

    python -m tests.node_loss_run ARCHIVE MODEL SINK REPORT
"""

from __future__ import annotations

import json
import sys
import threading
import time


def main(archive: str, model: str, sink_uri: str, report: str) -> None:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from imgclf_ray.io.listing import list_archive
    from imgclf_ray.pipeline import ensure_ray, execute
    from imgclf_ray.spec import parse_spec

    # The head runs the driver only: the work, and so the loss, is on two 2-CPU worker nodes.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 150_000_000})
    workers = [cluster.add_node(num_cpus=2, object_store_memory=150_000_000) for _ in range(2)]
    cluster.wait_for_nodes()
    ensure_ray(cluster.address)
    spec = parse_spec({"name": "node-loss", "source": {"uri": archive, "extensions": [".png"]},
                       "model": {"uri": model},
                       "sink": {"uri": sink_uri}}, "<node-loss>")
    manifest = list_archive(spec.source)
    removed: dict = {}

    def kill_a_predictor_node() -> None:
        """Once a predictor actor is alive on a worker node, remove that node (its raylet, the
        actor, any decode task and object copies on it)."""
        by_id = {w.node_id: w for w in workers}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not removed:
            try:
                actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True)
            except Exception:  # noqa: BLE001 - the state API may not answer yet
                actors = []
            for actor in actors:
                if "PredictStage" in actor.class_name and actor.node_id in by_id:
                    time.sleep(2.0)  # let it take some batches first
                    cluster.remove_node(by_id[actor.node_id], allow_graceful=False)
                    removed.update(node=actor.node_id, at=time.monotonic())
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_predictor_node, daemon=True)
    killer.start()
    started = time.monotonic()
    result = execute(spec, manifest, "loss-1")
    killer.join(timeout=1)
    with open(report, "w") as fh:
        json.dump({"listed": manifest.num_rows, "rows": result.rows, "by_status": result.by_status,
                   "removed": bool(removed), "removed_after_s": round(removed.get("at", started) - started, 1),
                   "seconds": round(time.monotonic() - started, 1),
                   "alive_nodes": sum(1 for n in ray.nodes() if n["Alive"])}, fh)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])
