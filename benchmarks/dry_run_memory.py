"""Driver memory of listing and selection against the archive's size: ``imgclf run --dry-run`` on
S3 Inventory reports of growing size.

    .venv/bin/python benchmarks/dry_run_memory.py                      # 200,000 and 2,000,000 keys
    .venv/bin/python benchmarks/dry_run_memory.py --keys 2000 20000    # a quicker look

For each size it writes an inventory as AWS does (Parquet data files of 200,000 keys, a
manifest.json), and an incremental job listing it, then runs ``imgclf run JOB --dry-run`` as its own
process (a fresh local Ray) and samples the driver process's resident memory every 50 ms. Listing
and selection run as Ray tasks, so the driver's peak should not grow with the archive: the target is
the largest inventory's peak at most 1.2x the smallest's. ``--json FILE`` keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PYTHON = sys.executable
IMGCLF = str(Path(PYTHON).with_name("imgclf"))
PER_FILE = 200_000


def write_inventory(root: Path, keys: int) -> str:
    """An inventory of bucket 'archive' (keys cams/<i/1000>/<i>.jpg); its manifest's path."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = root / "inv" / "archive" / "daily" / "data"
    data.mkdir(parents=True)
    files = []
    for start in range(0, keys, PER_FILE):
        i = np.arange(start, min(keys, start + PER_FILE))
        names = pa.array([f"cams/{k // 1000:05d}/{k:09d}.jpg" for k in i.tolist()])
        table = pa.table({"bucket": pa.array(["archive"] * len(i)), "key": names,
                          "size": pa.array(100_000 + i % 5000, pa.int64()),
                          "e_tag": pa.array([f"{k:032x}" for k in i.tolist()])})
        path = data / f"part-{start // PER_FILE:05d}.parquet"
        pq.write_table(table, path)
        files.append({"key": f"inv/archive/daily/data/{path.name}", "size": path.stat().st_size})
    manifest = root / "inv" / "archive" / "daily" / "2026-11-30T01-00Z" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"sourceBucket": "archive", "destinationBucket": "arn:aws:s3:::inventories",
                                    "fileFormat": "Parquet", "fileSchema": "message s3.inventory {}",
                                    "files": files}))
    return str(manifest)


def peak_rss_mb(cmd: list[str]) -> tuple[float, float, str]:
    """(peak resident MB of the process, seconds, its output)."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                peak = max(peak, p.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    done.set()
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return peak / 2**20, time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="imgclf-dry-run-") as work:
        for keys in args.keys:
            root = Path(work) / str(keys)
            manifest = write_inventory(root, keys)
            job = root / "job.yaml"
            job.write_text(json.dumps({
                "name": "scale", "source": {"uri": "s3://archive/cams", "inventory": manifest},
                "curate": {"checks": ["dark"]}, "incremental": {}, "sink": {"uri": str(root / "out")}}))
            mb, seconds, out = peak_rss_mb([IMGCLF, "run", str(job), "--dry-run", "--run-id", "dry"])
            print(out.strip().splitlines()[1] if len(out.strip().splitlines()) > 1 else out.strip())
            rows.append({"keys": keys, "driver_peak_mb": round(mb, 1), "seconds": round(seconds, 1)})
            print(f"{keys:>12,} keys: driver peak {mb:,.0f} MB, {seconds:.1f} s end to end")
    ratio = rows[-1]["driver_peak_mb"] / rows[0]["driver_peak_mb"]
    print(f"largest / smallest driver peak: {ratio:.2f}x (target: at most 1.2x)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratio": round(ratio, 3)}, indent=2))


if __name__ == "__main__":
    main()
