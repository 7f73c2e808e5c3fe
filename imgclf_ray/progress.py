"""Progress for people: a bar (count, rate, ETA) on a terminal, periodic log lines otherwise.

``mode="auto"`` picks the bar when stderr is a terminal, log lines when it is not (cron, CI, a file);
``--quiet`` asks for log lines explicitly. Ray Data's own bars are switched off by the runner so
that each count is shown once.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Literal, Optional, TextIO

Mode = Literal["auto", "bar", "log", "off"]


def resolve_mode(quiet: bool = False, stream: Optional[TextIO] = None) -> Mode:
    stream = stream or sys.stderr
    if quiet or not getattr(stream, "isatty", lambda: False)():
        return "log"
    return "bar"


def _fmt_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Count towards ``total`` (None: unknown); ``set`` or ``update`` from one thread."""

    def __init__(self, desc: str, total: Optional[int], unit: str = "img", mode: Mode = "auto",
                 interval: float = 10.0, stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream or sys.stderr
        self.mode = resolve_mode(stream=self.stream) if mode == "auto" else mode
        self.interval = interval
        self.clock = clock
        self.count = 0
        self.rows: Optional[int] = None  # rows made so far, when files split into several rows
        self.started = clock()
        self._last_log = self.started
        self._logged_count: Optional[int] = None
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    @staticmethod
    def note(message: str, mode: Mode = "auto", stream: Optional[TextIO] = None) -> None:
        """One line for people (not shown with mode "off")."""
        if mode != "off":
            print(message, file=stream or sys.stderr, flush=True)

    def set(self, count: int, rows: Optional[int] = None) -> None:
        """``count`` of ``total`` done; ``rows``: the rows they made, when that differs (frames,
        pages, table rows, shard samples, video frames)."""
        if rows is not None and rows != self.rows:
            self.rows = rows
            if self._bar is not None:
                self._bar.set_postfix_str(f"{rows} rows", refresh=False)
        if count > self.count:
            delta, self.count = count - self.count, count
            if self._bar is not None:
                self._bar.update(delta)
        # Log lines every ``interval`` whether the count moved or not: a run that waits (for Ray's
        # workers, a slow store, a lost cluster) says so in a cron log too.
        if self.mode == "log" and self.clock() - self._last_log >= self.interval:
            self._log()

    def update(self, n: int = 1) -> None:
        self.set(self.count + n)

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.count / elapsed
        text = f"{self.desc}: {self.count}"
        if self.total:
            text += f"/{self.total} ({100.0 * self.count / self.total:.1f}%)"
        text += f" {self.unit}"
        if self.rows is not None:
            text += f" ({self.rows} rows)"
        pace = f"{rate:.1f} {self.unit}/s" if rate >= 0.1 or not self.count else f"{1 / rate:.0f} s/{self.unit}"
        text += f", {pace}, elapsed {_fmt_eta(elapsed)}"
        if self.total and rate > 0 and self.count < self.total:
            text += f", ETA {_fmt_eta((self.total - self.count) / rate)}"
        return text

    def _log(self) -> None:
        self._last_log = self.clock()
        self._logged_count = self.count
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log" and self._logged_count != self.count:
            self._log()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
