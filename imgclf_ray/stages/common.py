"""What every stage shares: the reporter they tell rows, seconds and user errors to; the
per-row error type and how a failure becomes its cause."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np

from imgclf_ray.errors import UserError
from imgclf_ray.imaging.decode import DecodeError
from imgclf_ray.io.schema import STATUS_ERROR
from imgclf_ray.io.storage import describe_os_error
from imgclf_ray.messages import describe, printable


# Called as reporter(stage, rows, seconds) once per batch and stage: rows that entered the stage and
# the wall seconds spent in it. The runner passes one that forwards to a Ray actor; it may also have
# a user_error(exc) method, told of a user's error before it is raised (Ray does not carry the
# exception's type back to the driver; the runner re-raises it from this report).
Reporter = Callable[[str, int, float], None]


def reports_user_errors(method):
    """Tell the stage's reporter of a UserError before it propagates (see Reporter); a generator's
    while it is iterated."""
    def told(self, exc: UserError) -> None:
        report = getattr(getattr(self, "reporter", None), "user_error", None)
        if report is not None:
            report(exc)

    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def generator(self, *args, **kwargs):
            try:
                yield from method(self, *args, **kwargs)
            except UserError as exc:
                told(self, exc)
                raise
        return generator

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except UserError as exc:
            told(self, exc)
            raise
    return wrapper


def cause_of(exc: BaseException) -> str:
    """A per-row failure's cause, through the message gate (imgclf_ray.messages)."""
    if isinstance(exc, DecodeError):
        return printable(exc)
    if isinstance(exc, OSError):
        return describe_os_error(exc, listed=True)
    return describe(exc)


class StageError(Exception):
    """A per-row failure tagged with the stage it happened in."""

    def __init__(self, stage: str, cause: str):
        super().__init__(printable(f"{stage}: {cause}"))
        self.stage = stage


@dataclass
class Rows:
    """A batch's per-row state, which each step may turn into error rows."""

    ok: np.ndarray
    status: np.ndarray
    error: np.ndarray

    def fail(self, i: int, why: str) -> None:
        self.ok[i], self.status[i], self.error[i] = False, STATUS_ERROR, why
