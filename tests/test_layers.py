"""The layering of pyproject.toml's [tool.importlinter] contracts holds: no import cycle, the
configuration imports nothing of the runtime, stages and below never import the runner or the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "0 broken" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_registries_validate_names_without_importing_the_code_behind_them():
    code = ("import sys; from imgclf_ray.spec import parse_spec; "
            "parse_spec({'name': 'j', 'source': {'uri': '/a'}, 'sink': {'uri': '/o'}, "
            "'cluster': {'algorithm': 'kmeans', 'features': {'name': 'hog'}}}, 'job.yaml'); "
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'imgclf_ray.models', 'ray'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]


def test_both_executors_implement_the_engine_contract():
    """mypy checks RayEngine and LocalEngine against runner/engine.py's protocols
    (runner/conformance.py assigns both to Engine): a signature that drifts fails here."""
    mypy = Path(sys.executable).with_name("mypy")
    proc = subprocess.run([str(mypy), "--no-site-packages", "--ignore-missing-imports", "--follow-imports=silent",
                           "--no-error-summary", "--cache-dir=/dev/null", "imgclf_ray/runner/conformance.py"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
