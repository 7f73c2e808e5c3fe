"""Listing: an archive URI -> a manifest of (uri, size, etag) rows, before any image byte is read.

A prefix is listed by fanning out over its immediate sub-prefixes in parallel (S3 LIST is one
request per 1,000 keys, so one serial walk of a large archive takes hours); a glob is expanded by
fsspec directly.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

import pyarrow as pa

from imgclf_ray.errors import SourceError
from imgclf_ray.io.storage import describe_os_error, filesystem, to_uri
from imgclf_ray.report.progress import Mode, Progress
from imgclf_ray.spec import SourceSpec, StorageSpec

MANIFEST_SCHEMA = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("size", pa.int64()),
    pa.field("etag", pa.string()),
])
GLOB_CHARS = set("*?[")
_LIST_THREADS = 16


def _etag(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "e_tag"):
        if info.get(key):
            return str(info[key]).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"mtime:{mtime}" if mtime is not None else ""


def _keep(path: str, info: dict[str, Any], extensions: tuple[str, ...]) -> bool:
    name = posixpath.basename(path.rstrip("/"))
    return (info.get("type", "file") == "file" and not name.startswith((".", "_"))
            and name.lower().endswith(extensions))


def list_archive(source: SourceSpec, storage: StorageSpec = StorageSpec(), progress: Mode = "off") -> pa.Table:
    """List every image under ``source.uri`` as a manifest table sorted by uri.

    ``progress`` shows the sub-prefixes listed so far. Raises SourceError when the location does
    not exist, cannot be read, or holds no image.
    """
    fs, root = filesystem(source.uri, storage)
    extensions = tuple(source.extensions)
    try:
        if GLOB_CHARS & set(root):
            found: dict[str, dict[str, Any]] = fs.glob(root, detail=True)
        elif fs.isfile(root):
            found = {root: fs.info(root)}
        elif not fs.isdir(root):
            raise SourceError(f"{source.uri}: no such folder or prefix (source.uri)")
        else:
            found = {}
            subdirs = []
            for entry in fs.ls(root, detail=True):
                if entry.get("type") == "directory":
                    subdirs.append(entry["name"])
                else:
                    found[entry["name"]] = entry
            if source.recursive and subdirs:
                with ThreadPoolExecutor(min(_LIST_THREADS, len(subdirs))) as pool, \
                        Progress("listing", len(subdirs), unit="prefix", mode=progress) as shown:
                    for part in pool.map(lambda d: fs.find(d, detail=True), subdirs):
                        found.update(part)
                        shown.update()
    except SourceError:
        raise
    except OSError as exc:
        raise SourceError(f"{source.uri}: cannot list ({describe_os_error(exc)})") from None
    rows = sorted((p, i) for p, i in found.items() if _keep(p, i, extensions))
    if not rows:
        raise SourceError(f"{source.uri}: no files with extensions {', '.join(extensions)} "
                          "(source.extensions)")
    return manifest_table((to_uri(fs, p), i.get("size"), _etag(i)) for p, i in rows)


def manifest_table(rows: Iterable[tuple[str, int | None, str]]) -> pa.Table:
    """Build a manifest table from (uri, size, etag) tuples."""
    uris, sizes, etags = [], [], []
    for uri, size, etag in rows:
        uris.append(uri)
        sizes.append(size)
        etags.append(etag)
    return pa.table({"uri": uris, "size": pa.array(sizes, pa.int64()), "etag": etags},
                    schema=MANIFEST_SCHEMA)
