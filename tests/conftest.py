"""Session-wide real services: one local Ray instance, one moto S3 server on 127.0.0.1.

Dummy AWS credentials are set before Ray starts so that its worker processes inherit them.
"""

from __future__ import annotations

import os
import tempfile
import urllib.request
from pathlib import Path

import pytest

for _key, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ[_key] = _value
os.environ.pop("AWS_PROFILE", None)
# Folders of the session's own, which its processes inherit: ONNX exports (model.runtime:
# onnxruntime), the runs' log files (-q: their pruning keeps 10), and Ray's temp folder (RAY_TMPDIR:
# the address file `ray_current_cluster` of a Ray a test starts — the node-loss cluster — would
# otherwise be where every other driver on this machine looks, and joins). Under pytest-xdist each
# worker is a session: it makes its own rather than take the controller's (IMGCLF_SUITE_MADE).
# A folder the user set is kept, with a worker's own folder inside it.
_OURS = set(filter(None, os.environ.get("IMGCLF_SUITE_MADE", "").split(",")))
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
_MADE = []
for _key, _prefix in (("IMGCLF_CACHE", "imgclf-cache-"), ("IMGCLF_LOG_DIR", "imgclf-logs-"), ("RAY_TMPDIR", "imgclf-ray-")):
    if _key not in os.environ or _key in _OURS or _WORKER:
        _inside = os.environ[_key] if _key in os.environ and _key not in _OURS else None  # the user's
        _short = "/tmp" if _key == "RAY_TMPDIR" and not _inside else _inside  # (Ray's Unix socket paths)
        if _inside:
            os.makedirs(os.path.expanduser(_inside), exist_ok=True)
            _short = os.path.expanduser(_inside)
        os.environ[_key] = tempfile.mkdtemp(prefix=f"{_WORKER}-" if _inside else _prefix, dir=_short)
        _MADE.append(os.environ[_key])
        if not _inside:
            _OURS.add(_key)
os.environ["IMGCLF_SUITE_MADE"] = ",".join(sorted(_OURS))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("RAY_ADDRESS", None)

REPO = Path(__file__).resolve().parents[1]


def _ray_token() -> None:
    """Ray's token (~/.ray/auth_token, token authentication being on by default) made once, before
    any worker starts: two sessions' first ray.init() on a fresh machine would each write one.
    Where it cannot be made, Ray makes it as it would have."""
    if _WORKER or os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    if not (Path.home() / ".ray" / "auth_token").exists():
        try:
            from ray._private.authentication.authentication_token_setup import generate_and_save_token

            generate_and_save_token()
        except Exception:  # noqa: BLE001 - (a home that cannot be written: each ray.init() tries its own)
            pass


_ray_token()

from tests.support.heads import free_port as _free_port  # noqa: E402 - (after the environment above)


def pytest_sessionfinish(session, exitstatus):
    """The session's cache and log folders go with a passing session (a failing one keeps its logs)."""
    import shutil

    if exitstatus == 0:
        for folder in _MADE:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.hookimpl(trylast=True)  # (after --ff, --nf, --sw and -p randomly have ordered them)
def pytest_collection_modifyitems(config, items):
    for item in [i for i in items if i.get_closest_marker("module_last")]:  # (it takes its module's fixture away)
        items.remove(item)
        after = max((k for k, i in enumerate(items) if i.path == item.path), default=len(items) - 1)
        items.insert(after + 1, item)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _own_onnx_cache(tmp_path_factory, monkeypatch):
    """Each test's driver (and the processes it starts) an ONNX export cache of its own: with an
    export found made, model.runtime: auto takes ONNX Runtime at any size, so one test's export
    would change what a later test runs. The session's Ray workers keep the session's cache (a
    run ships its driver's export to them)."""
    monkeypatch.setenv("IMGCLF_CACHE", str(tmp_path_factory.mktemp("onnx-cache")))


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray instance for the whole session (2 CPUs, like the CI machine)."""
    import ray

    from imgclf_ray.runner.ray_setup import ensure_ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ensure_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def moto_server():
    """A real S3 API (moto) on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_server):
    """An s3fs filesystem on a fresh moto state with bucket 'archive' and 'output'."""
    import s3fs

    req = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    urllib.request.urlopen(req).close()
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=moto_server, use_listings_cache=False)
    fs.mkdir("archive")
    fs.mkdir("output")
    return fs


@pytest.fixture(scope="session")
def sample_photo():
    """A real photograph scikit-learn ships (427x640 RGB), as a Pillow image."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    return Image.fromarray(load_sample_images().images[0])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A seeded, untrained resnet18 artifact with 10 labels on 32-px inputs (fast to build)."""
    import torch

    from imgclf_ray.models.artifact import save_artifact
    from imgclf_ray.models.torch_classifier import build_network

    torch.manual_seed(0)
    net = build_network("resnet18", 10)
    uri = str(tmp_path_factory.mktemp("model"))
    save_artifact(uri, {
        "architecture": "resnet18",
        "labels": [f"class{i}" for i in range(10)],
        "preprocess": {"resize": 36, "crop": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3},
    }, net.state_dict())
    return uri


def _materialised(tmp_path_factory, name: str, make, *args) -> str:
    """A fresh folder filled by ``make(*args, folder)``; its path."""
    uri = str(tmp_path_factory.mktemp(name))
    make(*args, uri)
    return uri


@pytest.fixture(scope="session")
def digits_archive(tmp_path_factory):
    """scikit-learn's 1,797 digits as PNG files, one folder per class."""
    from imgclf_ray.training.bundled import write_digits_archive

    return _materialised(tmp_path_factory, "digits", write_digits_archive)


@pytest.fixture(scope="session")
def faces_archive(tmp_path_factory):
    """scikit-image's lfw_subset as PNG files: face/ and non-face/ (100 each)."""
    from imgclf_ray.training.bundled import write_faces_archive

    return _materialised(tmp_path_factory, "faces", write_faces_archive)


@pytest.fixture(scope="session")
def svm_hog_model(tmp_path_factory, digits_archive, ray_session):
    """The svm-hog example model (calibrated RBF SVM over HOG) trained on the digits, skops."""
    from imgclf_ray.training.example_models import train_example

    return _materialised(tmp_path_factory, "svm-hog", train_example, "svm-hog", digits_archive)


@pytest.fixture(scope="session")
def faces_model(tmp_path_factory, faces_archive, ray_session):
    """The logreg-hog example: binary face / non-face over HOG, skops."""
    from imgclf_ray.training.example_models import train_example

    return _materialised(tmp_path_factory, "faces-model", train_example, "logreg-hog", faces_archive)


@pytest.fixture(scope="session")
def attributes_model(tmp_path_factory, digits_archive, ray_session):
    """The mlp-attributes example: a multilabel MLP on 16-px pixels (even, large, prime, closed-loop)."""
    from imgclf_ray.training.example_models import train_example

    return _materialised(tmp_path_factory, "attributes-model", train_example, "mlp-attributes",
                         digits_archive)


@pytest.fixture(scope="session")
def tree_model(tmp_path_factory, digits_archive, ray_session):
    """The tree-hog example: root small/large, children name the digit (calibrated SVMs over HOG)."""
    from imgclf_ray.training.example_models import train_example

    return _materialised(tmp_path_factory, "tree-model", train_example, "tree-hog", digits_archive)


@pytest.fixture(scope="session")
def mixed_archive(tmp_path_factory, sample_photo):
    """Good photographs and digits beside the bad files users meet (tests/corpus.py)."""
    from tests.corpus import bad_files, good_files

    root = tmp_path_factory.mktemp("mixed")
    for rel, data in {**good_files(sample_photo), **{k: v[0] for k, v in bad_files(sample_photo).items()}}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root
