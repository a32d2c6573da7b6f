"""Wall time of the static pass against a baseline revision, measured in the same run.

    python bench/static_speed.py [--baseline REV] [--rounds N] [TARGET]

TARGET defaults to the installed torch package's sources (several thousand files of real,
varied Python); its Python files are copied to a temporary folder first, so that no
``.gitignore`` around it (a virtual environment's) hides them. The baseline is checked out
with ``git worktree`` into a temporary folder and run from there with the same interpreter;
rounds alternate baseline and current so that machine noise hits both. Prints each side's
median seconds and their ratio (current / baseline).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def default_target() -> Path:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise SystemExit("torch is not installed here; pass a TARGET folder")
    return Path(spec.origin).parent


def timed_run(source_root: Path, target: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    started = time.perf_counter()
    command = [sys.executable, "-m", "clipcheck", "check", "--output-format", "json", str(target)]
    result = subprocess.run(command, env=env, cwd=source_root, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 1, 2):
        raise SystemExit(f"clipcheck from {source_root} failed:\n{result.stderr.decode()[-2000:]}")
    return elapsed


def _not_python(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if not n.endswith(".py") and not (Path(folder) / n).is_dir()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", type=Path, default=None)
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    target = args.target or default_target()

    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "target"
        shutil.copytree(target, copy, ignore=_not_python)
        target = copy
        worktree = Path(folder) / "baseline"
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run([*git, "add", "--detach", "-q", str(worktree), args.baseline], check=True)
        try:
            base, current = [], []
            for _ in range(args.rounds):
                base.append(timed_run(worktree, target))
                current.append(timed_run(ROOT, target))
        finally:
            subprocess.run([*git, "remove", "--force", str(worktree)], check=False)
        files = sum(1 for _ in target.rglob("*.py"))
    b, c = statistics.median(base), statistics.median(current)
    print(f"target: {target} ({files} files), {args.rounds} rounds")
    print(f"baseline {args.baseline}: {b:.1f} s   current: {c:.1f} s   ratio: x{c / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
