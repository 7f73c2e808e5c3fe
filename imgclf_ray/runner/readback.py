"""What a run reads back from its staged files before it commits — the counts of its summary, the
completeness check, the cluster and flag summaries, the incremental state record — as the
engine's tasks (Ray tasks, or calls in this process), one scan per staged file. The driver merges
counts and a few exemplars; it never holds the run's rows, whatever the run's size.

- scan (a task per staged file): its counts (``FileSummary``), its state rows (incremental jobs),
  and its (uri, image_id) pairs split by a stable hash of the uri into P partitions;
- the listed uris split the same way (a task per manifest block);
- check (a task per partition): rows written, distinct rows and listed files missing from the
  output, for that partition's uris; the driver adds them up;
- the state record: one task streams the scans' state rows into the attempt's state file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgclf_ray.errors import RunFailed
from imgclf_ray.io.schema import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED
from imgclf_ray.io.storage import filesystem
from imgclf_ray.runner.selection import split_by_uri
from imgclf_ray.spec import JobSpec, StorageSpec

SAMPLE_ERRORS = 20  # error rows quoted in the run summary
EXEMPLARS = 5  # rows nearest each cluster's centre quoted in _clusters.json


@dataclass
class FileSummary:
    """Counts of some staged rows, added up file by file (``merge``)."""

    rows: int = 0
    by_status: Counter = field(default_factory=Counter)
    by_label: Counter = field(default_factory=Counter)  # ok rows
    errors_by_stage: Counter = field(default_factory=Counter)
    errors_by_cause: Counter = field(default_factory=Counter)
    sample_errors: list = field(default_factory=list)  # the first error rows, in staged order
    flags: Counter = field(default_factory=Counter)  # rows flagged, per curation check
    # cluster -> [rows, sum of distances, distances counted, [(distance, file, row, uri) nearest]]
    clusters: dict = field(default_factory=dict)

    def merge(self, other: "FileSummary") -> "FileSummary":
        self.rows += other.rows
        for mine, theirs in ((self.by_status, other.by_status), (self.by_label, other.by_label),
                             (self.errors_by_stage, other.errors_by_stage),
                             (self.errors_by_cause, other.errors_by_cause), (self.flags, other.flags)):
            mine.update(theirs)
        self.sample_errors = (self.sample_errors + other.sample_errors)[:SAMPLE_ERRORS]
        for cluster, (n, total, counted, nearest) in other.clusters.items():
            entry = self.clusters.setdefault(cluster, [0, 0.0, 0, []])
            entry[0] += n
            entry[1] += total
            entry[2] += counted
            entry[3] = sorted(entry[3] + nearest)[:EXEMPLARS]
        return self


def _columns(spec: JobSpec) -> list[str]:
    from imgclf_ray.io.state import STATE_COLUMNS

    columns = ["image_id", "uri", "status", "error", "label"]
    if spec.curate is not None or spec.cluster is not None:
        columns += ["cluster", "cluster_distance", *(f"is_{c}" for c in spec.curate_checks())]
    if spec.incremental is not None:
        columns += STATE_COLUMNS
    return list(dict.fromkeys(columns))


@dataclass(frozen=True)
class Scan:
    """What the read-back takes from each staged file: ``Scan(...)(table, index)`` is the file's
    FileSummary, its state rows (None unless ``state``) and its (uri, image_id) pairs in
    ``partitions`` parts. Called by the read-back's own task on a file it reads, or by the task
    that rewrites a file anyway (the archive-wide curation pass: the file is not read again)."""

    columns: list[str]
    flags: list[str]
    state: bool
    partitions: int

    def __call__(self, t: pa.Table, index: int) -> tuple:
        return _scan_table(t.select(self.columns), index, self.flags, self.state, self.partitions)


def scan(uri: str, index: int, storage: StorageSpec, how: Scan) -> tuple:
    """One staged file (the ``index``-th), read and scanned (a task)."""
    from imgclf_ray.io.tables import read_columns

    return how(read_columns([uri], how.columns, storage), index)


def _scan_table(t: pa.Table, index: int, flags: list[str], state: bool, partitions: int) -> tuple:
    from imgclf_ray.io.state import STATE_COLUMNS
    from imgclf_ray.io.tables import count_values
    from imgclf_ray.runner.result import error_cause

    s = FileSummary(rows=t.num_rows)
    status = t.column("status")
    s.by_status.update(count_values(status))
    ok = t.filter(pc.equal(status, STATUS_OK))
    s.by_label.update(count_values(ok.column("label")))
    errors = t.filter(pc.equal(status, STATUS_ERROR))
    messages = errors.column("error").to_pylist()
    s.errors_by_stage.update(m.split(": ", 1)[0] for m in messages if m is not None)
    s.errors_by_cause.update(error_cause(m) for m in messages)
    s.sample_errors = errors.slice(0, SAMPLE_ERRORS).select(["uri", "error"]).to_pylist()
    for f in flags:
        s.flags[f[3:]] = int(pc.sum(pc.fill_null(t.column(f), False)).as_py() or 0)
    if "cluster" in t.column_names:
        s.clusters = _cluster_counts(t, index)
    records = None
    if state:
        records = t.filter(pc.is_in(status, pa.array([STATUS_OK, STATUS_SKIPPED]))).select(STATE_COLUMNS)
    ids = split_by_uri(t.select(["uri", "image_id"]), partitions)
    return (s, records, *ids) if partitions > 1 else (s, records, ids)


def _cluster_counts(t: pa.Table, index: int) -> dict:
    out: dict = {}
    cluster = t.column("cluster").to_numpy(zero_copy_only=False)
    valid = ~pc.is_null(t.column("cluster")).to_numpy(zero_copy_only=False)
    dist = t.column("cluster_distance").to_numpy(zero_copy_only=False).astype(np.float64)
    uris = t.column("uri")
    for c in np.unique(cluster[valid]).tolist():
        rows = np.flatnonzero(valid & (cluster == c))
        d = dist[rows]
        finite = ~np.isnan(d)
        key = np.nan_to_num(d, nan=np.inf)
        nearest = rows[np.argsort(key, kind="stable")[:EXEMPLARS]]
        out[int(c)] = [len(rows), float(d[finite].sum()), int(finite.sum()),
                       [(float(np.nan_to_num(dist[r], nan=np.inf)), index, int(r), uris[int(r)].as_py())
                        for r in nearest]]
    return out


def split_listed(manifest: pa.Table, partitions: int):
    """The listed uris of a manifest block in ``partitions`` parts (a task)."""
    return split_by_uri(manifest.select(["uri"]), partitions)


def check_partition(listed_parts: int, *parts: pa.Table) -> tuple[int, int, int, int]:
    """(files listed, rows written, distinct rows, listed files with no row) of one partition (a task)."""
    listed = pa.concat_tables([p for p in parts[:listed_parts]]) if listed_parts else None
    written = pa.concat_tables(parts[listed_parts:]) if len(parts) > listed_parts else None
    n_listed = listed.num_rows if listed is not None else 0
    n_written = written.num_rows if written is not None else 0
    distinct = len(pc.unique(written.column("image_id"))) if n_written else 0
    missing = 0
    if n_listed:
        seen = written.column("uri") if n_written else pa.array([], pa.string())
        missing = int(pc.sum(pc.invert(pc.is_in(listed.column("uri"), pc.unique(seen)))).as_py() or 0)
    return n_listed, n_written, distinct, missing


def write_state(state_file: str, storage: StorageSpec, parts: list) -> int:
    """Stream the scans' state rows (``parts``: tables or Ray references to them, in a list so that
    they are fetched one at a time) into the attempt's state file (a task); returns the rows."""
    fs, path = filesystem(state_file, storage)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    rows = 0
    with fs.open(path, "wb") as fh:
        writer = None
        for part in parts:
            table = _resolve(part)
            if writer is None:
                writer = pq.ParquetWriter(fh, table.schema)
            if table.num_rows:
                writer.write_table(table)
                rows += table.num_rows
        if writer is not None:
            writer.close()
    return rows


def _resolve(obj):
    import ray

    return ray.get(obj) if isinstance(obj, ray.ObjectRef) else obj


@dataclass
class Readback:
    """A run's staged output, read back: the merged counts and the state parts still to write."""

    summary: FileSummary
    state_parts: list  # per staged file: a state-rows table, or a reference to one
    listed: int
    written: int
    distinct: int
    missing: int
    rows_per_file: dict[str, int] = field(default_factory=dict)  # staged file name -> rows: the commit's counts

    def check_complete(self, frames: str = "one") -> None:
        """Every listed input in the staged output, each row (uri + frame) once; with
        decode.frames: all (or a container) a file gives one row per part."""
        if frames == "all":
            if self.missing or self.distinct != self.written:
                raise RunFailed(f"output check failed: {self.listed} files listed, {self.missing} missing "
                                f"from the {self.written} rows written ({self.distinct} distinct); nothing "
                                "was committed")
            return
        if self.written != self.listed or self.distinct != self.listed:
            raise RunFailed(f"output check failed: {self.listed} images listed, {self.written} rows written "
                            f"({self.distinct} distinct); nothing was committed")

    def cluster_doc(self) -> list[dict[str, Any]]:
        """_clusters.json's clusters: size, mean distance to the centre, the nearest rows' uris."""
        out = []
        for cluster, (n, total, counted, nearest) in sorted(self.summary.clusters.items()):
            out.append({"cluster": int(cluster), "size": n,
                        "mean_distance": round(total / counted, 4) if counted else None,
                        "exemplars": [uri for *_, uri in nearest]})
        return out


def scan_of(spec: JobSpec, partitions: int) -> Scan:
    flags = [f"is_{c}" for c in spec.curate_checks()] if (spec.curate or spec.cluster) else []
    return Scan(_columns(spec), flags, spec.incremental is not None, partitions)


def read_back(tasks, spec: JobSpec, staged: list[str], manifest_parts: list, scans: Optional[list] = None) -> Readback:
    """Scan the staged files and check them against the listing (``manifest_parts``: manifest
    tables or references to them) with the engine's ``tasks``; ``scans``: each file's scan made
    already (by the task that rewrote it), in staged order — then no file is read here."""
    p = tasks.cpus
    how = scan_of(spec, p)
    if scans is None:
        scans = [tasks.submit(scan, uri, i, spec.storage, how, num_returns=2 + p) for i, uri in enumerate(staged)]
    listed = [tasks.submit(split_listed, m, p, num_returns=p) for m in manifest_parts]
    if p == 1:
        listed = [[part] for part in listed]
    checks = [tasks.submit(check_partition, len(listed), *[lp[i] for lp in listed], *[s[2 + i] for s in scans])
              for i in range(p)]
    summary, per_file = FileSummary(), {}
    for uri, s in zip(staged, tasks.get([s[0] for s in scans])):
        per_file[uri.rsplit("/", 1)[-1]] = s.rows
        summary.merge(s)
    totals = np.array(tasks.get(checks), dtype=np.int64).reshape(-1, 4).sum(axis=0)
    return Readback(summary, [s[1] for s in scans], *map(int, totals), rows_per_file=per_file)
