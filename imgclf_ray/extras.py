"""Optional parts of imgclf and the pip extra that installs each: one clear message when missing."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from imgclf_ray.errors import UserError

# extra -> (module that marks it installed, what needs it)
EXTRAS = {
    "dicom": ("pydicom", "DICOM files"),
    "video": ("av", "PyAV, for video sources"),
    "report": ("matplotlib", "imgclf report's charts"),
    "delta": ("deltalake", "sink.format: delta"),
    "models": ("timm", "models from timm and Hugging Face"),
    "mlflow": ("mlflow", "the MLflow model registry"),
}


def pip_install(extra: str) -> str:
    """The command that adds ``extra`` to this installation: for one from a checkout (the README's
    ``pip install -e .``), ``<python> -m pip install -e '<checkout>[extra]'``; else the same from
    the source it was installed from."""
    import shlex
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return f"{shlex.quote(sys.executable)} -m pip install -e {shlex.quote(f'{checkout}[{extra}]')}"
    # (not "pip install imgclf-ray[...]": the project is not published under that name, and
    # whatever someone publishes there is not it)
    return f"reinstall imgclf-ray from its source with the extra (pip install '<its folder or wheel>[{extra}]')"


def message(extra: str, module: str | None = None) -> str:
    marker, what = EXTRAS[extra]
    return f"{module or marker} is not installed ({what}): {pip_install(extra)}"


def installed(extra: str) -> bool:
    """Whether the extra's marker module can be imported (looked up, not imported)."""
    name = EXTRAS[extra][0]
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def require(extra: str, module: str | None = None, error: type[Exception] = UserError) -> ModuleType:
    """``module`` (the extra's marker module by default), or ``error`` saying which extra installs it."""
    name = module or EXTRAS[extra][0]
    try:
        return importlib.import_module(name)
    except ImportError:
        raise error(message(extra, name)) from None
