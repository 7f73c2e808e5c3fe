"""S3 Inventory as a source listing (``source.inventory``): the way AWS users list billions of keys.

An inventory configuration writes, daily or weekly, a ``manifest.json`` naming data files (CSV
gzipped, Parquet or ORC) that list every object of a bucket: bucket, key, size, ETag, and for
versioned buckets IsLatest / IsDeleteMarker. Reading those files replaces LIST requests: one task
per data file turns its rows into manifest rows (uri, size, etag) of the keys under ``source.uri``
with the listed extensions. The keys of a CSV inventory are URL-encoded; Parquet and ORC keys are
not.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from urllib.parse import unquote_plus, urlparse

import pyarrow as pa
import pyarrow.compute as pc

from imgclf_ray.errors import SourceError
from imgclf_ray.io.storage import describe_os_error, filesystem
from imgclf_ray.messages import table_cause
from imgclf_ray.spec import SourceSpec, StorageSpec

# CSV header names (fileSchema) -> the Parquet / ORC column names.
_CSV_NAMES = {"Bucket": "bucket", "Key": "key", "Size": "size", "ETag": "e_tag", "IsLatest": "is_latest",
              "IsDeleteMarker": "is_delete_marker"}
FORMATS = ("CSV", "Parquet", "ORC")


@dataclass(frozen=True)
class Inventory:
    """What a manifest.json says: the data files' URIs, their format, the CSV column names."""

    uri: str
    file_format: str
    columns: tuple[str, ...]  # CSV: the fileSchema's names, in the files' column order
    files: tuple[str, ...]
    source_bucket: str


def _data_file_uri(manifest_uri: str, destination: str, key: str) -> str:
    """Where a data file named by its key in the destination bucket lies. Relative to the
    manifest when the manifest's location holds the key's path (a copied inventory, a mount),
    else in the destination bucket."""
    config = key.rsplit("/data/", 1)[0] + "/"  # <prefix>/<source bucket>/<config id>/
    at = manifest_uri.rfind("/" + config)
    if at >= 0:
        return manifest_uri[:at + 1] + key
    bucket = destination.removeprefix("arn:aws:s3:::")
    return f"s3://{bucket}/{key}"


def read_inventory(uri: str, storage: StorageSpec = StorageSpec()) -> Inventory:
    """The inventory a manifest.json describes; SourceError when it cannot be read or is not one."""
    where = f"source.inventory {uri}"
    fs, path = filesystem(uri, storage)
    try:
        doc = json.loads(fs.cat_file(path))
    except OSError as exc:
        raise SourceError(f"{where}: cannot read ({describe_os_error(exc)})") from None
    except (ValueError, UnicodeDecodeError):
        raise SourceError(f"{where}: not an S3 Inventory manifest.json (not JSON)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise SourceError(f"{where}: not an S3 Inventory manifest.json (no files list)")
    file_format = doc.get("fileFormat")
    if file_format not in FORMATS:
        raise SourceError(f"{where}: fileFormat {file_format!r} is not one of {', '.join(FORMATS)}")
    columns: tuple[str, ...] = ()
    if file_format == "CSV":
        columns = tuple(_CSV_NAMES.get(c.strip(), c.strip()) for c in str(doc.get("fileSchema", "")).split(","))
        if "key" not in columns:
            raise SourceError(f"{where}: its fileSchema names no Key column")
    files = []
    for entry in doc["files"]:
        key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key, str) or not key or ".." in key.split("/"):
            raise SourceError(f"{where}: a files entry has no usable key: {entry!r:.100}")
        files.append(_data_file_uri(uri, str(doc.get("destinationBucket", "")), key))
    return Inventory(uri, file_format, columns, tuple(files), str(doc.get("sourceBucket", "")))


def _read_data_file(inventory: Inventory, fh) -> pa.Table:
    """The table of one data file, read from its open file ``fh``."""
    if inventory.file_format == "Parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(fh)
        wanted = [c for c in ("bucket", "key", "size", "e_tag", "is_latest", "is_delete_marker")
                  if c in pf.schema_arrow.names]
        return pf.read(columns=wanted)
    if inventory.file_format == "ORC":
        import pyarrow.orc as orc

        return orc.ORCFile(fh).read()
    import pyarrow.csv as csv

    types = {"key": pa.string(), "bucket": pa.string(), "e_tag": pa.string(), "size": pa.int64()}
    return csv.read_csv(fh, read_options=csv.ReadOptions(column_names=list(inventory.columns)),
                        convert_options=csv.ConvertOptions(
                            column_types={c: t for c, t in types.items() if c in inventory.columns},
                            strings_can_be_null=True))


def _truthy(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_boolean(column.type):
        return pc.fill_null(column, False)
    return pc.equal(pc.utf8_lower(pc.cast(column, pa.string())), "true")


def inventory_rows(inventory: Inventory, file_uri: str, source: SourceSpec,
                   storage: StorageSpec = StorageSpec()) -> tuple[pa.Table, dict[str, int]]:
    """The manifest rows (uri, size, etag) of one data file, keys under ``source.uri`` with the
    listed extensions, and the counts of keys left out by reason."""
    where = f"source.inventory data file {file_uri}"
    damaged = f"{where}: not a readable {inventory.file_format} inventory"
    fs, path = filesystem(file_uri, storage)
    try:
        fh = fs.open(path, "rb", compression="gzip" if path.endswith(".gz") else None)
    except OSError as exc:  # missing, refused: access
        raise SourceError(f"{where}: cannot read ({describe_os_error(exc)})") from None
    try:
        with fh:
            t = _read_data_file(inventory, fh)
            _check_columns(t, where)  # (its column names read here: one not in UTF-8 is a ValueError)
    except gzip.BadGzipFile:
        raise SourceError(f"{damaged} (a damaged gzip stream)") from None
    except (OSError, ValueError, pa.ArrowException, zlib.error, EOFError) as exc:
        # Arrow's parsers raise OSError for a damaged Parquet or ORC file; zlib's error and
        # EOFError come from a damaged or cut .gz.
        raise SourceError(f"{damaged} ({table_cause(exc)})") from None
    try:
        return _rows(t, inventory, source)
    except pa.ArrowException:  # (its text would quote the file's values and type names)
        raise SourceError(f"{damaged} (a column of another type or range than S3 Inventory writes)") from None


def _check_columns(t: pa.Table, where: str) -> None:
    """The columns S3 Inventory writes, of its types: text keys, buckets and ETags, sizes that are
    whole numbers, flags that are booleans (or text: CSV)."""
    if "key" not in t.column_names:
        raise SourceError(f"{where}: no key column (an S3 Inventory data file has bucket, key, size ...)")
    flag = lambda kind: pa.types.is_boolean(kind) or _is_text(kind)  # noqa: E731
    for column, fits, kind in (("key", _is_text, "text"), ("bucket", _is_text, "text"), ("e_tag", _is_text, "text"),
                               ("size", pa.types.is_integer, "whole numbers"), ("is_latest", flag, "true or false"),
                               ("is_delete_marker", flag, "true or false")):
        if column in t.column_names and not fits(t.schema.field(column).type):
            raise SourceError(f"{where}: its {column} column does not hold {kind}, as S3 Inventory writes it")


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)


def _rows(t: pa.Table, inventory: Inventory, source: SourceSpec) -> tuple[pa.Table, dict[str, int]]:
    from imgclf_ray.io.listing import MANIFEST_SCHEMA

    parsed = urlparse(source.uri)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    keys = t.column("key")
    if inventory.file_format == "CSV":
        keys = pa.chunked_array([pa.array([None if k is None else unquote_plus(k) for k in keys.to_pylist()],
                                          pa.string())])
    keep = pc.is_valid(keys)
    if "bucket" in t.column_names and bucket:
        keep = pc.and_(keep, pc.equal(t.column("bucket"), bucket))
    if prefix:
        keep = pc.and_(keep, pc.starts_with(keys, prefix))
    keep = pc.fill_null(keep, False)
    skipped: dict[str, int] = {}
    for column, why in (("is_delete_marker", "delete marker"), ("is_latest", "not the latest version")):
        if column in t.column_names:
            drop = _truthy(t.column(column)) if column == "is_delete_marker" else pc.invert(_truthy(t.column(column)))
            drop = pc.and_(keep, drop)
            skipped[why] = int(pc.sum(drop).as_py() or 0)
            keep = pc.and_(keep, pc.invert(drop))
    names = pc.utf8_lower(pc.replace_substring_regex(keys, r"^.*/", ""))
    hidden = pc.and_(keep, pc.or_(pc.starts_with(names, "."), pc.starts_with(names, "_")))
    skipped["hidden (name starts with '.' or '_')"] = int(pc.sum(hidden).as_py() or 0)
    keep = pc.and_(keep, pc.invert(hidden))
    if not source.sniff:
        wanted = pc.fill_null(pc.match_substring_regex(
            names, "(" + "|".join(_escape(e.lower()) + "$" for e in source.extensions) + ")"), False)
        other = pc.and_(keep, pc.invert(wanted))
        skipped["extension not in source.extensions"] = int(pc.sum(other).as_py() or 0)
        keep = pc.and_(keep, wanted)
    t, keys = t.filter(keep), keys.filter(keep)
    scheme = parsed.scheme or "s3"
    rows = pa.table({
        "uri": pc.binary_join_element_wise(f"{scheme}://{bucket or inventory.source_bucket}", keys, "/"),
        "size": pc.cast(t.column("size"), pa.int64()) if "size" in t.column_names else pa.nulls(t.num_rows, pa.int64()),
        "etag": pc.fill_null(pc.utf8_trim(pc.cast(t.column("e_tag"), pa.string()), '"'), "")
        if "e_tag" in t.column_names else pa.array([""] * t.num_rows),
    }).cast(MANIFEST_SCHEMA)
    return rows, {k: v for k, v in skipped.items() if v}


def _escape(text: str) -> str:
    import re

    return re.escape(text)
