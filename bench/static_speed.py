"""Wall time of the static pass against a baseline revision, measured in the same run.

    python bench/static_speed.py [--baseline REV] [--rounds N] [TARGET]

TARGET defaults to the installed torch package's sources (several thousand files of real,
varied Python); its Python files are copied to a temporary folder first, so that no
``.gitignore`` around it (a virtual environment's) hides them. The baseline is checked out
with ``git worktree`` into a temporary folder and run from there with the same interpreter;
rounds alternate baseline and current so that machine noise hits both. Each run starts in an
empty folder of its own, so that no results cache (``.clipcheck_cache``, kept in the current
folder) makes a later round warm. Progress goes to standard error as each run ends; the
worktree is removed on every exit, SIGINT and SIGTERM included. Prints each side's median
seconds and their ratio (current / baseline).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent


def default_target() -> Path:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise SystemExit("torch is not installed here; pass a TARGET folder")
    return Path(spec.origin).parent


def progress(message: str) -> None:
    """One line of progress on standard error, at once."""
    print(message, file=sys.stderr, flush=True)


def timed_run(source_root: Path, target: Path) -> float:
    """Seconds that the clipcheck of ``source_root`` takes over ``target``, from an empty folder."""
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    command = [sys.executable, "-m", "clipcheck", "check", "--output-format", "json", str(target)]
    with tempfile.TemporaryDirectory() as empty:
        started = time.perf_counter()
        result = subprocess.run(command, env=env, cwd=empty, capture_output=True, check=False)
        elapsed = time.perf_counter() - started
    if result.returncode not in (0, 1, 2) or not result.stdout.lstrip().startswith(b"["):
        raise SystemExit(f"clipcheck from {source_root} failed (exit {result.returncode}):\n"
                         f"{result.stderr.decode()[-2000:]}")
    return elapsed


def _not_python(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if not n.endswith(".py") and not (Path(folder) / n).is_dir()]


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def signals_exit() -> Iterator[None]:
    """SIGINT and SIGTERM raise SystemExit inside the block, so that its cleanup runs."""
    previous = {s: signal.signal(s, _exit_on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def worktree(revision: str, folder: Path) -> Iterator[Path]:
    """``revision`` of this repository checked out at ``folder``, removed on any exit."""
    git = ["git", "-C", str(ROOT), "worktree"]
    try:
        subprocess.run([*git, "add", "--detach", "-q", str(folder), revision], check=True)
        yield folder
    finally:
        subprocess.run([*git, "remove", "--force", str(folder)], check=False, capture_output=True)


def measure(baseline: Path, target: Path, rounds: int) -> tuple[list[float], list[float]]:
    """Alternating runs of the baseline and the current clipcheck: each side's seconds."""
    base: list[float] = []
    current: list[float] = []
    for number in range(1, rounds + 1):
        for name, source_root, times in (("baseline", baseline, base), ("current", ROOT, current)):
            progress(f"round {number}/{rounds}: {name}...")
            times.append(timed_run(source_root, target))
            progress(f"round {number}/{rounds}: {name} {times[-1]:.1f} s")
    return base, current


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", type=Path, default=None)
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    target = args.target or default_target()

    with signals_exit(), tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "target"
        progress(f"copying the Python files of {target}...")
        shutil.copytree(target, copy, ignore=_not_python)
        files = sum(1 for _ in copy.rglob("*.py"))
        progress(f"checking out {args.baseline}...")
        with worktree(args.baseline, Path(folder) / "baseline") as baseline:
            base, current = measure(baseline, copy, args.rounds)
    b, c = statistics.median(base), statistics.median(current)
    print(f"target: {target} ({files} files), {args.rounds} rounds")
    print(f"baseline {args.baseline}: {b:.1f} s   current: {c:.1f} s   ratio: x{c / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
