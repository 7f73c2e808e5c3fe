"""run.executor: auto, the default: Ray when a cluster is named or running, this process otherwise,
and the summary's first line says which and why. The conditions are real: the environment
variable, a Ray initialised in this process, an address file naming a port that answers or not
(tests/test_submit.py joins a real `ray start` head this way)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from imgclf_ray.runner.executor import choose
from imgclf_ray.spec import parse_spec
from tests.conftest import _free_port
from tests.support.jobs import digits_subset


def _spec(tmp_path: Path, model: str, **run) -> object:
    return parse_spec({"name": "auto", "source": {"uri": str(tmp_path / "archive")}, "model": {"uri": model},
                       "sink": {"uri": str(tmp_path / "out")}, "run": run}, "<test>")


@pytest.fixture
def no_ray_around(tmp_path, monkeypatch):
    """No RAY_ADDRESS, Ray's temporary folder an empty one of this test's (no `ray start` here)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))
    return tmp_path / "raytmp"


def _address_file(folder: Path, address: str) -> None:
    (folder / "ray").mkdir(parents=True, exist_ok=True)
    (folder / "ray" / "ray_current_cluster").write_text(address)


def _chosen(tmp_path: Path, model: str, env: dict, **run) -> tuple[str, str, str]:
    """(executor, ray_address, why) that auto chooses in a fresh process (no Ray imported there)."""
    code = ("import json, sys; from imgclf_ray.runner.executor import choose; from imgclf_ray.spec import parse_spec;"
            "spec, why = choose(parse_spec(json.loads(sys.argv[1]), '<test>'));"
            "print(json.dumps([spec.run.executor, spec.run.ray_address, why]))")
    data = {"name": "auto", "source": {"uri": str(tmp_path / "archive")}, "model": {"uri": model},
            "sink": {"uri": str(tmp_path / "out")}, "run": run}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(data)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return tuple(json.loads(out.stdout))


def test_auto_is_local_without_a_ray_and_ray_when_one_is_named(no_ray_around, tiny_model, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(no_ray_around)}
    assert _chosen(tmp_path, tiny_model, env) == ("local", None, "no Ray cluster named or running")
    # An address file whose port answers nothing: a Ray that died without `ray stop`.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    _address_file(no_ray_around, f"127.0.0.1:{dead}")
    executor, _, why = _chosen(tmp_path, tiny_model, env)
    assert executor == "local" and "does not answer" in why
    # A port that answers: what `ray start` leaves running (its GCS), joined at that address.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        alive = listener.getsockname()[1]
        _address_file(no_ray_around, f"127.0.0.1:{alive}")
        executor, address, why = _chosen(tmp_path, tiny_model, env)
        forced = _chosen(tmp_path, tiny_model, env, executor="ray")  # --ray joins it too, as ray.init() would
    # joined as ray.init() joins it ("auto": the same address file, and the cluster's token authentication)
    assert (executor, address) == ("ray", "auto") and why.endswith(f"`ray start` runs on this machine (127.0.0.1:{alive})")
    assert forced[:2] == ("ray", "auto") and forced[2].startswith("run.executor: ray, on the `ray start`")
    assert _chosen(tmp_path, tiny_model, env, ray_address="ray://head:10001")[0] == "ray"
    assert _chosen(tmp_path, tiny_model, env | {"RAY_ADDRESS": "127.0.0.1:1"}) == (
        "ray", None, "a Ray cluster is named (RAY_ADDRESS)")
    for forced in ("ray", "local"):
        assert choose(_spec(tmp_path, tiny_model, executor=forced))[0].run.executor == forced


def test_a_script_without_the_main_guard_runs_on_ray(no_ray_around, tiny_model, tmp_path):
    """The local executor's decode workers are spawned: they import the script again, and one
    without `if __name__ == "__main__":` would run its job again in each. Such a script gets Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(no_ray_around)}
    data = {"name": "auto", "source": {"uri": str(tmp_path / "archive")}, "model": {"uri": tiny_model},
            "sink": {"uri": str(tmp_path / "out")}}
    body = ("import json\nfrom imgclf_ray.runner.executor import choose\nfrom imgclf_ray.spec import parse_spec\n"
            "def main():\n    spec, why = choose(parse_spec(%r, '<test>'))\n    print(json.dumps([spec.run.executor, why]))\n"
            % data)
    for guarded in (False, True):
        script = tmp_path / f"job_{guarded}.py"
        script.write_text(body + ("if __name__ == '__main__':\n    main()\n" if guarded else "main()\n"))
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        executor, why = json.loads(out.stdout)
        assert (executor, why.startswith("this script has no")) == (("local", False) if guarded else ("ray", True))
    # Asked for the local executor, the script without the guard is refused before anything starts
    # (its workers would run it again: a job inside each, and whatever else its top level does).
    forced = tmp_path / "job_local.py"
    local = {**data, "run": {"executor": "local"}}
    forced.write_text(body.replace(repr(data), repr(local)) + "from imgclf_ray.errors import SpecError\n"
                      "try:\n    main()\nexcept SpecError as e:\n    print(json.dumps(['refused', str(e)]))\n")
    out = subprocess.run([sys.executable, str(forced)], env=env, capture_output=True, text=True, timeout=120)
    refused, why = json.loads(out.stdout)
    assert refused == "refused" and why.startswith("run.executor: local from a script without `if __name__")


@pytest.mark.ray
def test_a_ray_initialised_in_this_process_is_used(ray_session, no_ray_around, tiny_model, tmp_path):
    spec, why = choose(_spec(tmp_path, tiny_model))
    assert spec.run.executor == "ray" and why == "Ray is initialised in this process"


def test_imgclf_run_with_no_flag_runs_locally_and_says_so_first(no_ray_around, digits_archive, tiny_model, tmp_path):
    n = digits_subset(digits_archive, tmp_path / "archive", 60)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: auto\nsource: {{uri: {tmp_path / 'archive'}}}\nmodel: {{uri: {tiny_model}}}\n"
                   f"sink: {{uri: {tmp_path / 'out'}}}\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(no_ray_around)}
    out = subprocess.run([sys.executable, "-m", "imgclf_ray", "run", str(job), "--run-id", "r1", "-q"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first = out.stdout.splitlines()[0]
    assert first.startswith(f"run r1: {n} images") and first.endswith("local executor: no Ray cluster named or running")
    summary = json.loads((tmp_path / "out" / "r1" / "_run_summary.json").read_text())
    assert summary["executor"] == {"name": "local", "why": "no Ray cluster named or running"}
    assert summary["runtime"] == {"name": "torch", "why": f"auto: {n} files, fewer than 1000"}
    both = subprocess.run([sys.executable, "-m", "imgclf_ray", "run", str(job), "--local", "--ray"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and both.stderr.strip() == "error: give --local or --ray, not both"
    # An address where nothing listens: one line at once (ray.init retried for minutes, silently).
    port = _free_port()
    nowhere = subprocess.run([sys.executable, "-m", "imgclf_ray", "run", str(job), "--address", f"127.0.0.1:{port}",
                              "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert nowhere.returncode == 1 and nowhere.stderr.strip().splitlines() == [
        f"error: nothing answers at the Ray address 127.0.0.1:{port} (ConnectionRefusedError: Connection refused): "
        "start a cluster there (ray start --head), or check --address / RAY_ADDRESS / run.ray_address"]


def test_a_local_cpu_run_of_1000_images_or_more_runs_the_network_in_onnx_runtime(digits_archive, tiny_model,
                                                                                   tmp_path, monkeypatch):
    """model.runtime auto: ONNX Runtime for the local executor's fp32 CPU network over 1,000 images
    or more, exported once into the cache; the labels PyTorch gives (model.runtime: torch), the
    scores within float rounding. Its summary's model line says which runtime and why."""
    import pyarrow.parquet as pq

    from imgclf_ray.io.sink import committed_files
    from imgclf_ray.models.artifact import read_card
    from imgclf_ray.models.onnx_runtime import export_path
    from imgclf_ray.report.summary import format_summary
    from imgclf_ray.runner.job import run_job
    from imgclf_ray.spec import load_spec

    monkeypatch.setenv("IMGCLF_CACHE", str(tmp_path / "cache"))  # exported by this run, not found from another test's
    archive = tmp_path / "archive"
    for src in sorted(Path(digits_archive).rglob("*.png"))[:1000]:  # exactly the threshold
        (archive / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, archive / src.parent.name / src.name)
    rows = {}
    for runtime in ("auto", "torch"):
        job = tmp_path / f"{runtime}.yaml"
        job.write_text(f"name: r\nsource: {{uri: {archive}}}\nmodel: {{uri: {tiny_model}, runtime: {runtime}}}\n"
                       f"sink: {{uri: {tmp_path / runtime}}}\nrun: {{executor: local}}\n")
        result = run_job(load_spec(job), "n", quiet=True)
        files = [f.removeprefix("file://") for f in committed_files(str(tmp_path / runtime), "n")]
        rows[runtime] = {r["image_id"]: r for r in pq.read_table(files).to_pylist()}
        if runtime == "auto":
            assert result.runtime == {"name": "onnxruntime", "why": "auto: fp32 on CPUs, 1000 files"}
            assert "(runtime onnxruntime: auto: fp32 on CPUs, 1000 files)" in format_summary(result)
            assert export_path(read_card(tiny_model)).is_file() and str(tmp_path / "cache") in str(export_path(read_card(tiny_model)))
        else:
            assert result.runtime == {"name": "torch", "why": "model.runtime"}
    assert sorted(rows["auto"]) == sorted(rows["torch"]) and len(rows["auto"]) == 1000
    assert [rows["auto"][i]["label"] for i in sorted(rows["auto"])] == [rows["torch"][i]["label"] for i in sorted(rows["auto"])]
    ort = np.array([rows["auto"][i]["class_scores"] for i in sorted(rows["auto"])])
    torch_ = np.array([rows["torch"][i]["class_scores"] for i in sorted(rows["auto"])])
    assert np.abs(ort - torch_).max() < 1e-5


def test_model_runtime_auto_keeps_pytorch_where_onnx_runtime_would_not_pay(tiny_model, svm_hog_model, tree_model,
                                                                           tmp_path, monkeypatch):
    from imgclf_ray.models.hierarchy import describe_artifact
    from imgclf_ray.runner.plan import make_plan, with_runtime

    def decided(model: str, rows: int, cluster=None, export=True, decode=None, **extra) -> dict:
        spec = parse_spec({"name": "r", "source": {"uri": str(tmp_path)}, "sink": {"uri": str(tmp_path / "out")},
                           "model": {"uri": model, **extra}, **({"decode": decode} if decode else {})}, "<test>")
        run = make_plan(spec, cluster or {"CPU": 2.0}, describe_artifact(model))
        run, why = with_runtime(run, rows, export)
        assert not why or run.spec.model.runtime == why["name"]
        return why

    # A dry run exports nothing: it says what the run will take if the network exports.
    monkeypatch.setenv("IMGCLF_CACHE", str(tmp_path / "cache"))
    assert decided(tiny_model, 5000, export=False) == {
        "name": "onnxruntime", "why": "auto: fp32 on CPUs, 5000 files; if the network exports to ONNX"}
    assert not (tmp_path / "cache").exists()
    # The cache cannot be written (a read-only home): PyTorch, as before, and the reason.
    (tmp_path / "cache").write_text("a file where the cache folder would be")
    assert decided(tiny_model, 5000) == {"name": "torch", "why": "auto: no ONNX export (NotADirectoryError)"}
    assert decided(tiny_model, 5000, decode={"jpeg_on": "predictor"}) == {
        "name": "torch", "why": "auto: decode.jpeg_on predictor"}
    assert decided(tree_model, 5000) == {}  # a tree's nodes run in PyTorch whatever model.runtime says

    assert decided(tiny_model, 5000, precision="bf16") == {"name": "torch", "why": "auto: bf16 on cpu"}
    assert decided(tiny_model, 5000, cluster={"CPU": 8.0, "GPU": 1.0}) == {"name": "torch", "why": "auto: fp32 on cuda"}
    (tmp_path / "cache").unlink()
    assert decided(tiny_model, 999) == {"name": "torch", "why": "auto: 999 files, fewer than 1000"}
    assert decided(tiny_model, 1000)["name"] == "onnxruntime"  # exported now: a later run of any size finds it made
    assert decided(tiny_model, 20) == {"name": "onnxruntime", "why": "auto: fp32 on CPUs, 20 files, the ONNX export made"}
    assert decided(tiny_model, 20, export=False)["why"] == "auto: fp32 on CPUs, 20 files, the ONNX export made"
    assert decided(tiny_model, 10, runtime="onnxruntime") == {"name": "onnxruntime", "why": "model.runtime"}
    assert decided(svm_hog_model, 5000) == {}  # not a torch network


@pytest.mark.ray
def test_a_ray_node_without_the_export_runs_the_drivers_one_without_importing_torch(ray_session, tiny_model, tmp_path):
    """On Ray the driver's ONNX export goes to the predictors through the object store: a node (an
    actor with a cache of its own) runs that export in ONNX Runtime without importing torch,
    whatever its own cache holds under that name, and scores as PyTorch does (float rounding
    apart). The weights are still checked against the card: changed weights are refused."""
    import shutil

    import ray

    from imgclf_ray.errors import ArtifactError
    from imgclf_ray.models.artifact import read_card
    from imgclf_ray.models.hierarchy import describe_artifact
    from imgclf_ray.models.onnx_runtime import export_path, from_export
    from imgclf_ray.models.torch_classifier import TorchClassifier
    from imgclf_ray.runner.build import predict_config, shipped_export
    from imgclf_ray.runner.plan import make_plan, with_runtime
    from imgclf_ray.stages import PredictStage

    spec = parse_spec({"name": "r", "source": {"uri": str(tmp_path)}, "sink": {"uri": str(tmp_path / "out")},
                       "model": {"uri": tiny_model}}, "<test>")
    run = make_plan(spec, {"CPU": 2.0, "memory": 8e9}, describe_artifact(tiny_model))
    assert shipped_export(run, predict_config(run, "r")).export is None  # PyTorch's run ships nothing
    run, why = with_runtime(run, 1000)  # the driver exports (into this test's cache)
    config = shipped_export(run, predict_config(run, "r"))
    assert why["name"] == "onnxruntime" and isinstance(config.export, ray.ObjectRef)
    node_cache = tmp_path / "node-cache"
    (node_cache / "onnx").mkdir(parents=True)  # another export under the name (another torch made it)
    (node_cache / "onnx" / export_path(read_card(tiny_model)).name).write_bytes(b"not this one")

    @ray.remote(num_cpus=0, runtime_env={"env_vars": {"IMGCLF_CACHE": str(node_cache)}})
    def on_another_node(config, pixels):
        stage = PredictStage(config)
        return type(stage.classifier).__name__, "torch" in sys.modules, stage.classifier.predict_proba(pixels)

    pixels = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    kind, imported_torch, scores = ray.get(on_another_node.remote(config, pixels))
    reference = TorchClassifier(tiny_model, device="cpu", runtime="torch").predict_proba(pixels)
    assert kind == "OnnxClassifier" and not imported_torch
    assert (scores.argmax(1) == reference.argmax(1)).all() and np.abs(scores - reference).max() < 1e-5
    here = from_export(tiny_model, spec.storage, read_card(tiny_model), 1)  # this machine's cache has it
    import torch  # decode.jpeg_on: predictor hands it a CPU tensor

    assert np.array_equal(here.predict_proba(torch.from_numpy(pixels)), here.predict_proba(pixels))

    changed = tmp_path / "changed"
    shutil.copytree(tiny_model, changed)
    weights = next(p for p in changed.iterdir() if p.suffix == ".safetensors")
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="sha256 .* does not match the model card's"):
        from_export(str(changed), spec.storage, read_card(str(changed)), 1)


def test_the_private_ray_keeps_token_auth_without_printing_its_notice():
    """The Ray instance a run starts for itself has token authentication on (Ray's default), and
    Ray's notice of it — printed by every ray.init — stays off the console (the API's and a
    verbose CLI's); Ray itself prints it (the reference)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="imgclf-tok-", dir="/tmp")  # short: Unix socket paths
    code = ("import os, ray\n{}\nprint(os.environ.get('RAY_AUTH_MODE'), ray.is_initialized())\nray.shutdown()\n")
    ours = "from imgclf_ray.runner.ray_setup import ensure_ray\nensure_ray()"
    theirs = "ray.init(address='local', include_dashboard=False, num_cpus=1)"
    try:
        for start, notice in ((ours, False), (theirs, True)):
            out = subprocess.run([sys.executable, "-c", code.format(start)], env=env, capture_output=True, text=True,
                                 timeout=120)
            assert out.returncode == 0 and out.stdout.split() == ["token", "True"], out.stderr[-2000:]
            assert ("Token authentication is enabled for this Ray cluster" in out.stderr) == notice, out.stderr[-2000:]
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def test_a_refused_connection_without_a_ray_token_says_the_token_may_be_missing(monkeypatch):
    """A token-authenticated Ray refuses a driver without its token, and Ray says only that it could
    not connect; other connections (object storage) get no word about Ray."""
    from imgclf_ray.errors import describe_failure

    failure = ConnectionError("Failed to connect to GCS at address 127.0.0.1:6379 within 10 seconds.")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert str(describe_failure(failure)).endswith(
        "needs RAY_AUTH_MODE=token and its token: RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")
    assert str(describe_failure(ConnectionError("storage endpoint refused"))).endswith("check the address or endpoint")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x")
    assert str(describe_failure(failure)).endswith("check the address or endpoint")


def test_the_autoscalers_failure_reaches_a_command_as_one_line(capsys):
    """Ray's autoscaler, sent SIGTERM (`ray stop`, a head pod deleted), sends every driver its
    failure with a Python stack, printed by Ray's own function; in a CLI command, one line."""
    import traceback

    from ray._private import worker

    from imgclf_ray.runner import ray_setup

    # The message as ray/autoscaler/_private/monitor.py builds it in its signal handler.
    message = ("The autoscaler failed with the following error:\n"
               + "Terminated with signal 15\n" + "".join(traceback.format_stack()))
    saved = worker.print_to_stdstream
    try:
        ray_setup._short_autoscaler_errors()
        ray_setup._short_autoscaler_errors()  # once: not wrapped twice
        worker.print_to_stdstream({"lines": [message], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        worker.print_to_stdstream({"lines": ["another line\n  kept whole"], "pid": "raylet", "is_err": False},
                                  ignore_prefix=False)
    finally:
        worker.print_to_stdstream = saved
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("The autoscaler failed with the following error: Terminated with signal 15"), out
    assert out[1:] == [x for x in out[1:] if "another line" in x or "kept whole" in x] and len(out) == 3


@pytest.mark.parametrize("text, guarded", [
    ('if __name__ == "__main__":\n    main()\n', True),
    ("if __name__ == '__main__': main()\n", True),
    ('if (__name__ == "__main__"):\n    main()\n', True),
    ('if "__main__" == __name__:\n    main()\n', True),
    ('# if __name__ == "__main__":\nmain()\n', False),
    ('"""Run as: if __name__ == "__main__": ..."""\nmain()\n', False),
    ('def f():\n    if __name__ == "__main__":\n        pass\nmain()\n', False),
    ('if __name__ != "__main__":\n    main()\n', False),
])
def test_the_main_guard_is_found_as_python_reads_it(text, guarded):
    from imgclf_ray.runner.executor import _has_guard

    assert _has_guard(text) is guarded
