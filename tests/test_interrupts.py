"""SIGINT and SIGTERM end a real driver at the next safe point: one line saying what was committed
and how to resume, exit 130 / 143, the lock released, the staging discarded, no process it started
left alive; a commit under way completes first. The signal lands at a blocking fault point
(imgclf_ray.faults: IMGCLF_BLOCK_AT), never at a guessed time."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from imgclf_ray.spec import load_spec
from tests.corpus import digit_images, png_bytes

IMGCLF = str(Path(sys.executable).with_name("imgclf"))
pytestmark = pytest.mark.slow


def _archive(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, img in digit_images(n):
        (root / f"{name}.png").write_bytes(png_bytes(img))


def _job(tmp_path: Path, model: str, executor: str, sink: str | None = None, extra: str = "") -> Path:
    _archive(tmp_path / "archive", 6)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: stop\nsource: {{uri: {tmp_path / 'archive'}}}\nmodel: {{uri: {model}}}\n"
                   f"sink: {{uri: {sink or tmp_path / 'out'}}}\nrun: {{executor: {executor}}}\n"
                   f"resources: {{decode_batch_size: 2, batch_size: 2}}\n{extra}")
    return job


class Driver:
    """One real ``imgclf`` process in its own session, held at a fault point until released."""

    def __init__(self, args: list[str], block_at: str, tmp_path: Path, **env: str):
        self.flag = str(tmp_path / "block")
        environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        environ |= {"IMGCLF_BLOCK_AT": block_at, "IMGCLF_BLOCK_FILE": self.flag, **env}
        self.proc = subprocess.Popen([IMGCLF, *args], env=environ, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)

    def reached(self, deadline: float = 240) -> list[psutil.Process]:
        """Waits until the point is reached; the driver and every process it started by then."""
        end = time.monotonic() + deadline
        while not os.path.exists(self.flag + ".reached"):
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < end, "the fault point was never reached"
            time.sleep(0.05)
        me = psutil.Process(self.proc.pid)
        return [me, *me.children(recursive=True)]

    def release(self) -> None:
        Path(self.flag + ".release").touch()

    def output(self) -> str:
        return self.proc.stdout.read().decode(errors="replace") if self.proc.poll() is not None else ""

    def finish(self, started: list[psutil.Process]) -> tuple[int, str]:
        """The exit code and output; asserts that no process the command started outlives it by
        30 s (Ray's agents and workers included; the suite's other worker may hold both cores)."""
        try:
            code = self.proc.wait(timeout=120)
            out = self.proc.stdout.read().decode(errors="replace")
            _, alive = psutil.wait_procs(started[1:], timeout=30)
            assert not alive, [(p.pid, _name(p)) for p in alive]
            return code, out
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _name(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:120]
    except psutil.Error:
        return "?"


def _one_line(out: str) -> str:
    """The command's closing line; before it, progress lines only (under -q), no traceback."""
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert "Traceback" not in out and "Error" not in out, out[-3000:]
    assert all(line.startswith(("classify:", "listing:", "curate", "incremental:")) for line in lines[:-1]), out[-3000:]
    return lines[-1]


def _committed(out: Path) -> list[str]:
    return [Path(u).name for u in pq.read_table(
        glob.glob(f"{out}/**/*.parquet", recursive=True)).column("uri").to_pylist()]


def _resumed(job: Path, run_id: str, out: Path) -> None:
    """The rerun of the interrupted run id (in-process, local executor) commits every image once."""
    from imgclf_ray.runner.job import run_job

    assert not (out / "_staging").exists() or not any((out / "_staging").iterdir())
    assert not (out / "_locks").exists() or not any((out / "_locks").iterdir())
    assert run_job(load_spec(job, ["run.executor=local"]), run_id, quiet=True).rows == 6
    names = _committed(out)
    assert len(names) == 6 and len(set(names)) == 6


@pytest.mark.parametrize("executor, signum, point", [
    ("ray", signal.SIGINT, "ray_started"),  # Ctrl-C while Ray starts
    ("ray", signal.SIGTERM, "decode_batch"),  # mid-classification: a Ray worker holds a batch
    ("local", signal.SIGTERM, "decode_batch"),  # a decode worker process holds a batch
    ("local", signal.SIGINT, "decode_batch"),
])
def test_a_signal_before_the_commit_commits_nothing_and_the_rerun_resumes(executor, signum, point, tiny_model,
                                                                          tmp_path):
    job = _job(tmp_path, tiny_model, executor)
    driver = Driver(["run", str(job), "--run-id", "r1", "-q"], point, tmp_path)
    started = driver.reached()
    if signum == signal.SIGINT:  # a terminal's Ctrl-C goes to the whole foreground group
        os.killpg(driver.proc.pid, signum)
    else:  # cron, Kubernetes and Airflow signal the command itself
        driver.proc.send_signal(signum)
    driver.release()
    code, out = driver.finish(started)
    assert code == (130 if signum == signal.SIGINT else 143), out
    assert _one_line(out) == "interrupted: nothing committed; rerun with --run-id r1 to resume"
    assert not glob.glob(f"{tmp_path / 'out'}/**/*.parquet", recursive=True)
    _resumed(job, "r1", tmp_path / "out")


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_a_signal_during_the_commit_lets_it_complete_and_says_so(executor, tiny_model, tmp_path):
    job = _job(tmp_path, tiny_model, executor)
    driver = Driver(["run", str(job), "--run-id", "r1", "-q"], "commit_moved", tmp_path)
    started = driver.reached()
    driver.proc.send_signal(signal.SIGTERM)
    driver.release()
    code, out = driver.finish(started)
    assert code == 143, out
    assert _one_line(out) == "interrupted after the commit of run r1"
    names = _committed(tmp_path / "out")
    assert len(names) == 6 and len(set(names)) == 6


@pytest.mark.s3
def test_a_signal_with_an_s3_sink_leaves_no_staging_and_no_lock(s3, moto_server, tiny_model, tmp_path):
    storage = f"storage: {{endpoint_url: '{moto_server}'}}\n"
    job = _job(tmp_path, tiny_model, "local", sink="s3://output/runs", extra=storage)
    driver = Driver(["run", str(job), "--run-id", "r1", "-q"], "decode_batch", tmp_path)
    started = driver.reached()
    driver.proc.send_signal(signal.SIGTERM)
    driver.release()
    code, out = driver.finish(started)
    assert code == 143 and _one_line(out) == "interrupted: nothing committed; rerun with --run-id r1 to resume"
    s3.invalidate_cache()
    assert not [p for p in s3.find("output/runs") if "/_staging/" in p or "/_locks/" in p or p.endswith(".parquet")]


def test_train_and_curate_stop_cleanly_on_sigterm(tiny_model, tmp_path):
    _archive(tmp_path / "archive" / "a", 3)
    _archive(tmp_path / "archive" / "b", 3)
    train = tmp_path / "train.yaml"
    train.write_text(f"name: t\ndata: {{uri: {tmp_path / 'archive'}, labels: {{kind: folder}}}}\n"
                     f"model: {{output: {tmp_path / 'model'}, features: {{name: hog}}, "
                     "estimator: {name: logistic_regression}, preprocess: {resize: 16, crop: 16, channels: 1}}\n")
    curate = _job(tmp_path, tiny_model, "local", extra="curate: {checks: [dark, blurry]}\n")
    for args, line in ((["train", str(train)], "interrupted: nothing committed; run the same command again"),
                       (["curate", str(curate), "--run-id", "c1", "-q"],
                        "interrupted: nothing committed; rerun with --run-id c1 to resume")):
        (tmp_path / "block.reached").unlink(missing_ok=True)
        (tmp_path / "block.release").unlink(missing_ok=True)
        driver = Driver(args, "decode_batch", tmp_path)
        started = driver.reached()
        driver.proc.send_signal(signal.SIGTERM)
        driver.release()
        code, out = driver.finish(started)
        assert code == 143 and _one_line(out) == line, out
    assert not (tmp_path / "model").exists() and not glob.glob(f"{tmp_path / 'out'}/**/*.parquet", recursive=True)


def test_a_failing_commit_is_reported_as_itself_even_with_a_signal_pending():
    """A signal that arrives during a commit waits for it; when the commit then fails, its error is
    what the user sees (not 'interrupted after the commit')."""
    from imgclf_ray import interrupts

    with interrupts.handled():
        with pytest.raises(RuntimeError, match="lease lost"):
            with interrupts.shielded():
                os.kill(os.getpid(), signal.SIGTERM)  # held: the handler records it
                raise RuntimeError("lease lost")
    with interrupts.handled():
        with pytest.raises(interrupts.Interrupted) as caught:
            with interrupts.shielded():
                os.kill(os.getpid(), signal.SIGTERM)
        assert caught.value.after_commit and caught.value.exit_code == 143
        interrupts.resume("run r", "rerun with --run-id r to resume")
        assert interrupts.describe(caught.value) == "interrupted after the commit of run r"


LOST = """
import sys, threading
from imgclf_ray import interrupts
from imgclf_ray.runner import ray_setup
with interrupts.handled():
    interrupts.resume("run r1", "rerun with --run-id r1 to resume")
    if sys.argv[1] == "before":
        ray_setup._cluster_lost("10.0.0.1:6379", 50, 60)
    with interrupts.shielded():  # a commit under way when the cluster is found lost
        threading.Thread(target=ray_setup._cluster_lost, args=("10.0.0.1:6379", 50, float(sys.argv[2]))).start()
        if sys.argv[1] == "hangs":
            threading.Event().wait()  # a commit that never ends; "ends": it ends now, looked at or not
    threading.Event().wait()  # after the commit: the thread says so and exits
"""


@pytest.mark.parametrize("case, limit, said", [
    ("before", 60, "(nothing at its GCS, 10.0.0.1:6379, for 50 s; Ray ends a driver at 60 s): nothing committed; "
                   "rerun with --run-id r1 to resume"),
    ("ends", 60, "(nothing at its GCS, 10.0.0.1:6379, for 50 s; Ray ends a driver at 60 s) after the commit of run r1"),
    ("hangs", 53, "(nothing at its GCS, 10.0.0.1:6379, for 50 s; Ray ends a driver at 53 s) during the commit of run r1: "
                  "run the same command again (it finishes or undoes that commit)"),
])
def test_a_lost_cluster_says_what_was_committed_and_never_exits_inside_a_commit_it_can_wait_for(case, limit, said):
    """The line a command prints when its Ray cluster stopped answering (ray_setup._cluster_lost,
    the watching thread's end): before any commit; a commit under way is waited for; one that
    outlasts Ray's limit is named as under way."""
    done = subprocess.run([sys.executable, "-c", LOST, case, str(limit)], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [f"error: the Ray cluster stopped answering {said}"]


def test_the_parts_of_a_commit_are_not_the_commit():
    """A hierarchical model's node artifacts are written shielded, one by one, before its tree
    card: an interruption between them has committed nothing."""
    from imgclf_ray import interrupts

    with interrupts.handled():
        interrupts.resume("the model at m", "run the same command again")
        with interrupts.steps():
            with interrupts.shielded():
                pass  # the root node's artifact
            assert interrupts.outcome("interrupted") == "interrupted: nothing committed; run the same command again"
        with interrupts.shielded():
            pass  # the tree card
        assert interrupts.outcome("interrupted") == "interrupted after the commit of the model at m"


def test_the_example_model_trained_before_a_run_is_no_commit_of_the_run(monkeypatch, tmp_path):
    """`imgclf run` of an example job trains its model first, and the model's artifact is written
    in a shielded step: a signal later in the run said "interrupted after the commit of run ..." with
    nothing committed (a newcomer's walk). The example's training is a step, not the run's commit.
    A `models:/` model.uri is refused for the example's training (it made a folder named models:)."""
    from imgclf_ray import interrupts
    from imgclf_ray.errors import SpecError
    from imgclf_ray.training import example_models

    monkeypatch.setattr(interrupts, "_state", interrupts._State())

    def trained(*args):
        with interrupts.shielded():  # (the artifact's own commit, as the trainer writes it)
            pass
        return {"seconds": 0, "accuracy": 1.0}

    monkeypatch.setattr(example_models, "train_example", trained)
    repo = Path(__file__).resolve().parents[1]
    spec = load_spec(repo / "jobs" / "quickstart.yaml", [f"source.uri={tmp_path / 'digits'}",
                                                           f"model.uri={tmp_path / 'model'}", f"sink.uri={tmp_path / 'o'}",
                                                           "example.anywhere=true"])
    interrupts.resume("run r1", "rerun with --run-id r1 to resume")
    example_models.prepare(spec, echo=None)
    assert interrupts.outcome("interrupted") == "interrupted: nothing committed; rerun with --run-id r1 to resume"
    registered = spec.model_copy(update={"model": spec.model.model_copy(update={"uri": "models:/x@champion"})})
    with pytest.raises(SpecError, match="^example.train_model: trains the example's model into a folder"):
        example_models.prepare(registered, echo=None)
