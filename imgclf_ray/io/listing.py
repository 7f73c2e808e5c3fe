"""Listing: an archive URI -> a manifest of (uri, size, etag) rows, before any image byte is read.

A prefix is listed by fanning out over its immediate sub-prefixes in parallel (S3 LIST is one
request per 1,000 keys, so one serial walk of a large archive takes hours); a glob is expanded by
fsspec directly.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Optional

import pyarrow as pa

from imgclf_ray.errors import NothingThere, SourceError
from imgclf_ray.io.storage import describe_os_error, filesystem, to_uri
from imgclf_ray.progress import Mode, Progress
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


def _why_skipped(path: str, info: dict[str, Any], extensions: Optional[tuple[str, ...]]) -> Optional[str]:
    """Why a listed entry is not an input (None: it is one). ``extensions`` None: any file."""
    name = posixpath.basename(path.rstrip("/"))
    kind = info.get("type", "file")
    if kind == "directory" or (path.endswith("/") and not info.get("size")):  # (an S3 console's folder marker)
        return "folder"
    if kind != "file":
        return "not a regular file (a broken link, a link to a folder, a device, a socket)"
    if name.startswith((".", "_")):
        return "hidden (name starts with '.' or '_')"
    if extensions is not None and not name.lower().endswith(extensions):
        return "extension not in source.extensions"
    if not _is_utf8(path):  # a local name in another encoding: no URI, no Parquet string holds it
        return NOT_UTF8
    return None


NOT_UTF8 = "name not UTF-8: rename to read it"


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")  # os.listdir gives undecodable bytes as lone surrogates
    except UnicodeEncodeError:
        return False
    return True


def skipped_counts(manifest: pa.Table) -> dict[str, int]:
    """Files the listing saw and left out, by reason (kept in the manifest table's metadata)."""
    raw = (manifest.schema.metadata or {}).get(b"imgclf.skipped")
    return json.loads(raw) if raw else {}


def list_archive(source: SourceSpec, storage: StorageSpec = StorageSpec(), progress: Mode = "off") -> pa.Table:
    """List every image under ``source.uri`` as a manifest table sorted by uri.

    ``progress`` shows the sub-prefixes listed so far. Raises SourceError when the location does
    not exist, cannot be read, or holds no image.
    """
    fs, root = filesystem(source.uri, storage)
    # The extension filter applies to a folder or prefix; a glob or a file URI names its files.
    extensions = None if source.sniff else tuple(source.extensions)
    folder = False  # a folder or prefix without sub-folders (not a glob, not one file)
    try:
        if GLOB_CHARS & set(root):
            found: dict[str, dict[str, Any]] = fs.glob(root, detail=True)
            extensions = None
        elif fs.isfile(root):
            found = {root: fs.info(root)}
            extensions = None
        elif not fs.isdir(root):
            raise NothingThere(f"{source.uri}: no such folder or prefix (source.uri)")
        else:
            found = {}
            subdirs = []
            for entry in fs.ls(root, detail=True):
                if entry.get("type") == "directory":
                    subdirs.append(entry["name"])
                else:
                    found[entry["name"]] = entry
            folder = not subdirs
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
    table, skipped = entries_to_manifest(fs, found, extensions)
    if not table.num_rows:
        raise no_images(source, skipped, extensions, NothingThere if folder and not skipped else SourceError)
    return table.replace_schema_metadata({b"imgclf.skipped": json.dumps(skipped).encode()}) if skipped else table


def entries_to_manifest(fs, found: dict[str, dict[str, Any]], extensions: Optional[tuple[str, ...]]
                        ) -> tuple[pa.Table, dict[str, int]]:
    """The manifest rows (sorted by uri) of listed entries, and the entries left out by reason."""
    rows, skipped = [], {}
    for path, info in sorted(found.items()):
        info = _followed(path, info)
        why = _why_skipped(path, info, extensions)
        if why is None:
            rows.append((path, info))
        elif why != "folder":
            skipped[why] = skipped.get(why, 0) + 1
    return manifest_table((to_uri(fs, p), i.get("size"), _etag(i)) for p, i in rows), skipped


def _followed(path: str, info: dict[str, Any]) -> dict[str, Any]:
    """A symbolic link in a local folder (fsspec lists it as type "other") as the file it points to:
    a dataset of links (a Hugging Face or DVC cache, a curated subset) is read like its files, its
    etag taken from the target's modification time."""
    if not info.get("islink") or info.get("type") == "directory":
        return info
    try:
        target = os.stat(path)  # follows the link
    except OSError:
        return info  # broken: skipped as not a regular file
    if not stat.S_ISREG(target.st_mode):
        return info
    return {**info, "type": "file", "size": target.st_size, "mtime": target.st_mtime}


def no_images(source: SourceSpec, skipped: dict[str, int], extensions: Optional[tuple[str, ...]],
              error: type[SourceError] = SourceError) -> SourceError:
    """The error of a listing that found no image (``extensions`` None: any file was wanted);
    NothingThere for a folder or prefix holding nothing at all (folder markers aside)."""
    wanted = "files" if extensions is None else f"files with extensions {', '.join(extensions)}"
    hint = (f"; {skipped['extension not in source.extensions']} other files were skipped — "
            "source.extensions: any lists every file and reads it by content (extensionless "
            "DICOM series ...)") if skipped.get("extension not in source.extensions") else ""
    if skipped.get(NOT_UTF8):
        hint += f"; {skipped[NOT_UTF8]} whose names are not UTF-8 were skipped (rename them to read them)"
    return error(f"{source.uri}: no {wanted} (source.extensions){hint}")


def manifest_table(rows: Iterable[tuple[str, int | None, str]]) -> pa.Table:
    """Build a manifest table from (uri, size, etag) tuples."""
    uris, sizes, etags = [], [], []
    for uri, size, etag in rows:
        uris.append(uri)
        sizes.append(size)
        etags.append(etag)
    return pa.table({"uri": uris, "size": pa.array(sizes, pa.int64()), "etag": etags},
                    schema=MANIFEST_SCHEMA)
