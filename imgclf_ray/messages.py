"""The one gate for text that leaves the process: what a library says is file content until shown
otherwise.

Third-party exception and warning texts quote what they read (pydicom's ``Invalid value for VR UI:
'1.2\\x00DOE^JANE'``, Pillow's ``broken PNG file (chunk b'tEXt')``, FFmpeg's metadata), and a
malformed length can make one element's value hold the next ones. Every message built from such
text passes ``scrub``; every value read from a file passes the rule for its kind (``uid``), or is
not shown. Messages are otherwise fixed text and numbers. ``guard_output`` puts the same gate on a
worker process's standard error, where C libraries (libtiff, libjpeg, FFmpeg) and Python warnings
write.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings
from typing import Any

CAP = 120  # characters kept of one third-party message
# From the first quote of any kind to the last: a quoted value may hold quotes itself (Python's
# repr of A'B"C is 'A\'B"C'; pydicom puts a value in quotes of its own), so what lies between two
# quotes is never taken for words. One quote left alone: the rest of the line.
_QUOTES = "'\"`«»‘’“”"
_QUOTED = re.compile(rf"[bBrRuU]?[{_QUOTES}].*[{_QUOTES}]|[bBrRuU]?[{_QUOTES}].*", re.S)
_TOKEN = re.compile(r"\S+")
_PLAIN = re.compile(r"[A-Za-z0-9 _.,:;()\[\]{}/=+\-<>%#@*!?&|~]*")
_LONG = 40  # a token longer than this is data, not words
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
DROPPED = "<value>"
# A credential inside a URL (an MLflow or HTTP URL from the environment): its user-info when it holds
# a password (scheme://user:password@host; an HTTP URL's user alone too: a token), and an HTTP URL's
# query and fragment values whose names say so (?token=..., X-Amz-Signature=..., api_key=...,
# #access_token=...). A URL starts where a
# run of scheme characters starts (one try a run: linear in the text); its user-info runs to the
# authority's last '@', as Python's urlsplit reads it.
_URL = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*)://(?:([^/?#\s]*)@)?([^\s]*)")
_SECRET_NAME = re.compile(r"(?:^|[-_.])(?:token|secret|password|passwd|pwd|signature|credential|key|apikey|sig|"
                          r"auth|authorization)(?:$|[-_.])", re.I)
_HTTP = ("http", "https", "ws", "wss")


def _url_without_credentials(match: re.Match) -> str:
    scheme, user, rest = match.group(1), match.group(2), match.group(3)
    http = scheme.lower() in _HTTP
    keep = f"{user}@" if user is not None and not (http or ":" in user) else ""
    if http and ("?" in rest or "#" in rest):  # the query's values, and the fragment's (OAuth's #access_token=)
        head, hash_, fragment = rest.partition("#")
        path, mark, query = head.partition("?")
        rest = path + mark + _params_without_secrets(query) + hash_ + _params_without_secrets(fragment)
    return f"{scheme}://{keep}{rest}"


def _params_without_secrets(params: str) -> str:
    return "".join(p.split("=", 1)[0] + "=<secret>" if "=" in p and _SECRET_NAME.search(p.split("=", 1)[0]) else p
                   for p in re.split(r"([&;?])", params))


def without_credentials(text: Any) -> str:
    """``text`` with the credentials of any URL in it dropped (see _URL)."""
    return _URL.sub(_url_without_credentials, str(text))


def _token(word: str) -> str:
    if len(word) > _LONG or not _PLAIN.fullmatch(word):
        return DROPPED
    return word


def scrub(text: Any, cap: int = CAP) -> str:
    """Third-party text made fit to print: everything from its first quote to its last (or to its
    end, across lines) replaced by ``<value>`` (and a URL's credentials dropped), then its first
    line, in which any word with a character outside plain ASCII punctuation and letters or longer than 40 characters is
    ``<value>`` too; at most ``cap`` characters."""
    # The quotes first, over the whole text: a quoted value may hold a line break, and what follows
    # it on the first line would be taken for the message's own words.
    text = _QUOTED.sub(DROPPED, without_credentials(text), count=1)
    first = next((line for line in text.splitlines() if line.strip()), "")
    words = [_token(w) for w in _TOKEN.findall(first)]
    # Runs of dropped words say it once.
    out: list[str] = []
    for w in words:
        if not (w == DROPPED and out and out[-1] == DROPPED):
            out.append(w)
    line = " ".join(out)
    return line if len(line) <= cap else line[: cap - 3].rstrip() + "..."


def describe(exc: BaseException, cap: int = CAP) -> str:
    """``TypeName: scrubbed message`` (or the type alone when nothing printable is left)."""
    text = scrub(exc, cap)
    kind = type(exc).__name__
    return f"{kind}: {text}" if text and text != DROPPED else kind


def table_cause(exc: BaseException) -> str:
    """A table reader's error (Arrow's CSV, Parquet, ORC), scrubbed, without the row it quotes
    after "Expected N columns, got M:"."""
    if isinstance(exc, UnicodeDecodeError):
        return "its text is not UTF-8"
    return re.sub(r"(got \d+):.*", r"\1", scrub(exc))


def uid(value: Any) -> str:
    """A DICOM UID as shown in a message: itself when it is one (digits and dots, at most 64
    characters), else ``<invalid UID>``."""
    text = str(value) if value is not None else ""
    return text if len(text) <= 64 and _UID.fullmatch(text) else "<invalid UID>"


def printable(text: Any, cap: int = 1000, names: bool = False) -> str:
    """Our own message as the last step before it is stored or shown: control and non-ASCII
    characters removed, a URL's credentials dropped, at most ``cap`` characters (a guard; every
    part was built safe).
    ``names``: a user's file name, whose printable non-ASCII letters stay (café.png) and whose
    control characters (a newline, a terminal escape) become '?'."""
    text = "".join(c if (" " <= c <= "~" or (names and c.isprintable())) else ("?" if names else " ")
                   for c in without_credentials(text))
    return text if len(text) <= cap else text[: cap - 3] + "..."


# -- the process's standard error ------------------------------------------------------------------

_guarded = False
_lock = threading.Lock()


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:
    try:
        (file or sys.stderr).write(f"{category.__name__}: {scrub(message)}\n")
    except (OSError, ValueError):
        pass


def _pump(read_fd: int, write_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        pending = b""
        while True:
            chunk = source.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                _write_line(write_fd, raw)
            if len(pending) > 65536:
                _write_line(write_fd, pending)
                pending = b""
        if pending:
            _write_line(write_fd, pending)


def _write_line(fd: int, raw: bytes) -> None:
    text = scrub(raw.decode("utf-8", "replace"), cap=400)
    if text:
        try:
            os.write(fd, (text + "\n").encode())
        except OSError:
            pass


def guard_output() -> None:
    """Put this process's standard error behind ``scrub``, line by line (file descriptor 2, where
    C libraries write, and Python's warnings). For worker processes that decode archive files;
    idempotent. The lines still reach where fd 2 pointed (Ray's worker log, the terminal)."""
    global _guarded
    with _lock:
        if _guarded:
            return
        _guarded = True
    warnings.showwarning = _showwarning
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    original = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    threading.Thread(target=_pump, args=(read_fd, original), name="imgclf-stderr-gate", daemon=True).start()


def in_worker() -> bool:
    """Whether this process is a worker (a Ray worker or a decode worker process), not a driver."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return True
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        from ray._private import worker

        return worker.global_worker.mode == worker.WORKER_MODE
    except (ImportError, AttributeError):
        return False


def guard_worker_output() -> None:
    """``guard_output`` when this process is a worker (checked once: the stages call it per batch)."""
    if not _guarded and in_worker():
        guard_output()
