"""SIGINT and SIGTERM (Ctrl-C; what cron, Kubernetes and Airflow send) end a command at the next
safe point.

``handled()`` installs the handlers for one command (the previous ones come back after it): a
signal raises ``Interrupted`` in the main thread, so that whatever is under way unwinds as for any
failure (staging discarded, lock released, Ray shut down by the caller). Inside ``shielded()`` (a
commit: seconds) the signal waits: the commit completes, then ``Interrupted`` says it came after
it. A second signal while stopping exits at once; the next run's recovery finishes or undoes
what was left (the run-id lock and the staged commit are built for a killed driver).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator, Optional

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(BaseException):
    """A signal asked the command to stop. A BaseException, as KeyboardInterrupt: no ``except
    Exception`` on the way turns it into an error row or a retry."""

    def __init__(self, signum: int, after_commit: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.after_commit = after_commit

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + self.signum)


class _State:
    def __init__(self) -> None:
        self.installed = 0
        self.shield = 0
        self.pending: Optional[int] = None
        self.stopping = False
        self.what: Optional[str] = None  # what the command commits ("run <id>"), when it commits
        self.hint = ""
        self.committed = False  # a shielded step (the commit) completed
        self.raised: Optional[Interrupted] = None  # the interruption raised, once a signal came
        self.parts = 0  # inside steps(): shielded steps are parts of a commit, not the commit
        self.ended: Optional[int] = None  # the exit code, once the command's last line is printed


_state = _State()


def resume(what: str, hint: str) -> None:
    """What the command commits and how to resume it, for the line an interruption prints."""
    _state.what, _state.hint = what, hint


def describe(exc: Interrupted) -> str:
    """The one line an interrupted command prints."""
    return outcome("interrupted", exc.after_commit)


def outcome(head: str, after_commit: bool = False) -> str:
    """``head`` and what the command committed before it ended: the commit done, nothing (and how
    to resume), or nothing said for a command that commits nothing (runs, logs --follow ...)."""
    if after_commit or _state.committed:
        return f"{head} after the commit of {committed_what()}"
    if _state.what is None:
        return head
    return f"{head}: nothing committed; {_state.hint}"


def in_command() -> bool:
    """Whether a CLI command's handlers are installed (``handled()``): this process is the CLI's."""
    return _state.installed > 0


@contextlib.contextmanager
def no_commit_after() -> Iterator:
    """Inside the block no shielded step (a commit) starts — one about to waits at its start; a
    thread that ends the process from here (imgclf_ray.runner.ray_setup) knows whether one is under
    way. Yields a function: whether one is under way now."""
    with _commit_gate:
        yield lambda: _state.shield > 0


@contextlib.contextmanager
def steps() -> Iterator[None]:
    """Shielded steps inside are parts of what the command commits (a hierarchical model's node
    artifacts, before its tree card): each still completes once started, but none of them is "the
    commit" an interruption line reports."""
    _state.parts += 1
    try:
        yield
    finally:
        _state.parts -= 1


def end(code: int) -> None:
    """The command printed its last line and exits with ``code``: a thread that would end the
    process with a line of its own (imgclf_ray.runner.ray_setup) exits with this code silently."""
    _state.ended = code


def ended() -> Optional[int]:
    return _state.ended


def committed_what() -> str:
    """What the command commits ("run <id>"), as ``resume`` named it."""
    return _state.what or "the output"


_commit_gate = threading.Lock()


def _handler(signum: int, _frame) -> None:
    if _state.stopping or _state.pending is not None:
        os._exit(EXIT_CODES.get(signum, 128 + signum))  # a second signal: at once
    if _state.shield:
        _state.pending = signum
        return
    _state.stopping = True
    _state.raised = Interrupted(signum)
    raise _state.raised


def _install() -> None:
    for signum in EXIT_CODES:
        signal.signal(signum, _handler)


def raised() -> Optional[Interrupted]:
    """The interruption a signal raised in this command, if any: a library that caught it and
    raised something else (Ray turns it into a SystemError inside ray.get) still ended because of it."""
    return _state.raised


def reinstall() -> None:
    """Take the signals back after a library set its own (``ray.init`` installs a SIGTERM handler
    that raises SystemExit in the driver); nothing outside ``handled()``."""
    if _state.installed and threading.current_thread() is threading.main_thread():
        _install()


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """The command's signal handlers, from here to the end of the block (main thread only; in
    another thread, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.getsignal(signum) for signum in EXIT_CODES}
    _state.installed += 1
    _state.pending, _state.stopping, _state.what, _state.hint = None, False, None, ""
    _state.committed, _state.raised, _state.parts, _state.ended = False, None, 0, None
    _install()
    try:
        yield
    finally:
        _state.installed -= 1
        for signum, previous in saved.items():
            signal.signal(signum, previous)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A step that completes once started (a commit): a signal that arrives meanwhile is raised as
    ``Interrupted(after_commit=True)`` when the step is done. When the step itself fails, its
    error is what propagates (a pending signal then stops nothing more: the command is ending)."""
    with _commit_gate:
        _state.shield += 1
    try:
        yield
    except BaseException:
        with _commit_gate:
            _state.shield -= 1
        raise
    with _commit_gate:  # a thread looking through no_commit_after sees both changes or neither
        _state.shield -= 1
        if not _state.shield and not _state.parts:
            _state.committed = True
    if not _state.shield:
        if _state.pending is not None:
            signum, _state.pending = _state.pending, None
            _state.stopping = True
            _state.raised = Interrupted(signum, after_commit=True)
            raise _state.raised
