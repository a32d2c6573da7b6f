"""Finding the files to check: recursion, skipped folders, and ``.gitignore`` in git trees."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

SKIPPED_DIRS = frozenset({
    "__pycache__", "build", "dist", "node_modules", "site-packages", "venv", "env",
})


def _is_virtualenv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file()


def _git_ignored(root: Path, candidates: list[Path]) -> set[Path]:
    """The candidates that git ignores, or none when ``root`` is not in a git work tree."""
    if not candidates:
        return set()
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "check-ignore", "--stdin", "-z"],
            input="\0".join(str(c) for c in candidates).encode(),
            capture_output=True, timeout=30, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return set()
    if result.returncode not in (0, 1):
        return set()
    return {Path(p) for p in result.stdout.decode(errors="replace").split("\0") if p}


def python_files(path: Path) -> Iterator[Path]:
    """``path`` itself if it is a file; else the ``.py`` files under it, sorted."""
    if not path.is_dir():
        yield path
        return
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(path):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and d not in SKIPPED_DIRS and not _is_virtualenv(here / d)
        )
        found.extend(here / f for f in sorted(filenames) if f.endswith(".py"))
    ignored = _git_ignored(path, found)
    yield from (f for f in found if f not in ignored)
