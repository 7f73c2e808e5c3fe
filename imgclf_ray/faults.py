"""Named points where the guarantees tests inject a fault into a real driver or worker. Unset
(always, outside those tests), a point does nothing.

- ``IMGCLF_KILL_AT=<point>``: the process kills itself with SIGKILL there, as an OOM killer or a
  lost node would, so a test can check what the next run makes of what it left.
- ``IMGCLF_BLOCK_AT=<point>`` and ``IMGCLF_BLOCK_FILE=<path>``: the first process to reach the
  point creates ``<path>.reached`` and waits there until ``<path>.release`` exists (others reaching
  it wait too), so a test can signal a driver at a known step without guessing a time. Files, not
  pipes: the point may be in a spawned decode worker or a Ray worker.
- ``IMGCLF_FAKE_GPUS=1``: a GPU that Ray grants a predictor actor where none is behind it (Ray's
  fake multi-node autoscaling cluster, whose "GPU" is a resource count) is this CPU, so that a
  test can run the GPU plan, the autoscaler's GPU nodes included, on a machine without one.
"""

from __future__ import annotations

import os
import signal
import time

POINTS = ("after_write", "after_state", "commit_file_moved", "commit_moved", "commit_manifest", "commit_success", "after_commit",
          "decode_worker",  # a local run's decode worker process, not the driver
          "decode_batch",  # a decode batch, in whichever process or worker runs it
          "predict_batch",  # a predictor's batch, in the actor (or the local run's process)
          "ray_started",  # ensure_ray, Ray's processes started
          "review_batch",  # review select/gold: the batch's files written, its record not yet
          "review_ingest",  # review ingest: the answers checked, their file not written yet
          "promote_alias",  # model promote: the evidence recorded on the version, the alias not moved yet
          "promote_moved")  # model promote: the alias moved, the version's decision not yet "promoted"


def point(name: str) -> None:
    if os.environ.get("IMGCLF_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("IMGCLF_BLOCK_AT") == name:
        flag = os.environ["IMGCLF_BLOCK_FILE"]
        with open(flag + ".reached", "a"):
            pass
        while not os.path.exists(flag + ".release"):
            time.sleep(0.05)


def device(name: str) -> str:
    """The device a predictor asked for ``name`` uses (IMGCLF_FAKE_GPUS: cuda is the CPU)."""
    if name.startswith("cuda") and os.environ.get("IMGCLF_FAKE_GPUS") == "1":
        return "cpu"
    return name
