"""True labels for a labelled archive: from its folders, or from a table of uri -> label."""

from __future__ import annotations

import io
import posixpath
from typing import Optional

import pyarrow as pa

from imgclf_ray.errors import SourceError
from imgclf_ray.io.cells import uncell
from imgclf_ray.io.listing import GLOB_CHARS
from imgclf_ray.io.storage import filesystem, to_uri
from imgclf_ray.messages import describe, table_cause
from imgclf_ray.spec import SourceSpec, StorageSpec

def _root_uri(source: SourceSpec, storage: StorageSpec) -> str:
    """The folder labels are relative to: source.uri, or the part of a glob before its wildcards."""
    fs, path = filesystem(source.uri, storage)
    if GLOB_CHARS & set(path):
        path = path[: min(path.index(c) for c in GLOB_CHARS if c in path)].rsplit("/", 1)[0]
    return to_uri(fs, path.rstrip("/"))


def _read_table(uri: str, storage: StorageSpec, columns: tuple[str, ...], where: str) -> pa.Table:
    """The table's ``columns`` (a CSV's read as text: a label "007" stays "007"); SourceError
    naming ``where`` (the spec key) when it cannot be read, is not UTF-8, or lacks one."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fs, path = filesystem(uri, storage)
    try:
        blob = fs.cat_file(path)
    except FileNotFoundError:
        raise SourceError(f"{uri}: no such labels table ({where})") from None
    except OSError as exc:
        raise SourceError(f"{uri}: cannot read the labels table ({where}): {describe(exc)}") from None
    try:
        if path.lower().endswith(".parquet"):  # (only the columns named: a table's others can be large)
            parquet = pq.ParquetFile(io.BytesIO(blob))
            names = parquet.schema_arrow.names
            table = parquet.read(columns=[c for c in dict.fromkeys(columns) if names.count(c) == 1])
        else:
            table = pacsv.read_csv(io.BytesIO(blob), convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns}))  # (an empty cell: "", a multilabel image with none)
            table = _uncelled(table, columns)  # a CSV of `imgclf labels --to csv` reads back as it was written
            names = table.column_names  # (a header not in UTF-8: UnicodeDecodeError, a ValueError)
    except (pa.ArrowException, ValueError, OSError) as exc:  # (Arrow's OSError: a damaged Parquet file)
        raise SourceError(f"{uri}: not a readable {'Parquet' if path.lower().endswith('.parquet') else 'CSV'} "
                          f"labels table ({where}): {table_cause(exc)}") from None
    for column in columns:  # (in the spec's names: the file's own are its bytes)
        found = names.count(column)
        if found != 1:
            raise SourceError(f"{uri}: {'no' if not found else 'more than one'} column {column!r} ({where})")
    return table


def _uncelled(table: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    """The ``columns`` with the ``'`` that ``io.cells.cell`` puts before a formula-like cell taken off."""
    import pyarrow.compute as pc

    for column in columns:
        if table.column_names.count(column) != 1:
            continue  # (refused below, in the spec's names)
        values = table.column(column)
        if pc.any(pc.starts_with(values, "'")).as_py():
            index = table.column_names.index(column)
            table = table.set_column(index, column, pa.array(
                [None if v is None else uncell(v) for v in values.to_pylist()], pa.string()))
    return table


def table_uris(table: str, storage: StorageSpec = StorageSpec(), column: str = "uri") -> list[str]:
    """The uris a labels table names (its ``column``)."""
    t = _read_table(table, storage, (column,), "--exclude-labels")
    return [str(u) for u in t.column(column).to_pylist() if u is not None]


def _folder_labels(uris: list[str], root: str) -> list[Optional[str]]:
    labels = []
    for uri in uris:
        rel = uri[len(root):] if uri.startswith(root) else posixpath.basename(uri)
        labels.append(posixpath.dirname(rel) or None)
    return labels


def _reviewed_labels(manifest: pa.Table, spec, storage: StorageSpec) -> list[Optional[str]]:
    """Each listed image's latest reviewer's answer that applies to the content listed (its etag):
    a class, the labels joined by the separator (multilabel), or a path (hierarchical)."""
    from imgclf_ray.io.reviews import latest_reviews, reviews
    from imgclf_ray.io.sink import Sink

    uris = manifest.column("uri").to_pylist()
    found = latest_reviews(reviews(Sink(spec.sink, storage)), dict(zip(uris, manifest.column("etag").to_pylist())),
                           key="uri")
    by_uri = {}
    for r in found.to_pylist():
        if r["label_path"]:
            by_uri[r["uri"]] = "/".join(r["label_path"])
        elif r["labels"] and len(r["labels"]) != 1:
            by_uri[r["uri"]] = spec.separator.join(r["labels"])
        else:
            by_uri[r["uri"]] = r["label"] or (r["labels"] or [None])[0]
    return [by_uri.get(u) for u in uris]


def _table_labels(spec, root: str, uris: list[str], storage: StorageSpec, section: str) -> tuple[list, list]:
    """Each uri's label and split in the labels table (None where the table has none); ``section``
    the spec's (source.labels, a training spec's data.labels)."""
    table = _read_table(spec.table, storage, (spec.uri_column, spec.label_column,
                                              *([spec.split_column] if spec.split_column else [])), section)
    splits_in = (table.column(spec.split_column).to_pylist() if spec.split_column else [None] * table.num_rows)
    by_uri = {}
    for key, label, split in zip(table.column(spec.uri_column).to_pylist(),
                                 table.column(spec.label_column).to_pylist(), splits_in):
        if key is not None and label is not None:
            key = str(key)
            by_uri[key if "://" in key else root + key.lstrip("/")] = (str(label), split)
    labels = [by_uri.get(uri, (None, None))[0] for uri in uris]
    splits = [by_uri.get(uri, (None, None))[1] for uri in uris]
    if spec.split_column:
        unknown = {str(v) for v in splits if v is not None} - {"train", "validation", "test"}
        if unknown:
            raise SourceError(f"{spec.table}: column {spec.split_column!r} ({section}.split_column) has "
                              f"{len(unknown)} value{'s' if len(unknown) > 1 else ''} other than train, validation "
                              "and test")
    return labels, splits


def attach_true_labels(manifest: pa.Table, source: SourceSpec, storage: StorageSpec = StorageSpec(),
                       section: str = "source.labels") -> pa.Table:
    """The manifest with a ``true_label`` column (null for images the labels do not cover), and a
    ``split`` column when the labels table gives one (``split_column``)."""
    spec = source.labels
    if spec is None:
        return manifest
    root = _root_uri(source, storage).rstrip("/") + "/"
    uris = manifest.column("uri").to_pylist()
    if spec.kind == "folder":
        labels = _folder_labels(uris, root)
    elif spec.kind == "reviewed":
        labels = _reviewed_labels(manifest, spec, storage)
        if spec.table:  # the labels the archive had before any review, for the images nobody reviewed
            labels = [h if h is not None else t for h, t in zip(labels, _table_labels(spec, root, uris, storage, section)[0])]
        if spec.folder_fallback:
            labels = [h if h is not None else f for h, f in zip(labels, _folder_labels(uris, root))]
    else:
        labels, splits = _table_labels(spec, root, uris, storage, section)
        if spec.split_column:
            manifest = manifest.append_column("split", pa.array(splits, pa.string()))
    return manifest.append_column("true_label", pa.array(labels, pa.string()))
