"""What a sink holds and how its files are named (no I/O beyond small helpers on one filesystem)."""

from __future__ import annotations

import re
import uuid
from datetime import date
from typing import Any, Optional

from imgclf_ray.errors import UserError
from imgclf_ray.ids import id_problem
from imgclf_ray.io.storage import is_local

STAGED_SUFFIX = ".parquet.staged"
SCAN_SUFFIX = ".scan"  # beside staged files: what a writer kept for the archive-wide scan (never committed)
COMMIT_PLAN = "_commit.json"
MANIFEST_FILE = "_manifest.json"
SUCCESS_FILE = "_SUCCESS"
SUMMARY_FILE = "_run_summary.json"
RUNS_DIR = "_runs"  # the run records of a Delta sink
# Output schema 1 named the side files without the leading "_" (folder readers then read them as data).
LEGACY_NAMES = {"_run_summary.json": "run_summary.json", "_clusters.json": "clusters.json",
                "_evaluation.json": "evaluation.json"}
# What a commit names its data files: a damaged run's files are found by it.
COMMITTED_NAME = re.compile(r"part-\d{5}-[A-Za-z0-9_.-]+\.parquet")


def run_path(layout: str, run_id: str, run_date: date, name: str) -> str:
    """A run's folder under the sink, from ``sink.layout``."""
    return layout.format(run_id=run_id, date=run_date.isoformat(), year=f"{run_date.year:04d}",
                         month=f"{run_date.month:02d}", day=f"{run_date.day:02d}", name=name)


def staged_filename(write_uuid: str, task_index: int) -> str:
    """Template for one write task's files; ``{i}`` numbers the files of that task."""
    return f"{write_uuid}_{task_index:06d}-{{i}}{STAGED_SUFFIX}"


def committed_name(index: int, attempt: str) -> str:
    return f"part-{index:05d}-{attempt}.parquet"


def file_name_problem(name: object) -> Optional[str]:
    """Why ``name`` cannot be a file of a run folder (None if it can): a plain name, or "_" and a
    plain name (side files: folder readers skip names starting with "_")."""
    return id_problem(name[1:] if isinstance(name, str) and name.startswith("_") else name)


def listed(manifest: dict[str, Any]) -> list[str]:
    """The file names a manifest says its run wrote (data files and side files)."""
    names = [f["path"] for f in manifest.get("files", [])]
    names += list(manifest.get("side_files", [LEGACY_NAMES[SUMMARY_FILE]]))
    for name in names:
        problem = file_name_problem(name)
        if problem:
            raise UserError(f"a manifest of run {manifest.get('run_id')!r} lists {name!r}: {problem}; "
                            "it was not written by imgclf and nothing was deleted")
    return names


def put_atomic(fs, path: str, blob: bytes) -> None:
    """Write a small file so that a reader sees the old or the new content, never a part (object
    stores: one PUT; local: a temporary file renamed over it)."""
    if is_local(fs):
        import os

        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, blob)


def remove(fs, paths) -> None:
    """Delete the given files, one by one (never a folder), ignoring those already gone."""
    for path in paths:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass


def rmdir_if_empty(fs, path: str) -> None:
    try:
        if fs.isdir(path) and not fs.ls(path):
            fs.rmdir(path)
    except OSError:  # not empty after all, or the store has no folders
        pass
