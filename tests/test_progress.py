"""The progress bar: on a terminal, for a run long enough to want one, and erased before the
output; never in a pipe, on CI or with a format for tools."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
from conftest import clipcheck_command
from test_workers import slow_tree

from clipcheck.output import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_quick_run_shows_nothing_and_a_long_one_a_bar_it_erases() -> None:
    stream, clock = Terminal(), Clock()
    bar = progress.ProgressBar(stream, clock)
    clock.now += progress.DELAY / 2
    bar(1, 4)
    assert stream.getvalue() == ""
    clock.now += progress.DELAY
    bar(2, 4)
    drawn = "\r[" + "#" * 15 + "-" * 15 + "] 2/4 files"
    assert stream.getvalue() == drawn
    clock.now += progress.REDRAW / 2
    bar(3, 4)  # too soon to draw again
    assert stream.getvalue() == drawn
    bar.close()
    assert stream.getvalue() == drawn + "\r" + " " * (len(drawn) - 1) + "\r"


@pytest.mark.parametrize(("stream", "output_format", "quiet", "environ", "shown"), [
    (Terminal(), "text", False, {}, True),
    (Terminal(), "concise", False, {"CI": ""}, True),
    (io.StringIO(), "text", False, {}, False),  # a pipe or a file
    (Terminal(), "text", False, {"CI": "true"}, False),
    (Terminal(), "text", True, {}, False),
    *((Terminal(), name, False, {}, False) for name in ("json", "json-lines", "github", "sarif")),
])
def test_where_the_bar_is_shown(stream: io.StringIO, output_format: str, quiet: bool, environ: dict[str, str],
                                shown: bool) -> None:
    assert progress.wanted(stream, output_format, quiet, environ) is shown


def _stderr_on_a_terminal(*args: str, cwd: Path, environ: dict[str, str]) -> tuple[str, str]:
    """What ``clipcheck check ARGS`` writes to standard output (a pipe) and to standard error
    (a pseudo-terminal)."""
    leader, follower = os.openpty()
    run = subprocess.Popen([*clipcheck_command(), "check", *args], cwd=cwd, env=environ, text=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    out = run.communicate(timeout=300)[0]
    written = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # Linux: the terminal's other end is closed
            break
        if not chunk:
            break
        written += chunk
    os.close(leader)
    return out, written.decode()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_long_run_shows_the_bar_on_a_terminal_only(tmp_path: Path) -> None:
    slow_tree(tmp_path, 4)
    environ = {key: value for key, value in os.environ.items() if key != "CI"}
    args = ("--no-cache", "--jobs", "1", ".")
    out, err = _stderr_on_a_terminal(*args, cwd=tmp_path, environ=environ)
    assert out == "All checks passed: 4 files.\n"
    assert "/4 files" in err and err.endswith("\r")  # drawn, then erased
    for more, variables in ((("--output-format", "json"), environ), ((), {**environ, "CI": "true"})):
        out, err = _stderr_on_a_terminal(*more, *args, cwd=tmp_path, environ=variables)
        assert err == "" and out, (more, variables.get("CI"))
    piped = subprocess.run([*clipcheck_command(), "check", *args], cwd=tmp_path, capture_output=True,
                           text=True, check=False, timeout=300, env=environ)
    assert (piped.stdout, piped.stderr) == ("All checks passed: 4 files.\n", "")
