"""fsspec access to local folders, s3:// and every other URI fsspec knows, configured by the spec."""

from __future__ import annotations

import functools
import json
import fsspec
from fsspec.core import url_to_fs

from imgclf_ray.spec import StorageSpec


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


@functools.lru_cache(maxsize=32)
def _fs_cached(protocol: str, options_json: str) -> fsspec.AbstractFileSystem:
    return fsspec.filesystem(protocol, **json.loads(options_json))


def filesystem(uri: str, storage: StorageSpec = StorageSpec()) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``uri`` and the path inside it (bucket/key for S3, absolute for local)."""
    protocol = _protocol(uri)
    options = storage.fsspec_options(protocol)
    if protocol in ("file", "local"):
        fs, path = url_to_fs(uri)
        return fs, path
    fs = _fs_cached(protocol, json.dumps(options, sort_keys=True))
    return fs, fs._strip_protocol(uri)


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A full URI for a path of ``fs`` (file:///abs/path, s3://bucket/key)."""
    return fs.unstrip_protocol(path)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is this machine's file system."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def pyarrow_fs(fs: fsspec.AbstractFileSystem):
    """A pyarrow filesystem over ``fs`` (pyarrow's own for local folders)."""
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    if is_local(fs):
        return LocalFileSystem()
    return PyFileSystem(FSSpecHandler(fs))


def join(uri: str, *parts: str) -> str:
    """Join URI path segments with '/'."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def read_bytes(uri: str, storage: StorageSpec = StorageSpec()) -> bytes:
    """Whole content of one object or file."""
    fs, path = filesystem(uri, storage)
    return fs.cat_file(path)


def describe_os_error(exc: BaseException, listed: bool = False) -> str:
    """A short cause for an error row or message: 'FileNotFoundError: no such file ...'.
    ``listed``: the file was in the run's listing (an archive file's error row)."""
    if isinstance(exc, FileNotFoundError):
        return "FileNotFoundError: no such file or object" + (" (deleted after listing?)" if listed else "")
    if isinstance(exc, PermissionError):
        return "PermissionError: access denied"
    from imgclf_ray.messages import describe

    return describe(exc)
