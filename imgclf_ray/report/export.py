"""``imgclf export``: rows of a committed run for people to review — CSV or JSON Lines for
spreadsheets and scripts, or Label Studio pre-annotation tasks (image URL, predicted choice,
score) that a labelling team imports as they are.

Rows are chosen with ``--where`` (clauses joined by ``and``: ``is_label_issue``, ``not is_dark``,
``score < 0.6``, ``label == 'cat'``, ``status != 'ok'``), ordered with ``--sort`` (``score`` =
least confident first; ``-score`` = most confident first) and cut with ``--limit``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any, Optional
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from imgclf_ray.errors import SpecError
from imgclf_ray.spec import StorageSpec

_CLAUSE = re.compile(r"^\s*(not\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(?:(==|!=|<=|>=|<|>)\s*(.+?))?\s*$")
_OPS = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
        ">=": pc.greater_equal}
# Nested columns are written to CSV as JSON text.
CSV_COLUMNS = ("image_id", "uri", "frame", "status", "error", "label", "score", "topk_labels", "topk_scores",
               "labels", "true_label", "run_id", "model_id")


def _literal(text: str, option: str) -> Any:
    text = text.strip()
    if text[:1] in "'\"" and text[-1:] == text[:1] and len(text) >= 2:
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise SpecError(f"{option}: {text!r} is not a number, true/false or a quoted string") from None


def row_filter(table: pa.Table, where: str) -> pa.Array:
    """The boolean mask of ``where`` over ``table`` (null counts as false)."""
    mask = None
    for clause in re.split(r"\s+and\s+", where.strip()):
        m = _CLAUSE.match(clause)
        if not m:
            raise SpecError(f"--where: cannot read {clause!r} (expected e.g. is_label_issue, score < 0.6, "
                            "label == 'cat', clauses joined by 'and')")
        negate, column, op, value = m.groups()
        if column not in table.schema.names:
            raise SpecError(f"--where: no column {column!r} in this run (see `imgclf reference schema`)")
        col = table.column(column)
        if op is None:
            if not pa.types.is_boolean(col.type):
                raise SpecError(f"--where: {column} is not a true/false column; compare it (e.g. {column} == ...)")
            part = col
        else:
            part = _OPS[op](col, pa.scalar(_literal(value, "--where")).cast(col.type)
                            if not pa.types.is_string(col.type) else _literal(value, "--where"))
        part = pc.fill_null(part, False)
        if negate:
            part = pc.invert(part)
        mask = part if mask is None else pc.and_(mask, part)
    return mask


def select(table: pa.Table, where: Optional[str], sort: Optional[str], limit: Optional[int]) -> pa.Table:
    if where:
        table = table.filter(row_filter(table, where))
    if sort:
        column = sort.lstrip("-")
        if column not in table.schema.names:
            raise SpecError(f"--sort: no column {column!r} in this run")
        table = table.sort_by([(column, "descending" if sort.startswith("-") else "ascending")])
    if limit is not None:
        table = table.slice(0, limit)
    return table


def _jsonable(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


def to_jsonl(table: pa.Table) -> bytes:
    return b"".join(json.dumps({k: _jsonable(v) for k, v in row.items()}).encode() + b"\n"
                    for row in table.to_pylist())


def to_csv(table: pa.Table) -> bytes:
    out = io.StringIO()
    names = [c for c in CSV_COLUMNS if c in table.schema.names]
    names += [c for c in table.schema.names if c.startswith(("is_", "cluster")) and c not in names]
    writer = csv.writer(out)
    writer.writerow(names)
    for row in table.select(names).to_pylist():
        writer.writerow([json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v)
                         for v in (row[n] for n in names)])
    return out.getvalue().encode()


def image_url(uri: str, document_root: Optional[str]) -> str:
    """How Label Studio reaches the image: object-store URLs as they are (its cloud storage resolves
    them), local files through its local-files serving, relative to ``document_root``."""
    if not uri.startswith("file://") and "://" in uri:
        return uri
    path = uri.removeprefix("file://")
    if not document_root:
        raise SpecError("--document-root is needed for local images: Label Studio serves local files "
                        "relative to its LOCAL_FILES_DOCUMENT_ROOT")
    root = document_root.rstrip("/") + "/"
    if not path.startswith(root):
        raise SpecError(f"--document-root {document_root}: the image {path} is not under it")
    return "/data/local-files/?d=" + quote(path[len(root):])


def to_label_studio(table: pa.Table, document_root: Optional[str], from_name: str = "choice",
                    to_name: str = "image") -> bytes:
    """Label Studio tasks with one prediction each (its import JSON: a list of {"data",
    "predictions"}); rows without a label (errors) are left out."""
    tasks = []
    for row in table.to_pylist():
        if row.get("label") is None:
            continue
        choices = row.get("labels") or [row["label"]]
        tasks.append({
            "data": {"image": image_url(row["uri"], document_root), "image_id": row["image_id"],
                     "imgclf_run_id": row.get("run_id")},
            "predictions": [{
                "model_version": row.get("model_id") or "imgclf",
                "score": row.get("score"),
                "result": [{"from_name": from_name, "to_name": to_name, "type": "choices",
                            "value": {"choices": list(choices)}}],
            }],
        })
    return json.dumps(tasks, indent=1).encode()


def export_run(output_uri: str, run_id: Optional[str], fmt: str, where: Optional[str] = None,
               sort: Optional[str] = None, limit: Optional[int] = None, document_root: Optional[str] = None,
               storage: StorageSpec = StorageSpec()) -> tuple[bytes, int]:
    """(the export's bytes, how many rows) of one committed run."""
    from imgclf_ray.io.sink import read_rows, resolve_run

    table = select(read_rows(resolve_run(output_uri, run_id, storage), None, storage), where, sort, limit)
    if fmt == "csv":
        return to_csv(table), table.num_rows
    if fmt == "jsonl":
        return to_jsonl(table), table.num_rows
    blob = to_label_studio(table, document_root)
    return blob, len(json.loads(blob))
