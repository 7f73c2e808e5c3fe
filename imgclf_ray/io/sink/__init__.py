"""Exactly-once output: data files are staged, checked, then committed with a manifest and _SUCCESS.

One ``Sink`` per sink URI, made once (the filesystem looked up once, its root, format and storage
options held), offers the roles, each in its own module: ``commit`` (staging, the commit protocol
and its recovery: ``protocol.py``), ``runs`` (which runs it holds, in any layout: ``runs.py``) and
``read`` (one run folder: its manifest, data files and rows: ``read.py``); ``layout.py`` names the
files. The free functions below are the same operations for a caller holding only a URI (the
readers of the Python API and the reports).

Layout under ``sink.uri`` (``<run>`` is ``sink.layout``: ``<run_id>`` by default, or e.g.
``date=2026-11-28/<run_id>`` to partition the runs by date)::

    <run>/part-00000-<attempt>.parquet ...  committed data files (the only *.parquet files)
    <run>/_manifest.json              files, row counts, run facts (run_id, attempt, run_date, run_path)
    <run>/_run_summary.json           counts, errors by stage and cause, stage throughput (alerting)
    <run>/_SUCCESS                    written last: a run without it is not committed
    _staging/<run_id>/<attempt>/      work in progress, files named *.parquet.staged (with archive-wide
                                      checks, *.scan beside them: the ok rows' columns the scan
                                      needs), and the commit's plan (_commit.json) while it commits
    _locks/<run_id>.lock              the run id's lock (imgclf_ray.io.lock)

Readers trust a run only when ``_SUCCESS`` exists, and then only the files its manifest lists. What a
reader that globs ``**/*.parquet`` sees is in the README's "Guarantees": staged files never (they do
not end in ``.parquet``); while a run commits, its files appear one by one before its ``_SUCCESS``;
while a run id is replaced, the old files until the new manifest is written, then both sets for
as long as the old files take to delete — never fewer than one whole set.

With ``sink.format: delta`` the rows go into one Delta table at ``sink.uri`` instead (one Delta
commit per run, replacing that run id's rows: imgclf_ray.io.delta), and the run records
(manifest with ``files: []`` and the table version, summary, _SUCCESS) into ``_runs/<run_id>/``.
"""

from __future__ import annotations

from typing import Any, Optional

from imgclf_ray.io.sink import protocol as _commit, runs as _runs
from imgclf_ray.io.sink.protocol import Staging, add_side_file
from imgclf_ray.io.sink.layout import (COMMIT_PLAN, LEGACY_NAMES, MANIFEST_FILE, RUNS_DIR, SCAN_SUFFIX,
                                       STAGED_SUFFIX, SUCCESS_FILE, SUMMARY_FILE, file_name_problem, run_path,
                                       staged_filename)
from imgclf_ray.io.sink.read import RunFolder
from imgclf_ray.io.storage import filesystem
from imgclf_ray.spec import StorageSpec

__all__ = ["COMMIT_PLAN", "LEGACY_NAMES", "MANIFEST_FILE", "RUNS_DIR", "SCAN_SUFFIX", "STAGED_SUFFIX", "SUCCESS_FILE",
           "SUMMARY_FILE", "RunFolder", "Sink", "Staging", "add_side_file", "check_format", "commit",
           "committed_files", "committed_runs", "file_name_problem", "list_runs", "read_manifest", "read_rows",
           "read_run_json", "recover", "recover_others", "resolve_run", "run_files", "run_path",
           "staged_filename"]


class Sink:
    """One sink (``sink.uri``): its filesystem, looked up once, root, format and storage options."""

    def __init__(self, uri: str, storage: Optional[StorageSpec] = None, format: str = "parquet"):
        self.uri = uri.rstrip("/")
        self.storage = storage or StorageSpec()
        self.format = format
        self.fs, root = filesystem(self.uri, self.storage)
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"Sink({self.uri!r}, format={self.format!r})"

    # -- commit ---------------------------------------------------------------------------------
    def staging(self, run_id: str, run_path: Optional[str] = None, attempt: Optional[str] = None) -> Staging:
        """Where a new attempt of ``run_id`` writes (a Delta sink's run record: _runs/<run_id>)."""
        return _commit.new_staging(self, run_id, run_path, attempt)

    def commit(self, staging: Staging, facts: dict[str, Any], extra_files: Optional[dict[str, bytes]] = None,
               rows: Optional[dict[str, int]] = None) -> dict[str, Any]:
        return _commit.commit(staging, facts, extra_files, rows)

    def recover(self, run_id: str, keep: str = "") -> None:
        _commit.recover(self, run_id, keep)

    def recover_others(self, skip: str = "") -> None:
        _commit.recover_others(self, skip)

    def check_format(self) -> None:
        """Refuse a sink that holds the other format's runs (a Delta VACUUM would delete Parquet
        runs' files; a Parquet run would sit among a table's files)."""
        from imgclf_ray.errors import UserError
        from imgclf_ray.io import delta

        if self.format == "delta":
            delta.require()
        table = delta.is_table_at(self.fs, self.root)
        if self.format == "parquet" and table:
            raise UserError(f"{self.uri} is a Delta table: set sink.format: delta to add runs to it, or choose "
                            "another sink.uri")
        if self.format == "delta" and not table and self.committed_runs():
            raise UserError(f"{self.uri} holds Parquet runs: a Delta sink needs a folder of its own "
                            "(choose another sink.uri, or keep sink.format: parquet)")

    # -- runs -----------------------------------------------------------------------------------
    def committed_runs(self, run_id: Optional[str] = None, every: bool = False):
        return _runs.committed_runs(self, run_id, every)

    def list_runs(self, damaged: bool = False) -> list[dict[str, Any]]:
        return _runs.list_runs(self, damaged)

    def resolve_run(self, run_id: Optional[str] = None) -> str:
        return _runs.resolve_run(self, run_id)

    def committed_files(self, run_id: str) -> list[str]:
        """URIs of a committed run's data files, from its manifest; [] if the run is not committed."""
        found = self.committed_runs(run_id)
        return self.run(found[run_id]).files() if run_id in found else []

    # -- read -----------------------------------------------------------------------------------
    def run(self, run_uri: str) -> RunFolder:
        """A run folder of this sink (a URI under it), on the sink's filesystem."""
        return RunFolder(self.fs, self.fs._strip_protocol(run_uri).rstrip("/"), self.storage, run_uri.rstrip("/"))


# -- the same for a caller holding only a URI ------------------------------------------------------

def commit(staging: Staging, facts: dict[str, Any], extra_files: Optional[dict[str, bytes]] = None,
           rows: Optional[dict[str, int]] = None) -> dict[str, Any]:
    return _commit.commit(staging, facts, extra_files, rows)


def recover(sink_uri: str, run_id: str, storage: StorageSpec = StorageSpec(), keep: str = "") -> None:
    Sink(sink_uri, storage).recover(run_id, keep)


def recover_others(sink_uri: str, storage: StorageSpec = StorageSpec(), skip: str = "") -> None:
    Sink(sink_uri, storage).recover_others(skip)


def check_format(sink_uri: str, format: str, storage: StorageSpec = StorageSpec()) -> None:
    Sink(sink_uri, storage, format).check_format()


def committed_runs(sink_uri: str, storage: StorageSpec = StorageSpec(), run_id: Optional[str] = None,
                   every: bool = False):
    return Sink(sink_uri, storage).committed_runs(run_id, every)


def committed_files(sink_uri: str, run_id: str, storage: StorageSpec = StorageSpec()) -> list[str]:
    return Sink(sink_uri, storage).committed_files(run_id)


def list_runs(sink_uri: str, storage: StorageSpec = StorageSpec(), damaged: bool = False) -> list[dict[str, Any]]:
    return Sink(sink_uri, storage).list_runs(damaged)


def resolve_run(output_uri: str, run_id: Optional[str] = None, storage: StorageSpec = StorageSpec()) -> str:
    return Sink(output_uri, storage).resolve_run(run_id)


def read_manifest(run_uri: str, storage: StorageSpec = StorageSpec()) -> dict[str, Any]:
    return RunFolder.at(run_uri, storage).manifest()


def run_files(run_uri: str, storage: StorageSpec = StorageSpec()) -> list[str]:
    return RunFolder.at(run_uri, storage).files()


def read_rows(run_uri: str, columns=None, storage: StorageSpec = StorageSpec()):
    return RunFolder.at(run_uri, storage).rows(columns)


def read_run_json(run_uri: str, name: str, storage: StorageSpec = StorageSpec()) -> Optional[dict[str, Any]]:
    return RunFolder.at(run_uri, storage).json(name)
