"""``run.executor: auto`` (the default): Ray when there is a Ray to use, this process otherwise.

Ray when a cluster is named or running: ``run.ray_address`` (``--address``), ``RAY_ADDRESS`` (a job
that ``imgclf submit`` sent, whose driver runs on the cluster, has it), ``source.inventory`` (listed
and selected by Ray tasks), a Ray initialised in the calling process (the Python API reuses it), or
a Ray instance that ``ray start`` left running on this machine (the one ``ray.init()`` would join:
its address file under Ray's temporary folder, and its GCS port answering). Otherwise the local
executor: the same stages in this process and its decode workers, without Ray's start-up. The
choice and its reason end the summary's first line and are kept in ``_run_summary.json``;
``--ray`` / ``--local`` (``run.executor: ray | local``) force either (``--ray`` with no cluster
named joins a ``ray start`` instance of this machine too, else starts one for the run).

Nothing here imports Ray: choosing costs a file read and, at most, one TCP connection.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Optional

from imgclf_ray.spec import JobSpec


def _ray_temp_dir() -> str:
    """Where ``ray start`` writes the address ``ray.init()`` joins (Ray's own rule)."""
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        base = os.environ["TMPDIR"]
    else:
        base = "/tmp"
    return os.path.join(base, "ray")


def started_instance() -> tuple[Optional[str], str]:
    """(address, "") of the Ray instance ``ray start`` left running on this machine, or (None, why
    not: no address file, or nothing answers at its address)."""
    path = os.path.join(_ray_temp_dir(), "ray_current_cluster")
    try:
        with open(path) as fh:
            address = fh.read().strip()
    except OSError:
        return None, ""
    from imgclf_ray.runner.ray_setup import refused

    if refused(address, timeout=1.0) is None:
        return address, ""
    return None, f"the address in {path} does not answer: a Ray stopped without `ray stop`"


def _initialised() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


_GUARD = re.compile(r"""if\s+__name__\s*==\s*['"]__main__['"]""")


def _unguarded_script() -> bool:
    """Whether this process runs a Python script without ``if __name__ == "__main__":`` — whose
    top level the local executor's decode workers (started with spawn) would run again."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name.endswith("__main__"):
        return False  # python -m package: spawn never runs a package's __main__ again
    if not path or not str(path).endswith(".py"):
        return False  # a notebook, python -c, the imgclf command
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return False
    return not _has_guard(text)


def _has_guard(text: str) -> bool:
    """Whether a module's top level has ``if __name__ == "__main__":`` (either side, in parentheses
    or not); a comment or a string that says it is not one."""
    import ast

    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return bool(_GUARD.search(text))
    for node in tree.body:
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            sides = [test.left, test.comparators[0]]
            names = {s.id for s in sides if isinstance(s, ast.Name)}
            values = {s.value for s in sides if isinstance(s, ast.Constant)}
            if names == {"__name__"} and values == {"__main__"}:
                return True
    return False


def choose(spec: JobSpec) -> tuple[JobSpec, str]:
    """The spec with ``run.executor`` ray or local, and why (one line for the summary). Raises
    SpecError for ``local`` asked for by a script its spawned workers would run again."""
    run = spec.run
    if run.executor == "local" and _unguarded_script():
        from imgclf_ray.errors import SpecError

        raise SpecError("run.executor: local from a script without `if __name__ == \"__main__\":`: the local "
                        "executor's worker processes (spawned) would run its top level again; put the run under "
                        "the guard (docs/output.md), or leave run.executor at auto (Ray)")
    if run.executor == "ray" and not (run.ray_address or os.environ.get("RAY_ADDRESS") or _initialised()):
        address, _ = started_instance()
        if address:  # joined as ray.init() joins it ("auto": its token authentication found as Ray finds it)
            return _with(spec, "ray", "auto"), f"run.executor: ray, on the `ray start` instance of this machine ({address})"
    if run.executor != "auto":
        return spec, f"run.executor: {run.executor}"
    reason, address = None, run.ray_address
    if run.ray_address:
        reason = f"a Ray cluster is named (run.ray_address {run.ray_address})"
    elif os.environ.get("RAY_ADDRESS"):
        reason = "a Ray cluster is named (RAY_ADDRESS)"
    elif _initialised():
        reason = "Ray is initialised in this process"
    elif spec.source.inventory:
        reason = "source.inventory is listed and selected by Ray tasks"
    else:
        found, stale = started_instance()
        if found:
            address = "auto"  # joined as ray.init() joins it (its token authentication included)
            reason = f"a Ray instance started with `ray start` runs on this machine ({found})"
        elif _unguarded_script():
            reason = ("this script has no `if __name__ == \"__main__\":`, which the local executor's worker "
                      "processes need (they would run it again)")
        else:
            return _with(spec, "local", None), "no Ray cluster named or running" + (f"; {stale}" if stale else "")
    return _with(spec, "ray", address), reason


def _with(spec: JobSpec, executor: str, address: Optional[str]) -> JobSpec:
    run = spec.run.model_copy(update={"executor": executor, "ray_address": address})
    return spec.model_copy(update={"run": run})
