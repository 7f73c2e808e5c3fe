"""CSV cells a spreadsheet opens safely (CWE-1236), and back: the program's CSVs (`imgclf export`,
`imgclf labels`, a review batch's batch.csv) and the CSVs it reads (review answers, labels tables)."""

from __future__ import annotations

import json
import re
from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"  # (also a number in `--where`: report.export)
_NUMBER = re.compile(NUMBER)


def _formula_like(text: str) -> bool:
    return text.lstrip("'").startswith(FORMULA_START)


def cell(value: Any) -> Any:
    """A CSV cell: text that Excel, LibreOffice or Google Sheets would take for a formula (it starts
    with ``= + - @``, a tab or a line break, after any apostrophes — an archive's folder names become
    class labels, its file names uris) gets a leading ``'``, which ``uncell`` takes off again;
    numbers, and text that is a plain number (``-1``), stay as they are; lists as JSON."""
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    if value is None:
        return ""
    if isinstance(value, str) and _formula_like(value) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def uncell(text: str) -> str:
    """A cell as it was before ``cell`` (a reviewer's own ``'=...`` too: the same rule)."""
    return text[1:] if text.startswith("'") and _formula_like(text) else text
