"""Archive-wide curation checks: a second, distributed pass over a run's staged output.

Checks that compare an image with the rest of the archive cannot be decided one batch at a time.
After the pipeline has staged every row (and before anything is committed) this pass runs as Ray
tasks, map-reduce style, so no step needs the whole archive in one process:

1. scan (one task per scan-inputs file: the ok rows' columns the checks need, which the writer
   kept beside what it staged, so this pass reads no staged file before its rewrite): the counts
   of each distinct sqrt(width x height) (an archive holds few distinct image sizes, so exact
   quartiles need no more); per-class sums of the self-confidence for label issues; the rows' ``pixel_hash`` and their perceptual-hash *bands*
   routed into P partitions by hash.
2. reduce (one task per partition): exact duplicates = rows sharing a ``pixel_hash``; near-duplicate
   candidates = rows sharing a band. With radius r the 64 hash bits are cut into r + 1 bands, so
   two hashes within r bits agree exactly on at least one band (pigeonhole): only rows in the
   same band bucket are compared, with a vectorised popcount, never all pairs of the archive; a
   bucket's rows are linked into components there, and each row sends one link (to its
   component's first row) per band: at most (r + 1) x n links reach the driver, not the pairs.
3. the driver links the near-duplicate links into groups (union-find over the links only), drops
   the near groups that are exactly a duplicate group (as cleanvision does), and merges the size
   counts into the archive's quartiles.
4. rewrite (one task per staged file, its one read): adds the archive-wide scores and flags to
   each row.

The Ray orchestration of these plain functions is ``runner.passes.archive_checks``. Definitions are
cleanvision's: odd size by the IQR rule on sqrt(area), every member of a duplicate set flagged,
near duplicates = equal perceptual hashes (``curate.near_duplicate_radius`` widens that). A
group's id (its ``*_group`` column) is its first image by uri.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgclf_ray.curation.measure import hamming
from imgclf_ray.io.schema import OUTPUT_SCHEMA, STATUS_OK
from imgclf_ray.io.storage import filesystem
from imgclf_ray.registry import CURATION_CHECKS
from imgclf_ray.spec import CurateSpec, StorageSpec

def _read(fs, path: str, columns: Optional[list[str]] = None) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(io.BytesIO(f.read()), columns=columns)


def bands(radius: int) -> list[tuple[int, int]]:
    """(shift, width) of the r + 1 bands that cut a 64-bit hash."""
    n = radius + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    out, shift = [], 64
    for w in widths:
        shift -= w
        out.append((shift, w))
    return out


def _band_values(phash: np.ndarray, radius: int) -> list[np.ndarray]:
    u = phash.astype(np.int64).view(np.uint64)
    return [(u >> np.uint64(shift)) & np.uint64((1 << w) - 1 if w < 64 else 0xFFFFFFFFFFFFFFFF)
            for shift, w in bands(radius)]


def route_bands(rows: pa.Table, radius: int, partitions: int) -> list[pa.Table]:
    """One row per (row, band) with the band's value, split into ``partitions`` by (band, value)."""
    phash = rows.column("phash").to_numpy(zero_copy_only=False).astype(np.int64)
    tables = []
    for b, value in enumerate(_band_values(phash, radius)):
        tables.append(pa.table({
            "band": pa.array(np.full(len(value), b, np.int8)), "value": pa.array(value),
            "image_id": rows.column("image_id"), "uri": rows.column("uri"), "phash": pa.array(phash)}))
    banded = pa.concat_tables(tables)
    value = banded.column("value").to_numpy()
    band = banded.column("band").to_numpy().astype(np.uint64)
    with np.errstate(over="ignore"):  # a multiplicative hash: wrapping is intended
        part = ((value ^ (band * np.uint64(0x9E3779B97F4A7C15))) % np.uint64(partitions)).astype(np.int64)
    return [banded.filter(pa.array(part == p)) for p in range(partitions)]


def _self_confidence_inputs(t: pa.Table, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities rows x classes, index of the true label or -1) of rows with both."""
    index = {label: i for i, label in enumerate(labels)}
    scores = t.column("class_scores").to_pylist()
    truth = t.column("true_label").to_pylist()
    k = len(labels)
    probs = np.zeros((len(scores), k), dtype=np.float64)
    given = np.full(len(scores), -1, dtype=np.int64)
    for i, (p, y) in enumerate(zip(scores, truth)):
        if p is not None and len(p) == k and y in index:
            probs[i], given[i] = p, index[y]
    return probs, given


def _runs(keys: list) -> list[tuple[int, int]]:
    """[start, end) of runs of equal consecutive keys, for runs of two or more."""
    out, start = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            if i - start >= 2:
                out.append((start, i))
            start = i
    return out


def reduce_exact(*parts: pa.Table) -> dict[str, tuple[str, bool]]:
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return {}
    t = pa.concat_tables(parts)
    t = t.take(pc.sort_indices(t, [("pixel_hash", "ascending"), ("uri", "ascending"), ("image_id", "ascending")]))
    hashes, ids = t.column("pixel_hash").to_pylist(), t.column("image_id").to_pylist()
    members: dict[str, tuple[str, bool]] = {}
    for start, end in _runs(hashes):
        rep = ids[start]
        for j in range(start, end):
            members[ids[j]] = (rep, True)  # every member is flagged, as cleanvision does
    return members


def _bucket_components(h: np.ndarray, radius: int) -> np.ndarray:
    """Component label of each hash of one band bucket, hashes linked when within ``radius`` bits
    (transitively). Equal hashes are compared once; the distinct ones in blocks of 1,024 against
    all, each block's links merged into the labels by a connected-components pass over labels, so
    memory stays at one block and nothing per pair is kept."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    uniq, inverse = np.unique(h, return_inverse=True)
    m = len(uniq)
    label = np.arange(m)
    if radius > 0 and m > 1:
        for offset in range(0, m, 1024):
            a, b = np.nonzero(hamming(uniq[offset:offset + 1024, None], uniq[None, :]) <= radius)
            la, lb = label[a + offset], label[b]
            keep = la != lb
            if not keep.any():
                continue
            graph = coo_matrix((np.ones(int(keep.sum()), np.int8), (la[keep], lb[keep])), shape=(m, m))
            _, merged = connected_components(graph, directed=False)
            label = merged[label]
    return label[inverse]


def reduce_near(radius: int, *parts: pa.Table) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Links between rows within ``radius`` bits (transitively) that share a band, and the uris of
    their rows. Per band bucket, each row is linked to the first row of its component — at most
    one link per row and band, so at most (radius + 1) x rows links in all, however many rows are
    near-identical (a parked car filmed at 1 fps): the groups they make are those of all pairs."""
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return [], {}
    t = pa.concat_tables(parts)
    t = t.take(pc.sort_indices(t, [("band", "ascending"), ("value", "ascending"), ("image_id", "ascending")]))
    keys = list(zip(t.column("band").to_pylist(), t.column("value").to_pylist()))
    ids = t.column("image_id").to_pylist()
    uris = t.column("uri").to_pylist()
    phash = t.column("phash").to_numpy()
    links: set[tuple[str, str]] = set()
    involved: dict[str, str] = {}
    for start, end in _runs(keys):
        component = _bucket_components(phash[start:end], radius)
        first: dict[int, int] = {}
        for j, c in enumerate(component.tolist()):
            a, b = first.setdefault(c, start + j), start + j
            if ids[a] != ids[b]:
                links.add((min(ids[a], ids[b]), max(ids[a], ids[b])))
                involved[ids[a]], involved[ids[b]] = uris[a], uris[b]
    return sorted(links), involved


def link(pairs: list[tuple[str, str]], uris: dict[str, str]) -> dict[str, tuple[str, bool]]:
    """Union-find over near-duplicate pairs: id -> (group representative id, not the representative)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = {}
    for x in uris:
        groups.setdefault(find(x), []).append(x)
    out: dict[str, tuple[str, bool]] = {}
    for members in groups.values():
        rep = min(members, key=lambda m: (uris[m], m))
        for m in members:
            out[m] = (rep, True)
    return out


def without_exact_groups(near: dict[str, tuple[str, bool]], exact: dict[str, tuple[str, bool]]
                         ) -> dict[str, tuple[str, bool]]:
    """The near-duplicate groups that are not exactly a duplicate group (cleanvision drops those)."""
    def groups(members):
        out: dict[str, set] = {}
        for image, (group, _) in members.items():
            out.setdefault(group, set()).add(image)
        return out

    exact_sets = {frozenset(s) for s in groups(exact).values()}
    keep = {g for g, s in groups(near).items() if frozenset(s) not in exact_sets}
    return {image: m for image, m in near.items() if m[0] in keep}


def percentiles(counts: dict[float, int], qs: tuple[float, ...]) -> list[float]:
    """``numpy.percentile`` (linear interpolation) of a multiset given as value -> count."""
    values = np.array(sorted(counts), dtype=np.float64)
    cum = np.cumsum([counts[v] for v in sorted(counts)])
    n = int(cum[-1]) if len(cum) else 0
    out = []
    for q in qs:
        if not n:
            out.append(0.0)
            continue
        pos = q / 100.0 * (n - 1)
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        a, b = values[np.searchsorted(cum, lo + 1)], values[np.searchsorted(cum, hi + 1)]
        out.append(float(a + (b - a) * (pos - lo)))
    return out


def size_scores(size: np.ndarray, q1: float, q3: float, k: float) -> tuple[np.ndarray, float]:
    """cleanvision's odd-size score of sqrt(area) values and the threshold it is compared with."""
    low, high = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
    mid, gap = (low + high) / 2, high - low
    norm, threshold = (gap, 0.5) if gap > 0 else (mid, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1 - np.clip(np.abs(size - mid) / norm, 0, 1), threshold


def label_issues(probs: np.ndarray, given: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """cleanlab's ``find_label_issues(filter_by="confident_learning")`` on out-of-sample
    probabilities: a row is an issue when it is counted off the diagonal of the confident joint —
    its class among those reaching their per-class threshold (the most probable class when more
    than one does) is not its given label — and the model's top class (given label favoured by
    1e-6) is not the given label either."""
    n = len(given)
    confident = probs >= thresholds[None, :] - 1e-6
    count = confident.sum(axis=1)
    guess = np.where(count > 1, probs.argmax(axis=1), confident.argmax(axis=1))
    favoured = probs.copy()
    favoured[np.arange(n), given] += 1e-6
    return (count > 0) & (guess != given) & (favoured.argmax(axis=1) != given)




# -- the checks: each archive check's entry in imgclf_ray/curation_checks names its object here ---

@dataclass(frozen=True)
class Pass:
    """The archive-wide pass of one run: its checks and what they need."""

    storage: StorageSpec
    checks: tuple[str, ...]  # the archive checks the run runs, in the order they are merged
    curate: CurateSpec
    labels: Optional[list[str]]  # the model's labels (label_issue), else None
    partitions: int = 1  # of the hash shuffle: one per CPU

    def each(self) -> list[tuple[str, "ArchiveCheck"]]:
        return [(name, check_of(name)) for name in self.checks]

    def shuffled(self) -> list[str]:
        return [name for name, check in self.each() if check.shuffle]


class ArchiveCheck:
    """One archive-wide check's part of the pass: ``scan`` each staged file's ok rows (small
    statistics, and with ``shuffle`` rows routed into ``partitions`` parts), ``reduce`` each
    partition's parts, ``merge`` it all on the driver into the check's *fact* (a few numbers, or
    the duplicate groups), ``rewrite``: the check's columns of each staged file from the fact."""

    shuffle = False
    after: tuple[str, ...] = ()  # checks whose facts its merge reads (merged first)
    columns: tuple[str, ...] = ()  # what its scan reads of the ok rows (the writer keeps them)

    def scan(self, ok: pa.Table, job: Pass) -> tuple[Any, list[pa.Table]]:
        return None, []

    def reduce(self, job: Pass, *parts: pa.Table) -> Any:
        return None

    def merge(self, job: Pass, stats: list, reduced: list, facts: dict[str, Any]) -> Any:
        raise NotImplementedError

    def rewrite(self, t: pa.Table, ok: np.ndarray, fact: Any, job: Pass) -> dict[str, pa.Array]:
        raise NotImplementedError

    def summary(self, fact: Any, job: Pass) -> dict[str, Any]:
        return {}


class OddSize(ArchiveCheck):
    """cleanvision's odd size: the IQR rule on sqrt(width x height) over the whole run; the scan
    keeps the counts of each distinct size (an archive holds few), so the quartiles are exact."""

    columns = ("width", "height")

    def scan(self, ok, job):
        width = ok.column("width").to_numpy(zero_copy_only=False).astype(np.float64)
        height = ok.column("height").to_numpy(zero_copy_only=False).astype(np.float64)
        sized = (width > 0) & (height > 0)
        values, counts = np.unique(np.sqrt(width[sized] * height[sized]), return_counts=True)
        return dict(zip(values.tolist(), counts.tolist())), []

    def merge(self, job, stats, reduced, facts):
        sizes: dict[float, int] = {}
        for s in stats:
            for value, count in s.items():
                sizes[value] = sizes.get(value, 0) + count
        return percentiles(sizes, (25, 75))

    def rewrite(self, t, ok, fact, job):
        width = pc.fill_null(t.column("width"), 0).to_numpy().astype(np.float64)
        height = pc.fill_null(t.column("height"), 0).to_numpy().astype(np.float64)
        sized = ok & (width > 0) & (height > 0)
        score, threshold = size_scores(np.sqrt(width * height), *fact, job.curate.odd_size_threshold)
        return {"size_score": pa.array(score.astype(np.float32), mask=~sized),
                "is_odd_size": pa.array(score < threshold, mask=~sized)}

    def summary(self, fact, job):
        return {"size_quartiles": [round(q, 2) for q in fact]}


def _group_columns(t: pa.Table, ok: np.ndarray, members: dict, check: str, group_col: str) -> dict[str, pa.Array]:
    found = [members.get(i) if k else None for i, k in zip(t.column("image_id").to_pylist(), ok)]
    return {group_col: pa.array([m[0] if m else None for m in found], pa.string()),
            f"is_{check}": pa.array([(m[1] if m else False) if k else None for m, k in zip(found, ok)], pa.bool_())}


class Duplicate(ArchiveCheck):
    """Exact duplicates: rows sharing a ``pixel_hash``, shuffled by hash; every member flagged."""

    shuffle = True
    columns = ("image_id", "uri", "pixel_hash")

    def scan(self, ok, job):
        hashed = ok.filter(pc.is_valid(ok.column("pixel_hash")))
        keys = np.array([int(h[:8], 16) for h in hashed.column("pixel_hash").to_pylist()], dtype=np.int64)
        part = keys % job.partitions
        base = hashed.select(["image_id", "uri", "pixel_hash"])
        return None, [base.filter(pa.array(part == p)) for p in range(job.partitions)]

    def reduce(self, job, *parts):
        return reduce_exact(*parts)

    def merge(self, job, stats, reduced, facts):
        exact: dict[str, tuple[str, bool]] = {}
        for part in reduced:
            exact.update(part)
        return exact

    def rewrite(self, t, ok, fact, job):
        return _group_columns(t, ok, fact, "duplicate", "duplicate_group")

    def summary(self, fact, job):
        return {"duplicate_groups": len({g for g, _ in fact.values()})}


class NearDuplicate(ArchiveCheck):
    """Perceptual hashes within ``curate.near_duplicate_radius`` bits, by band buckets; groups that
    are exactly a duplicate group are dropped (as cleanvision does)."""

    shuffle = True
    after = ("duplicate",)
    columns = ("image_id", "uri", "phash")

    def scan(self, ok, job):
        radius = job.curate.near_duplicate_radius
        return None, route_bands(ok.filter(pc.is_valid(ok.column("phash"))), radius, job.partitions)

    def reduce(self, job, *parts):
        return reduce_near(job.curate.near_duplicate_radius, *parts)

    def merge(self, job, stats, reduced, facts):
        pairs, uris = [], {}
        for part_pairs, part_uris in reduced:
            pairs.extend(part_pairs)
            uris.update(part_uris)
        return without_exact_groups(link(pairs, uris), facts.get("duplicate") or {})

    def rewrite(self, t, ok, fact, job):
        return _group_columns(t, ok, fact, "near_duplicate", "near_duplicate_group")

    def summary(self, fact, job):
        return {"near_duplicate_groups": len({g for g, _ in fact.values()}),
                "near_duplicate_radius": job.curate.near_duplicate_radius}


class LabelIssue(ArchiveCheck):
    """cleanlab's confident learning: per-class thresholds (the mean self-confidence of the rows
    given that label) over the whole run, then each row decided against them."""

    columns = ("class_scores", "true_label")

    def scan(self, ok, job):
        if not job.labels:
            return None, []
        probs, given = _self_confidence_inputs(ok, job.labels)
        rows = given >= 0
        k = len(job.labels)
        return (np.bincount(given[rows], weights=probs[rows, given[rows]], minlength=k),
                np.bincount(given[rows], minlength=k)), []

    def merge(self, job, stats, reduced, facts):
        if not job.labels:
            return None
        conf = sum(s[0] for s in stats)
        count = sum(s[1] for s in stats)
        # cleanlab's get_confident_thresholds: a class nobody is labelled with gets 2 (never
        # reached), the others the mean self-confidence, at least 2e-6.
        return np.where(count > 0, np.maximum(conf / np.maximum(count, 1), 2e-6), 2.0).tolist()

    def rewrite(self, t, ok, fact, job):
        if fact is None:
            return {}
        probs, given = _self_confidence_inputs(t, job.labels)
        rows = ok & (given >= 0)
        quality = probs[np.arange(t.num_rows), np.maximum(given, 0)]
        issue = label_issues(probs, np.maximum(given, 0), np.asarray(fact))
        return {"label_quality": pa.array(quality.astype(np.float32), mask=~rows),
                "is_label_issue": pa.array(issue, mask=~rows)}

    def summary(self, fact, job):
        return {} if fact is None else {"label_thresholds": dict(zip(job.labels, [round(x, 4) for x in fact]))}


ODD_SIZE, DUPLICATE, NEAR_DUPLICATE, LABEL_ISSUE = OddSize(), Duplicate(), NearDuplicate(), LabelIssue()


def check_of(name: str) -> ArchiveCheck:
    """The ArchiveCheck a curation check's entry names (``CurationCheck.archive``: "module:NAME")."""
    import importlib

    module, _, attr = CURATION_CHECKS.get(name).archive.partition(":")
    return getattr(importlib.import_module(module), attr)


def archive_checks(checks) -> tuple[str, ...]:
    """The archive-wide ones of ``checks``, in the order their facts are merged."""
    names = [c for c in checks if CURATION_CHECKS.get(c).kind == "archive"]
    ordered: list[str] = []
    for name in names:  # a check after those whose facts it reads (a short list: no cycles)
        for dep in check_of(name).after:
            if dep in names and dep not in ordered:
                ordered.append(dep)
        if name not in ordered:
            ordered.append(name)
    return tuple(ordered)


# -- the scan inputs, kept by the writer (both executors) -----------------------------------------

ROWS = "_rows"  # a scan's count of the ok rows it read (beside each check's stats)


def scan_columns(checks: tuple[str, ...], labels: Optional[list[str]] = None) -> tuple[str, ...]:
    """What the archive checks ``checks`` scan of the ok rows: always ``image_id`` (so the writer
    keeps a file whatever the checks need, and the scan counts every ok row), then each check's
    columns (label_issue's only with the model's ``labels``: without them it decides nothing)."""
    out: list[str] = ["image_id"] if checks else []
    for name in checks:
        if name == "label_issue" and not labels:
            continue
        out += [c for c in check_of(name).columns if c not in out]
    return tuple(out)


def scan_schema(columns: tuple[str, ...]) -> pa.Schema:
    return pa.schema([OUTPUT_SCHEMA.field(c) for c in columns])


def scan_rows(t: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    """The ok rows' ``columns`` of rows being staged: what the writer keeps for the scan (in a
    Parquet file named ``*.scan`` in the staging folder: discarded with it, never committed), so
    that the archive scan does not read the staged files: each is read once after it is written,
    by the rewrite."""
    kept = t.filter(pc.fill_null(pc.equal(t.column("status"), STATUS_OK), False)).select(list(columns))
    return kept.cast(scan_schema(columns))


def scan_inputs(kept: list[pa.Table], columns: tuple[str, ...]) -> bytes:
    """``scan_rows`` of what one write task staged, as the bytes of its ``*.scan`` file."""
    buf = pa.BufferOutputStream()
    pq.write_table(pa.concat_tables([scan_schema(columns).empty_table(), *kept]), buf)
    return buf.getvalue().to_pybytes()


# -- the pass's tasks (runner.passes.archive_checks orchestrates them) ------------------------------

def scan(uri: str, job: Pass) -> tuple:
    """One scan-inputs file (the ok rows one writer staged) through each check's scan: ({check:
    stats}, then the parts of each shuffled check, ``job.partitions`` each, in ``job.shuffled()``
    order)."""
    ok = _read(*filesystem(uri, job.storage))
    stats, parts = {ROWS: ok.num_rows}, []
    for name, check in job.each():
        stats[name], found = check.scan(ok, job)
        if check.shuffle:
            parts += found or [pa.table({})] * job.partitions
    return (stats, *parts)


def reduce(name: str, job: Pass, *parts: pa.Table) -> Any:
    return check_of(name).reduce(job, *[p for p in parts if p.num_rows])


def merge(job: Pass, stats: list[dict[str, Any]], reduced: dict[str, list]) -> dict[str, Any]:
    """Every check's fact, on the driver, each after the checks it reads."""
    facts: dict[str, Any] = {}
    for name, check in job.each():
        facts[name] = check.merge(job, [s[name] for s in stats], reduced.get(name, []), facts)
    return facts


def summarise(job: Pass, facts: dict[str, Any]) -> dict[str, Any]:
    """What the run summary records about the archive-wide checks."""
    summary: dict[str, Any] = {"checks": sorted(job.checks)}
    for name, check in job.each():
        summary.update(check.summary(facts[name], job))
    return summary


def rewrite(uri: str, index: int, job: Pass, facts: dict[str, Any], then: Callable[[pa.Table, int], tuple]) -> tuple:
    """One staged file (the ``index``-th) read once, each check's columns set from its fact,
    written back; returns ``then(table, index)`` (the read-back's scan of the rewritten rows, so
    that nothing reads the file again)."""
    fs, path = filesystem(uri, job.storage)
    t = _read(fs, path)
    ok = pc.fill_null(pc.equal(t.column("status"), STATUS_OK), False).to_numpy(zero_copy_only=False)
    for name, check in job.each():
        for column, values in check.rewrite(t, ok, facts[name], job).items():
            t = t.set_column(t.schema.get_field_index(column), OUTPUT_SCHEMA.field(column), values)
    t = t.cast(OUTPUT_SCHEMA.with_metadata(t.schema.metadata))
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink)
    fs.pipe_file(path, sink.getvalue().to_pybytes())
    return then(t, index)
