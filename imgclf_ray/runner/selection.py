"""Listing and incremental selection as Ray tasks: the manifest stays in the object store.

The driver holds object references and counts, never the archive's rows:

- list: one task per sub-prefix of ``source.uri`` (``fs.find``), or per data file of an S3
  Inventory (``source.inventory``); each returns a block of manifest rows (uri, size, etag) and the
  counts of what it left out.
- select (incremental jobs): a hash join of the listed blocks with the committed state records,
  partitioned by uri — map tasks split the blocks and the state files by a stable hash of the uri
  into P partitions, and one task per partition keeps the latest record of each uri (later commits
  win) and decides each listed row: new, changed (size or etag), model changed, or unchanged.

``imgclf run --dry-run`` runs these and prints the counts; a run over an inventory runs them and
hands the selected blocks to Ray Data (``runner.build.load_dataset``) and to the read-back of its
output (``runner.readback``): the driver holds references and counts.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgclf_ray.io.listing import (GLOB_CHARS, MANIFEST_SCHEMA, entries_to_manifest, list_archive, no_images,
                                   skipped_counts)
from imgclf_ray.io.state import STATE_COLUMNS, pending, remember
from imgclf_ray.io.storage import describe_os_error, filesystem
from imgclf_ray.errors import SourceError, UserError
from imgclf_ray.spec import SourceSpec, StorageSpec

REASONS = ("new", "changed", "model_changed", "other_model", "unchanged")


def _get(refs):
    """ray.get, with a user error raised in a task (an unreadable inventory file, a prefix that
    cannot be listed) re-raised as itself: one error line, not the task's traceback."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, UserError):
            raise exc.cause from None
        raise


@dataclass
class Blocks:
    """Manifest rows in the object store: references to Arrow tables, with their counts. A run
    over an inventory hands them to Ray Data as they are; the driver never holds the rows."""

    refs: list = field(default_factory=list)
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    tasks: int = 0  # listing tasks (sub-prefixes or inventory data files)
    counts: list = field(default_factory=list)  # rows per block

    @property
    def num_rows(self) -> int:
        return self.rows

    def table(self) -> pa.Table:
        """The rows in this process (tests and small manifests only)."""
        tables = [t for t in _get(self.refs) if t.num_rows]
        return pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()

    def take(self, indices: np.ndarray) -> pa.Table:
        """The rows at these positions (sorted), brought here: a clusterer's fit sample."""
        import ray

        bounds = np.cumsum([0, *self.counts])
        calls = []
        for b, ref in enumerate(self.refs):
            mine = indices[(indices >= bounds[b]) & (indices < bounds[b + 1])] - bounds[b]
            if len(mine):
                calls.append(ray.remote(num_cpus=0.25)(_take).remote(ref, mine))
        tables = _get(calls)
        return pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()

    def map(self, fn, *args) -> "Blocks":
        """``fn(block, *args)`` on every block, as Ray tasks, waited for (a user error raised in
        one, such as a labels table without its column, is raised here), the rows left there."""
        import ray

        task = ray.remote(num_cpus=0.25, max_retries=3)(_mapped).options(num_returns=2)
        calls = [task.remote(fn, ref, *args) for ref in self.refs]
        _get([c[1] for c in calls])
        return Blocks([c[0] for c in calls], self.rows, self.skipped, self.tasks, self.counts)


def _take(table: pa.Table, indices: np.ndarray) -> pa.Table:
    return table.take(pa.array(indices))


def _mapped(fn, table: pa.Table, *args):
    return fn(table, *args), True


def _list_prefix(prefix: str, storage: StorageSpec, extensions: Optional[tuple[str, ...]]):
    """One sub-prefix's manifest block, and its row count and skipped counts (a Ray task)."""
    fs, _ = filesystem(prefix, storage)
    try:
        found = fs.find(prefix, detail=True)
    except OSError as exc:
        raise SourceError(f"{prefix}: cannot list ({describe_os_error(exc)})") from None
    table, skipped = entries_to_manifest(fs, found, extensions)
    return table, (table.num_rows, skipped)


def _list_inventory_file(inventory, file_uri: str, source: SourceSpec, storage: StorageSpec):
    """One inventory data file's manifest block, and its row count and skipped counts (a Ray task)."""
    from imgclf_ray.io.inventory import inventory_rows

    table, skipped = inventory_rows(inventory, file_uri, source, storage)
    return table, (table.num_rows, skipped)


def list_blocks(source: SourceSpec, storage: StorageSpec = StorageSpec()) -> Blocks:
    """List the archive with Ray tasks; SourceError as ``list_archive`` raises it."""
    import ray

    task = ray.remote(num_cpus=0.25, max_retries=3)
    out = Blocks()
    if source.inventory:
        from imgclf_ray.io.inventory import read_inventory

        inventory = read_inventory(source.inventory, storage)
        calls = [task(_list_inventory_file).options(num_returns=2).remote(inventory, f, source, storage)
                 for f in inventory.files]
        extensions = None if source.sniff else tuple(source.extensions)
    else:
        fs, root = filesystem(source.uri, storage)
        extensions = None if source.sniff else tuple(source.extensions)
        if GLOB_CHARS & set(root) or fs.isfile(root) or not source.recursive:
            table = list_archive(source, storage)  # a glob, one file or one level: listed here
            return Blocks([ray.put(table)], table.num_rows, skipped_counts(table), 1, [table.num_rows])
        if not fs.isdir(root):
            raise SourceError(f"{source.uri}: no such folder or prefix (source.uri)")
        try:
            entries = fs.ls(root, detail=True)
        except OSError as exc:
            raise SourceError(f"{source.uri}: cannot list ({describe_os_error(exc)})") from None
        top = {e["name"]: e for e in entries if e.get("type") != "directory"}
        here, skipped = entries_to_manifest(fs, top, extensions)
        out.refs.append(ray.put(here))
        out.counts.append(here.num_rows)
        out.rows += here.num_rows
        out.skipped = dict(skipped)
        calls = [task(_list_prefix).options(num_returns=2).remote(e["name"], storage, extensions)
                 for e in entries if e.get("type") == "directory"]
    out.tasks = len(calls)
    for (block, _), (rows, skipped) in zip(calls, _get([c[1] for c in calls])):
        out.refs.append(block)
        out.counts.append(rows)
        out.rows += rows
        for why, n in skipped.items():
            out.skipped[why] = out.skipped.get(why, 0) + n
    if not out.rows:
        raise no_images(source, out.skipped, extensions)
    return out


def _partition(uris: pa.ChunkedArray, partitions: int) -> np.ndarray:
    """A stable partition of each uri (the same in every process: crc32, not Python's hash)."""
    return np.fromiter((zlib.crc32(u.encode()) % partitions for u in uris.to_pylist()), np.int64, len(uris))


def split_by_uri(table: pa.Table, partitions: int):
    """The rows of ``table`` in each partition of their uri: a tuple, or the table itself for one
    partition (what a Ray task with ``num_returns=1`` must return)."""
    part = _partition(table.column("uri"), partitions)
    out = tuple(table.filter(pa.array(part == p)) for p in range(partitions))
    return out if partitions > 1 else out[0]


def _split_state(uri: str, order: int, partitions: int, storage: StorageSpec) -> tuple:
    from imgclf_ray.io.tables import read_columns

    t = read_columns([uri], STATE_COLUMNS, storage).select(["uri", "size", "etag", "model_id"])
    return split_by_uri(t.append_column("order", pa.array(np.full(t.num_rows, order, np.int64))), partitions)


def _select_partition(model_id: Optional[str], reprocess: bool, listed_count: int, *parts: pa.Table):
    """One partition's rows to process and the count of each reason (a Ray task)."""
    listed = [t for t in parts[:listed_count] if t.num_rows]
    state = [t for t in parts[listed_count:] if t.num_rows]
    why = dict.fromkeys(REASONS, 0)
    if not listed:
        return MANIFEST_SCHEMA.empty_table(), why
    rows = pa.concat_tables(listed)
    seen: dict[str, tuple] = {}
    if state:
        s = pa.concat_tables(state)
        remember(seen, s.take(pc.sort_indices(s, [("order", "ascending")])))  # later commits win
    todo, why = pending(rows, seen, model_id, reprocess)
    return todo.take(pc.sort_indices(todo, [("uri", "ascending")])), why


def select_blocks(listed: Blocks, records: list[str], model_id: Optional[str], reprocess: bool,
                  storage: StorageSpec, partitions: Optional[int] = None) -> tuple[Blocks, dict[str, int]]:
    """The listed rows earlier committed runs (their state ``records``, oldest first) have not
    processed with ``model_id``: a distributed hash join; returns them and the count of each reason."""
    import ray

    if partitions is None:  # about a million rows per partition, at least one per CPU
        cpus = int(ray.cluster_resources().get("CPU", 1))
        partitions = max(1, cpus, -(-listed.rows // 1_000_000))
    task = ray.remote(num_cpus=0.5)
    listed_parts = [task(split_by_uri).options(num_returns=partitions).remote(ref, partitions)
                    for ref in listed.refs]
    state_parts = [task(_split_state).options(num_returns=partitions).remote(uri, i, partitions, storage)
                   for i, uri in enumerate(records)]
    if partitions == 1:  # num_returns=1 gives a reference, not a tuple of one
        listed_parts, state_parts = [[p] for p in listed_parts], [[p] for p in state_parts]
    calls = [task(_select_partition).options(num_returns=2).remote(
        model_id, reprocess, len(listed_parts), *[lp[p] for lp in listed_parts], *[sp[p] for sp in state_parts])
        for p in range(partitions)]
    why = dict.fromkeys(REASONS, 0)
    sizes = []
    for counts in _get([c[1] for c in calls]):
        for k, v in counts.items():
            why[k] += v
        sizes.append(counts["new"] + counts["changed"] + counts["model_changed"])
    todo = Blocks([c[0] for c in calls], sum(sizes), dict(listed.skipped), listed.tasks, sizes)
    return todo, why
