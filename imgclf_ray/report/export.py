"""``imgclf export``: rows of a committed run for people to review — CSV or JSON Lines for
spreadsheets and scripts, or Label Studio pre-annotation tasks (image URL, predicted choice,
score) that a labelling team imports as they are.

Rows are chosen with ``--where`` (``is_label_issue``, ``not is_dark``, ``score < 0.6``,
``label == 'cat'``, ``status != 'ok'``, joined by ``and``, ``or``, ``not`` and parentheses), ordered with ``--sort`` (``score`` =
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
from imgclf_ray.io.cells import NUMBER, cell
from imgclf_ray.spec import StorageSpec

_TOKEN = re.compile(r"""\s*(?:(?P<str>'[^']*'|"[^"]*")|(?P<num>""" + NUMBER + r"""(?![A-Za-z_]))"""
                    r"""|(?P<op>==|!=|<=|>=|<|>|\(|\))|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>\S))""")
_OPS = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
        ">=": pc.greater_equal}
_EXAMPLE = ("e.g. is_label_issue, score < 0.6, label == 'cat', not is_dark, (a or b) and c")
# Nested columns are written to CSV as JSON text.
CSV_COLUMNS = ("image_id", "uri", "frame", "status", "error", "label", "score", "topk_labels", "topk_scores",
               "labels", "true_label", "run_id", "model_id")


def _tokens(where: str) -> list[tuple[str, str]]:
    out = []
    for m in _TOKEN.finditer(where):
        kind = m.lastgroup
        if kind == "bad":
            raise SpecError(f"--where: cannot read {where!r} at {m.group(kind)!r} ({_EXAMPLE})")
        out.append((kind, m.group(kind)))
    return out


MAX_NESTING = 100  # not and parentheses, one inside another


class _Where:
    """``--where``: comparisons of a column with a value, true/false columns, joined by ``and``,
    ``or``, ``not`` and parentheses (``not`` binds tightest, then ``and``, then ``or``). A value is
    compared as the column's type: ``label == 3`` compares the text "3"."""

    def __init__(self, table: pa.Table, where: str):
        self.table, self.where, self.at, self.depth = table, where, 0, 0
        self.tokens = _tokens(where)
        if not self.tokens:
            raise SpecError(f"--where: empty ({_EXAMPLE})")

    def _peek(self) -> Optional[tuple[str, str]]:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def _take(self) -> tuple[str, str]:
        token = self._peek()
        if token is None:
            raise SpecError(f"--where: cannot read {self.where!r}: it ends too early ({_EXAMPLE})")
        self.at += 1
        return token

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token is not None and token[0] == "word" and token[1].lower() == word:
            self.at += 1
            return True
        return False

    def parse(self) -> pa.Array:
        mask = self._or()
        if self._peek() is not None:
            raise SpecError(f"--where: cannot read {self.where!r} from {self._peek()[1]!r} ({_EXAMPLE})")
        return mask

    def _or(self) -> pa.Array:
        mask = self._and()
        while self._keyword("or"):
            mask = pc.or_(mask, self._and())
        return mask

    def _and(self) -> pa.Array:
        mask = self._not()
        while self._keyword("and"):
            mask = pc.and_(mask, self._not())
        return mask

    def _not(self) -> pa.Array:
        self.depth += 1  # every nesting (not, a parenthesis) passes here: Python's recursion limit is no message
        if self.depth > MAX_NESTING:
            raise SpecError(f"--where: nested more than {MAX_NESTING} deep (not, parentheses)")
        try:
            if self._keyword("not"):
                return pc.invert(self._not())
            if self._peek() == ("op", "("):
                self.at += 1
                mask = self._or()
                if self._take() != ("op", ")"):
                    raise SpecError(f"--where: a '(' is not closed in {self.where!r}")
                return mask
            return self._comparison()
        finally:
            self.depth -= 1

    def _comparison(self) -> pa.Array:
        kind, column = self._take()
        if kind != "word" or column.lower() in ("and", "or", "not"):
            raise SpecError(f"--where: expected a column name, found {column!r} ({_EXAMPLE})")
        col = _column(self.table, column)
        token = self._peek()
        if token is None or token[0] != "op" or token[1] in "()":
            if not pa.types.is_boolean(col.type):
                raise SpecError(f"--where: {column} is not a true/false column; compare it (e.g. {column} == ...)")
            return pc.fill_null(col, False)
        op = self._take()[1]
        value = _literal(self._take(), col.type, column)
        return pc.fill_null(_OPS[op](col, value), False)


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name not in table.schema.names:
        raise SpecError(f"--where: no column {name!r} here (a run's columns: `imgclf reference schema`; "
                        f"those of imgclf labels: its --to csv header)")
    col = table.column(name)
    if table.num_rows and col.null_count == table.num_rows and (name.startswith("is_") or name.endswith("_score")
                                                                 or name.startswith("cluster")):
        check = name.removeprefix("is_").removesuffix("_score")
        computed_by = ("the cluster section" if name.startswith("cluster") else f"curate.checks: [{check}]")
        raise SpecError(f"--where: {name} was not computed in this run (every row is null); {computed_by} computes it")
    return col


def _literal(token: tuple[str, str], kind: pa.DataType, column: str) -> Any:
    """A value of the column's type: text for a string column (quoted or not), a number for a
    numeric one, true/false for a true/false one."""
    what, text = token
    value: Any = text[1:-1] if what == "str" else text
    if what == "op" or (what == "word" and text.lower() in ("and", "or", "not")):
        raise SpecError(f"--where: expected a value after {column}, found {text!r} ({_EXAMPLE})")
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if what == "word" and text not in ("true", "false"):
            raise SpecError(f"--where: {text} is a name, not a value: quote a text value ({column} == '{text}')")
        return str(value)
    if pa.types.is_boolean(kind):
        if str(value).lower() not in ("true", "false"):
            raise SpecError(f"--where: {column} is true/false; compare it with true or false, not {text}")
        return pa.scalar(str(value).lower() == "true")
    try:
        number = float(value)
        if not pa.types.is_floating(kind) and not number.is_integer():
            raise ValueError(value)  # an integer column is not compared with a fraction
        return pa.scalar(number if pa.types.is_floating(kind) else int(number)).cast(kind)
    except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise SpecError(f"--where: {column} holds {kind}; {text} is not one") from None


def row_filter(table: pa.Table, where: str) -> pa.Array:
    """The boolean mask of ``where`` over ``table`` (null counts as false)."""
    return _Where(table, where).parse()


def select(table: pa.Table, where: Optional[str], sort: Optional[str], limit: Optional[int]) -> pa.Table:
    if where:
        table = table.filter(row_filter(table, where))
    if sort:
        column = sort.lstrip("-")
        if column not in table.schema.names:
            raise SpecError(f"--sort: no column {column!r} here")
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


def to_csv(table: pa.Table, columns: Optional[list[str]] = None) -> bytes:
    """CSV of ``columns`` (default: a run's review columns, the flags and clusters); cells as ``cell``
    writes them."""
    out = io.StringIO()
    names = columns or [c for c in CSV_COLUMNS if c in table.schema.names]
    names += [c for c in table.schema.names if c.startswith(("is_", "cluster")) and c not in names and not columns]
    writer = csv.writer(out)
    writer.writerow(names)
    for row in table.select(names).to_pylist():
        writer.writerow([cell(row[n]) for n in names])
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
    import os

    root = os.path.abspath(document_root).rstrip("/") + "/"  # '.' and relative roots as the shell means them
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
