"""The default path as a user runs it (``imgclf run`` with no flag: run.executor auto), against the
plain loop and against a Ray instance started with ``ray start`` on the same machine.

    .venv/bin/python benchmarks/default_path.py --classical 3000 --cnn 4000 --rounds 3
    .venv/bin/python benchmarks/default_path.py --classical 0 --cnn 0 --first 300 --rounds 3

Rows, each a whole process, rounds alternating, medians: the HOG + logistic-regression job
(``benchmarks/run.py``'s classical model, ``decode.jpeg_draft``) with no flag against
``benchmarks/plain_classical.py`` (Pillow, HOG, predict_proba in one process); the ResNet-18 job
with no flag on a machine without Ray (the local executor) against the same command after ``ray
start --head`` (auto joins it), with the joined run's first labelled batch (its summary's
``first_batch_seconds``: from the command's start); with ``--first``, the first labelled batch of
the first and second job after a fresh ``ray start`` (the CNN with no flag, and with PyTorch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.heads import stop_ray_node  # noqa: E402
from benchmarks.run import (PYTHON, REPO, Row, _loop_seconds, make_classical_model, make_cnn_model,  # noqa: E402
                            make_corpus, measure, publish, run_imgclf, write_job)

RAY = str(Path(PYTHON).with_name("ray"))


def _median(rows: list[Row]) -> dict:
    return {"seconds": [round(r.seconds, 1) for r in rows], "median_s": round(statistics.median(r.seconds for r in rows), 1),
            "peak_mb": round(statistics.median(r.peak_mb for r in rows)),
            "first_batch_s": [r.first_batch_s for r in rows]}


def classical(work: Path, n: int, rounds: int) -> dict:
    corpus = work / f"corpus-{n}"
    if not corpus.exists():
        make_corpus(corpus, n)
    if not (work / "classical").exists():
        make_classical_model(work, corpus, work / "classical")
    job = write_job(work, "classical-auto", str(corpus), work / "classical", work / "out-classical",
                    decode={"jpeg_draft": True}, run={"executor": "auto"})
    rows: dict[str, list] = {"imgclf run (no flag)": [], "plain classical loop": []}
    for _ in range(rounds):
        rows["imgclf run (no flag)"].append(run_imgclf("imgclf", job, n, work))
        wall, peak = measure([PYTHON, str(REPO / "benchmarks" / "plain_classical.py"), str(corpus),
                              str(work / "classical"), str(work / "plain.parquet")], log=work / "plain.log")
        rows["plain classical loop"].append(Row("plain", n, wall, peak, None, _loop_seconds(work / "plain.parquet")))
    return {k: _median(v) for k, v in rows.items()}


def ray_started(work: Path, n: int, rounds: int) -> dict:
    """The CNN job with no flag: alone (local), and joining a `ray start --head` of this machine."""
    corpus = work / f"corpus-{n}"
    if not corpus.exists():
        make_corpus(corpus, n)
    if not (work / "cnn").exists():
        make_cnn_model(work / "cnn")
    job = write_job(work, "cnn-auto", str(corpus), work / "cnn", work / "out-cnn", run={"executor": "auto"})
    raytmp = Path(tempfile.mkdtemp(prefix="imgclf-rt-", dir="/tmp"))
    joined_env = {"RAY_TMPDIR": str(raytmp)}
    alone_env = {"RAY_TMPDIR": str(work / "no-ray")}
    rows: dict[str, list] = {"no Ray running (local)": [], "ray start running (joined)": []}
    env = {**os.environ, **joined_env}
    subprocess.run([RAY, "start", "--head", "--disable-usage-stats", "--include-dashboard=false"], env=env,
                   check=True, capture_output=True)
    try:
        for _ in range(rounds):
            rows["no Ray running (local)"].append(run_imgclf("local", job, n, work, alone_env))
            rows["ray start running (joined)"].append(run_imgclf("joined", job, n, work, joined_env))
    finally:
        stop_ray_node(str(raytmp))  # this head only (`ray stop` stops every Ray on the machine)
    summary = json.loads((work / "out-cnn" / "bench" / "_run_summary.json").read_text())
    assert summary["executor"]["name"] == "ray", summary["executor"]
    return {k: _median(v) for k, v in rows.items()}


def first_after_start(work: Path, n: int, rounds: int) -> dict:
    """The first labelled batch of the first job after a fresh `ray start --head --num-cpus 2`
    (Ray Data starts its cluster-wide actors then), and of the job after it: the CNN job with no
    flag (runtime auto: ONNX Runtime, its export made) against ``model.runtime: torch``, each round
    a fresh head per row, rows alternating."""
    corpus = work / f"corpus-{n}"
    if not corpus.exists():
        make_corpus(corpus, n)
    if not (work / "cnn").exists():
        make_cnn_model(work / "cnn")
    jobs = {"auto": write_job(work, "first-auto", str(corpus), work / "cnn", work / "out-first-auto",
                              run={"executor": "auto"}),
            "torch": write_job(work, "first-torch", str(corpus), work / "cnn", work / "out-first-torch",
                               run={"executor": "auto"}, model={"runtime": "torch"})}
    from imgclf_ray.models.torch_classifier import onnx_export

    onnx_export(str(work / "cnn"))  # made (as a run over 1,000 images would have): auto takes it for 300
    out: dict[str, dict[str, list]] = {k: {"first job": [], "second job": [], "runtime": []} for k in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            raytmp = tempfile.mkdtemp(prefix="imgclf-fb-", dir="/tmp")
            env = {**os.environ, "RAY_TMPDIR": raytmp}
            subprocess.run([RAY, "start", "--head", "--num-cpus", "2", "--disable-usage-stats",
                            "--include-dashboard=false"], env=env, check=True, capture_output=True)
            try:
                for which in ("first job", "second job"):
                    shutil.rmtree(work / f"out-first-{name}", ignore_errors=True)
                    row = run_imgclf(name, job, n, work, {"RAY_TMPDIR": raytmp})
                    out[name][which].append(row.first_batch_s)
                summary = json.loads((work / f"out-first-{name}" / "bench" / "_run_summary.json").read_text())
                assert summary["executor"]["name"] == "ray", summary["executor"]
                out[name]["runtime"].append(summary["runtime"]["name"])
            finally:
                stop_ray_node(raytmp)
    return {k: {**v, "first job median_s": statistics.median(v["first job"]),
                "second job median_s": statistics.median(v["second job"])} for k, v in out.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classical", type=int, default=3000)
    ap.add_argument("--cnn", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--first", type=int, default=0,
                    help="images for the first-batch rows after a fresh `ray start` (0: not run)")
    ap.add_argument("--work", default="benchmarks/work-default")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = {"classical": classical(work, args.classical, args.rounds) if args.classical else None,
           "ray_started": ray_started(work, args.cnn, args.rounds) if args.cnn else None,
           "first_after_start": first_after_start(work, args.first, args.rounds) if args.first else None}
    return publish(out, args.json)


if __name__ == "__main__":
    main()
