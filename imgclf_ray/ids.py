"""The one identifier rule: run ids, job names and layout parts become folder and file names under
the sink, so each must be one plain path segment.

Every command that takes a run id (run, curate, evaluate, report, submit, status, logs, stop), the
spec's name and sink.run_id, and every reader of a manifest check values with :func:`check_id`.
"""

from __future__ import annotations

import re

MAX_LENGTH = 128
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RULE = ("a plain name: letters, digits, '_', '-' and '.', starting with a letter or digit, at most "
        f"{MAX_LENGTH} characters (no '/', '..', '=', spaces or control characters)")


def id_problem(value: object) -> str | None:
    """Why ``value`` is not a plain identifier, or None when it is one."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not value:
        return "empty"
    if len(value) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters"
    if not _PLAIN.fullmatch(value) or ".." in value:
        return f"{value!r} is not {RULE}"
    return None


def check_id(value: object, what: str) -> str:
    """``value`` when it is a plain identifier; else ValueError naming ``what`` (an option or key)."""
    problem = id_problem(value)
    if problem:
        raise ValueError(f"{what}: {problem}")
    return value  # type: ignore[return-value]
