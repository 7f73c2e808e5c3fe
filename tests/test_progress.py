from __future__ import annotations

import io

from imgclf_ray.progress import Progress, resolve_mode


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_log_mode_prints_a_line_per_interval_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    with Progress("classify", 1000, mode="log", interval=10, stream=out, clock=clock) as p:
        for _ in range(30):
            clock.now += 1
            p.update(20)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # at 10 s, 20 s and 30 s; the closing line would repeat the last
    assert lines[0] == "classify: 200/1000 (20.0%) img, 20.0 img/s, elapsed 0:10, ETA 0:40"
    assert lines[-1].startswith("classify: 600/1000 (60.0%)")


def test_bar_mode_on_a_terminal_and_log_mode_elsewhere():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert resolve_mode(stream=Tty()) == "bar" and resolve_mode(stream=io.StringIO()) == "log"
    assert resolve_mode(quiet=True, stream=Tty()) == "log"
    out = Tty()
    with Progress("listing", 3, unit="prefix", mode="bar", stream=out) as p:
        p.update(3)
    assert "listing" in out.getvalue() and "3/3" in out.getvalue()


def test_off_mode_is_silent():
    out = io.StringIO()
    with Progress("x", 5, mode="off", stream=out) as p:
        p.update(5)
    assert out.getvalue() == ""


def test_closing_line_is_not_repeated():
    out, clock = io.StringIO(), Clock()
    with Progress("classify", 10, mode="log", interval=1, stream=out, clock=clock) as p:
        clock.now = 2
        p.set(10)
    assert out.getvalue().count("classify: 10/10") == 1


def test_files_that_split_into_rows_count_files_with_the_rows_beside_them():
    out, clock = io.StringIO(), Clock()
    with Progress("classify", 15, unit="file", mode="log", interval=10, stream=out, clock=clock) as p:
        clock.now = 10
        p.set(12, rows=120)
    assert out.getvalue().splitlines()[0] == \
        "classify: 12/15 (80.0%) file (120 rows), 1.2 file/s, elapsed 0:10, ETA 0:02"


def test_log_mode_keeps_printing_while_the_count_stands_still():
    """A run that waits (workers starting, a slow store) still prints its line every interval."""
    out, clock = io.StringIO(), Clock()
    with Progress("classify", 100, mode="log", interval=10, stream=out, clock=clock) as p:
        for _ in range(25):
            clock.now += 1
            p.set(0)  # what the run's watcher does every poll
    assert out.getvalue().splitlines() == ["classify: 0/100 (0.0%) img, 0.0 img/s, elapsed 0:10",
                                           "classify: 0/100 (0.0%) img, 0.0 img/s, elapsed 0:20"]
