"""Writes tests/fixtures/sink-2026-12 (kept as written by main at 14e12f0, 2026-12-06, before the Sink object):
    .venv/bin/python -m tests.support.make_sink_fixture tests/fixtures/sink-2026-12
Rerun only to make a fixture of a new layout under a new name; the old one stays as it is."""
import shutil, sys, tempfile
from pathlib import Path
import torch
from imgclf_ray.models.artifact import save_artifact
from imgclf_ray.models.torch_classifier import build_network
from imgclf_ray.training.bundled import write_digits_archive
from imgclf_ray.spec import load_spec
from imgclf_ray.runner.job import run_job

def main():
    work = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    net = build_network("resnet18", 10)
    save_artifact(str(work / "model"), {"architecture": "resnet18", "labels": [f"class{i}" for i in range(10)],
        "preprocess": {"resize": 36, "crop": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}}, net.state_dict())
    write_digits_archive(str(work / "all"))
    files = sorted((work / "all").rglob("*.png"))[::180]
    def put(sel):
        for f in sel:
            d = work / "archive" / f.parent.name; d.mkdir(parents=True, exist_ok=True); shutil.copy(f, d / f.name)
    out = Path(sys.argv[1])
    shutil.rmtree(out, ignore_errors=True)
    for fmt in ("parquet", "delta"):
        shutil.rmtree(work / "archive", ignore_errors=True)
        put(files[:6])
        job = work / f"{fmt}.yaml"
        job.write_text(f"name: fixture\nsource: {{uri: {work / 'archive'}}}\nmodel: {{uri: {work / 'model'}}}\n"
                       f"sink: {{uri: {out / fmt}, format: {fmt}" + (", layout: 'date={date}/{run_id}'" if fmt == "parquet" else "") + "}\nincremental: {}\n"
                       "run: {executor: local}\n")
        spec = load_spec(job, ["sink.run_date=2026-12-01"])
        run_job(spec, "night-1", quiet=True)
        put(files[6:])
        spec = load_spec(job, ["sink.run_date=2026-12-02"])
        run_job(spec, "night-2", quiet=True)
        spec = load_spec(job, ["sink.run_date=2026-12-03"])
        run_job(spec, "night-3", quiet=True)

if __name__ == '__main__':
    main()
