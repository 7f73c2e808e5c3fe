"""Errors a user can act on. The CLI prints them as one message each and no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave us (spec, archive, model), not a bug in imgclf-ray."""

    exit_code = 1


class SpecError(UserError):
    """A job spec that cannot be run: refused before Ray starts."""

    exit_code = 2


class ArtifactError(UserError):
    """A model artifact that is missing, malformed, or fails its integrity or safety check."""


class SourceError(UserError):
    """The archive cannot be listed (missing bucket or folder, no permission, nothing matched)."""


class AccessDenied(UserError):
    """An object the listing showed cannot be read for permission: the credentials or policies
    are wrong for the whole run, so it stops and commits nothing (not one error row per image)."""


class RunFailed(UserError):
    """The run finished its work but must not be committed (error budget exceeded, rows lost)."""


class NothingToDo(UserError):
    """Not an error: the run had nothing to do (an incremental run with nothing new, a dated run
    already committed). The CLI says so and exits 0."""

    exit_code = 0
