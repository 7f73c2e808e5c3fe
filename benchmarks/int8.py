"""int8 against fp32 and Daft, end to end, and int8's labels against fp32's on trained models.

    .venv/bin/python benchmarks/int8.py --n 4000 --rounds 3 --trained data/quickstart/model:data/quickstart/archive

Speed: the corpus of ``benchmarks/run.py`` (640x480 JPEGs), its ResNet-18 (random weights, 224 px,
1,000 classes), each row a whole process (``imgclf run`` with no executor flag: run.executor auto,
the local executor on a machine without Ray running), rounds alternating fp32 as it runs with no
option (model.runtime auto), fp32 with model.runtime: torch, int8, Daft's documented pattern and the
plain PyTorch loop; medians. The int8 model is quantized once before the rounds (its seconds
reported apart: later nights find it under the sink's ``_int8/``).

Labels: for each ``--trained MODEL:ARCHIVE`` (a CNN trained with ``imgclf train``, e.g. the digits
ResNet-18 ``make demo`` trains), one fp32 and one int8 run over the archive, and the share of
images whose label is the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run import (IMGCLF, PYTHON, REPO, Row, _label_agreement, make_cnn_model, make_corpus,  # noqa: E402
                            measure, publish, run_daft, run_imgclf, write_job)


def _labels(work: Path, name: str, model: str, archive: str, extra: dict) -> Path:
    job = work / f"{name}.yaml"
    job.write_text(json.dumps({"name": name, "source": {"uri": archive}, "model": {"uri": model, **extra},
                               "sink": {"uri": str(work / name)}}))
    measure([IMGCLF, "run", str(job), "-q", "--run-id", "labels"], None, work / f"{name}.log")
    return work / name / "labels"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="benchmarks/work-int8")
    ap.add_argument("--skip-daft", action="store_true")
    ap.add_argument("--trained", action="append", default=[], metavar="MODEL:ARCHIVE")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"n": args.n, "rounds": args.rounds, "speed": {}, "trained": {}}
    if args.n:
        corpus = work / "corpus"
        if not corpus.exists():
            make_corpus(corpus, args.n)
        if not (work / "cnn").exists():
            make_cnn_model(work / "cnn")
        auto = {"executor": "auto"}  # as a user runs it: no flag
        fp32 = write_job(work, "fp32", str(corpus), work / "cnn", work / "out-fp32", run=auto)
        torch_ = write_job(work, "fp32-torch", str(corpus), work / "cnn", work / "out-fp32-torch", run=auto,
                           model={"runtime": "torch"})
        int8 = write_job(work, "int8", str(corpus), work / "cnn", work / "out-int8", run=auto,
                         model={"precision": "int8", "int8_min_agreement": 0.0})
        first = run_imgclf("int8 (quantizing)", int8, args.n, work)  # quantized once, reused by the rounds
        summary = json.loads((work / "out-int8" / "bench" / "_run_summary.json").read_text())
        out["quantize"] = {"seconds": summary["int8"]["seconds"], "agreement": summary["int8"]["agreement"],
                           "first_run_s": round(first.seconds, 1)}
        rows: dict[str, list] = {"fp32": [], "fp32_torch": [], "int8": [], "daft": [], "plain": []}
        for _ in range(args.rounds):
            rows["fp32"].append(run_imgclf("fp32", fp32, args.n, work))
            rows["fp32_torch"].append(run_imgclf("fp32, model.runtime: torch", torch_, args.n, work))
            wall, peak = measure([PYTHON, str(REPO / "benchmarks" / "plain_torch.py"), str(corpus), str(work / "cnn"),
                                  str(work / "plain.parquet")], log=work / "plain.log")
            rows["plain"].append(Row("plain PyTorch loop", args.n, wall, peak))
            rows["int8"].append(run_imgclf("int8", int8, args.n, work))
            if not args.skip_daft:
                rows["daft"].append(run_daft("daft", corpus, args.n, work, "daft.parquet"))
        for name, got in rows.items():
            if got:
                out["speed"][name] = {"seconds": [round(r.seconds, 1) for r in got],
                                      "median_s": round(statistics.median(r.seconds for r in got), 1),
                                      "peak_mb": round(statistics.median(r.peak_mb for r in got))}
        out["auto_vs_torch_labels_equal"] = round(
            _label_agreement(work / "out-fp32" / "bench", work / "out-fp32-torch" / "bench"), 4)
        out["speed_labels_equal"] = round(_label_agreement(work / "out-fp32" / "bench", work / "out-int8" / "bench"), 4)
    for pair in args.trained:
        model, archive = pair.split(":", 1)
        name = Path(model).name
        a = _labels(work, f"{name}-fp32", str(Path(model).resolve()), str(Path(archive).resolve()), {})
        b = _labels(work, f"{name}-int8", str(Path(model).resolve()), str(Path(archive).resolve()),
                    {"precision": "int8", "int8_min_agreement": 0.0})
        out["trained"][model] = {"labels_equal": round(_label_agreement(a, b), 4),
                                 "held_back_agreement": json.loads((b / "_run_summary.json").read_text())["int8"]["agreement"]}
    return publish(out, args.json)


if __name__ == "__main__":
    main()
