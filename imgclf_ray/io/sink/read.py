"""One committed run folder, read: its manifest (checked), side files, data files and rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from imgclf_ray.errors import UserError
from imgclf_ray.ids import id_problem
from imgclf_ray.io.sink.layout import LEGACY_NAMES, MANIFEST_FILE, SUCCESS_FILE, listed
from imgclf_ray.io.storage import filesystem, join, to_uri
from imgclf_ray.spec import StorageSpec


@dataclass(frozen=True)
class RunFolder:
    """A run's folder on a filesystem already looked up (``Sink.run``, or ``RunFolder.at``)."""

    fs: Any
    path: str
    storage: StorageSpec
    given: Optional[str] = None  # the URI as the caller wrote it (messages, Delta table URIs)

    @classmethod
    def at(cls, run_uri: str, storage: StorageSpec = StorageSpec()) -> "RunFolder":
        fs, path = filesystem(run_uri, storage)
        return cls(fs, path.rstrip("/"), storage, run_uri.rstrip("/"))

    @property
    def uri(self) -> str:
        return self.given or to_uri(self.fs, self.path)

    def json(self, name: str) -> Optional[dict[str, Any]]:
        """A JSON file of the folder (``_manifest.json``, ``_run_summary.json``), or None if absent
        (a run of output schema 1 is read by its side files' old names)."""
        for candidate in (name, LEGACY_NAMES.get(name)):
            if candidate is None:
                continue
            try:
                return json.loads(self.fs.cat_file(join(self.path, candidate)))
            except FileNotFoundError:
                continue
        return None

    def committed(self) -> bool:
        return self.fs.exists(join(self.path, SUCCESS_FILE))

    def manifest(self) -> dict[str, Any]:
        """The manifest, checked: its run id and file names are plain names. Raises UserError (one
        message) for a missing, corrupt or hostile manifest."""
        uri = self.uri
        try:
            manifest = self.json(MANIFEST_FILE)
        except ValueError:
            raise UserError(f"{uri}/{MANIFEST_FILE} is corrupt (not JSON); rerun run "
                            f"{uri.rstrip('/').rsplit('/', 1)[-1]} to rewrite it") from None
        if manifest is None:
            raise UserError(f"{uri} has {SUCCESS_FILE} but no {MANIFEST_FILE}: it was not committed by imgclf, "
                            "or it was damaged; rerun its run id to rewrite it")
        if not isinstance(manifest, dict) or id_problem(manifest.get("run_id")) or \
                not isinstance(manifest.get("files"), list):
            raise UserError(f"{uri}/{MANIFEST_FILE}: not an imgclf manifest (run_id must be a plain name "
                            "and files a list)")
        listed(manifest)
        return manifest

    def _delta(self, manifest: dict[str, Any]) -> tuple[str, str, Optional[int]]:
        """(table URI, run id, table version) of a Delta run record: the table is the sink, the
        record's folder less its run path."""
        table = self.uri.rstrip("/")[: -len(manifest["run_path"].strip("/")) - 1]
        return table, manifest["run_id"], manifest.get("table_version")

    def files(self) -> list[str]:
        """URIs of the run's data files; [] if the folder is not committed."""
        if not self.committed():
            return []
        manifest = self.manifest()
        if manifest.get("format") == "delta":
            from imgclf_ray.io import delta

            return delta.file_uris(*self._delta(manifest), self.storage)
        return [to_uri(self.fs, join(self.path, f["path"])) for f in manifest["files"]]

    def rows(self, columns=None):
        """The run's rows as a pyarrow.Table: ``columns`` a list of names, a test on the name, or
        None (all). From the files its manifest lists, or from its Delta table at the version its
        manifest records. An empty table when the folder is not committed."""
        from imgclf_ray.io.tables import read_columns

        manifest = self.manifest() if self.committed() else None
        if manifest is not None and manifest.get("format") == "delta":
            from imgclf_ray.io import delta

            return delta.read_rows(*self._delta(manifest), columns, self.storage)
        files = [to_uri(self.fs, join(self.path, f["path"])) for f in (manifest or {}).get("files", [])]
        return read_columns(files, columns if columns is not None else (lambda name: True), self.storage)
