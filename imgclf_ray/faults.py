"""Named points where the guarantees tests kill the driver (``IMGCLF_KILL_AT=<point>``): the process
is killed with SIGKILL there, as an OOM killer or a lost node would, so a test can check what the
next run makes of what it left. Unset (always, outside those tests), a point does nothing."""

from __future__ import annotations

import os
import signal

POINTS = ("after_write", "after_state", "commit_moved", "commit_manifest", "commit_success", "after_commit",
          "decode_worker")  # the last: a local run's decode worker process, not the driver


def point(name: str) -> None:
    if os.environ.get("IMGCLF_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
