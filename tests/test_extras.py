"""`make demo` installs the runtime dependencies only: without the extras (pydicom, PyAV,
matplotlib, deltalake, timm, mlflow) imgclf still imports, validates and decodes, and what needs an extra
says which one — a clear error row or one error line, never an ImportError."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WITHOUT_EXTRAS = textwrap.dedent("""
    import sys
    for name in ("pydicom", "av", "matplotlib", "deltalake", "timm", "transformers", "onnxruntime", "mlflow"):
        sys.modules[name] = None  # import fails as if not installed
    from pathlib import Path
    import imgclf_ray.cli, imgclf_ray.runner.job, imgclf_ray.stages, imgclf_ray.api  # noqa: F401
    from imgclf_ray.spec import load_spec, parse_spec
    from imgclf_ray.errors import SpecError, UserError
    from imgclf_ray.imaging.decode import DecodeError, decode_image
    from imgclf_ray.spec import DecodeSpec

    load_spec(Path({repo!r}) / "jobs" / "quickstart.yaml")
    dicom = bytes(128) + b"DICM" + bytes(64)
    try:
        decode_image(dicom, DecodeSpec())
    except DecodeError as exc:
        print("dicom:", exc)
    base = {{"name": "j", "source": {{"uri": "/a"}}, "sink": {{"uri": "/o"}}}}
    for extra in ({{"source": {{"uri": "/a", "video": {{}}}}}},
                  {{"decode": {{"dicom_attributes": ["Modality", "Rows"]}}}}):
        try:
            parse_spec({{**base, **extra}}, "job.yaml")
        except SpecError as exc:
            print("spec:", exc)
    from imgclf_ray.io import sink
    try:
        sink.check_format("/nonexistent", "delta")
    except UserError as exc:
        print("delta:", exc)
    from imgclf_ray.runner.plan import registered_model
    try:
        registered_model(parse_spec({{**base, "model": {{"uri": "models:/digits@champion",
                                                          "tracking_uri": "sqlite:////srv/mlflow.db"}}}}, "job.yaml"))
    except UserError as exc:
        print("mlflow:", exc)
""")


def test_the_runtime_works_without_the_extras_and_names_them():
    proc = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS.format(repo=str(REPO))],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    # Installed from this checkout (pip install -e .): the command that adds the extra to it.
    install = lambda extra: f"-m pip install -e '{REPO}[{extra}]'"  # noqa: E731
    assert any(line.startswith("dicom:") and install("dicom") in line for line in lines), proc.stdout
    assert any("source.video" in line and install("video") in line for line in lines), proc.stdout
    assert any("decode.dicom_attributes: pydicom is not installed" in line and install("dicom") in line
               for line in lines), proc.stdout
    assert any(line.startswith("delta:") and install("delta") in line for line in lines), proc.stdout
    assert any(line.startswith("mlflow:") and install("mlflow") in line for line in lines), proc.stdout


def test_the_install_hint_outside_a_checkout_names_no_package_index_name(monkeypatch, tmp_path):
    """Installed from a wheel or a copy (no pyproject.toml above the package): the hint says to
    reinstall from that source — never `pip install imgclf-ray[...]`, a name the project does not
    publish (whatever someone publishes under it is not this project)."""
    import shlex

    from imgclf_ray import extras

    assert shlex.split(extras.pip_install("report"))[-1] == f"{REPO}[report]"  # (a checkout: quoted for a shell)
    monkeypatch.setattr(extras, "__file__", str(tmp_path / "site-packages" / "imgclf_ray" / "extras.py"))
    hint = extras.pip_install("report")
    assert hint == "reinstall imgclf-ray from its source with the extra (pip install '<its folder or wheel>[report]')"
