"""Ray head nodes a test starts and stops itself (`ray start --head` of this venv's Ray, on its
own ports and temp dir), beside the session's Ray instance: Ray Jobs (tests/test_submit.py) and
Ray's local autoscaling cluster (tests/test_autoscaling.py)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_ray_node(marker: str, grace: float = 3.0) -> None:
    """Stop exactly one Ray node: every process whose command line names its temp dir (GCS,
    raylet, dashboard, agents) or whose environment does (Ray's client server names neither in
    its command line, and outlives the node otherwise), and their children (workers). `ray stop`
    would also stop the test session's own Ray instance."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            named = [*(proc.info["cmdline"] or []), *(proc.info["environ"] or {}).values()]
            if proc.pid != os.getpid() and any(marker in a for a in named):
                found[proc.pid] = proc
                found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.Error:
            continue
    for proc in found.values():
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(found.values()), timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def autoscaling_config(gcs_port: int, head_cpus: int, node_types: dict) -> dict:
    """A cluster config for Ray's fake multi-node provider: worker nodes of ``node_types`` (autoscaler
    node types: resources, min_workers, max_workers) are raylets the autoscaler starts on this
    machine, their GPUs resource counts only. The fields are those of Ray's
    autoscaler/_private/fake_multi_node/example.yaml (which the wheel does not ship), the provider
    pointed at this head's port (its default is 6379)."""
    return {"cluster_name": "imgclf-fake", "max_workers": sum(t["max_workers"] for t in node_types.values()),
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}"},
            "available_node_types": {"ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {},
                                                          "max_workers": 0},
                                     **{name: {"node_config": {}, **t} for name, t in node_types.items()}},
            "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 1,
            "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": []}


@contextlib.contextmanager
def started_head(python_dir: Path, cpus: int = 2, memory: int = 150_000_000,
                 node_types: Optional[dict] = None, node_env: Optional[dict] = None):
    """A head node (`ray start --head` of this venv's Ray) with its dashboard (the Jobs API) on
    127.0.0.1 and token authentication on, its jobs' `python` the one in ``python_dir``; yields
    (dashboard address, environment with the token, temp dir), stopped after (every node: they all
    name the temp dir). Its jobs' decode tasks pass the ``decode_batch`` fault point
    (imgclf_ray.faults) while ``<temp>/hold.release`` exists, and wait there while it does not. With ``node_types``, an
    autoscaling head (Ray's fake multi-node provider, as ray.cluster_utils.AutoscalingCluster
    starts it; that class runs `ray stop --force`, which would stop the session's Ray too);
    ``node_env``: environment of every node's processes. The GCS address is in
    ``<temp>/ray_current_cluster``."""
    temp = tempfile.mkdtemp(prefix="imgclf-head-", dir="/tmp")  # short: Unix socket paths
    Path(temp, "hold.release").touch()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PATH": f"{python_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(name, None)
    dashboard, port = free_port(), free_port()
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
           f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
           f"--num-cpus={cpus}", f"--object-store-memory={memory}", f"--temp-dir={temp}",
           "--include-dashboard=true", "--disable-usage-stats"]
    held = {**env, "IMGCLF_BLOCK_AT": "decode_batch", "IMGCLF_BLOCK_FILE": f"{temp}/hold", **(node_env or {})}
    if node_types is not None:
        Path(temp, "cluster.json").write_text(json.dumps(autoscaling_config(port, cpus, node_types)))
        cmd.append(f"--autoscaling-config={temp}/cluster.json")
        held.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    try:
        started = subprocess.run(cmd, env=held, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{dashboard}", env, temp
    finally:
        stop_ray_node(temp)
        shutil.rmtree(temp, ignore_errors=True)
