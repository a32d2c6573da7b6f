"""A progress bar on standard error, for people watching a long run: only on a terminal, only
for the formats people read, never on CI; drawn after a short delay (a quick run shows none),
redrawn a few times a second at most, and erased before the output is printed."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TextIO

DELAY = 0.5  # seconds before a run counts as long enough to show progress
REDRAW = 0.1  # seconds between two drawings
WIDTH = 30  # the bar's characters


def wanted(stream: TextIO, output_format: str, quiet: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether to show one: on a terminal, with text or concise output, neither quiet nor on
    CI (where some runners fake a terminal)."""
    return (output_format in ("text", "concise") and not quiet and not environ.get("CI")
            and stream.isatty())


class ProgressBar:
    """``[#####-----] 312/647 files`` on one line of ``stream``, told after each file."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.clock = stream, clock
        self.start = clock()
        self.drawn_at: float | None = None
        self.width = 0  # of the line drawn, to erase

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self.start < DELAY or (self.drawn_at is not None and now - self.drawn_at < REDRAW):
            return
        filled = WIDTH * done // max(total, 1)
        line = f"[{'#' * filled}{'-' * (WIDTH - filled)}] {done}/{total} files"
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.drawn_at, self.width = now, max(self.width, len(line))

    def close(self) -> None:
        """Erase the bar, if drawn, so that what follows starts on a clean line."""
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0
