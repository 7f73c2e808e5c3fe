"""Stand-ins for a LoadStage in a decode worker process (spawned: they must be importable)."""

from __future__ import annotations

import numpy as np


class TwoArgumentError(Exception):
    """An exception whose arguments are not its constructor's: it pickles, and does not unpickle."""

    def __init__(self, stage: str, cause: str):
        super().__init__(f"{stage}: {cause}")


class FailingStage:
    """A stage whose second batch fails with ``TwoArgumentError`` (the first gives its rows)."""

    reporter = None

    def chunks(self, batch: dict[str, np.ndarray]):
        if batch["uri"][0] == "b":
            raise TwoArgumentError("decode", "a stage's own bug")
        yield {"uri": batch["uri"]}


class EchoStage:
    """A stage that gives each batch back as its one chunk."""

    reporter = None

    def chunks(self, batch: dict[str, np.ndarray]):
        yield {"uri": batch["uri"]}
