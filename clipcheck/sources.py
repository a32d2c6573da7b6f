"""Finding the files to check and reading them: paths reported as given, recursion with the
usual folders skipped, ``.gitignore`` in git trees, exclusions, PEP 263 coding lines.

Nothing here raises on bad input: a path that does not exist or a file that cannot be read or
decoded comes back as a reason, which the engine turns into a CC000 finding.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Folders skipped wherever they are: caches, version control, installed packages.
SKIPPED_ANYWHERE = frozenset({"__pycache__", "node_modules", "site-packages"})
# Folders skipped only at the top of a given directory: a project's virtual environment or
# build output there; a source package with the same name deeper in the tree is code.
SKIPPED_AT_TOP = frozenset({"build", "dist", "venv", "env", ".venv"})
CHECKED_SUFFIXES = (".py", ".pyi", ".ipynb")
STDIN = "-"

# Whether a path (as reported) is excluded by the settings in effect for it.
Excluded = Callable[[Path], bool]


@dataclass(frozen=True)
class Source:
    """One input to check: ``shown`` is its path as the report names it; ``path`` is ``None``
    for standard input."""

    shown: str
    path: Path | None
    missing: str | None = None  # why it cannot be checked at all (no such file)

    @property
    def is_notebook(self) -> bool:  # standard input named ``x.ipynb`` is one too
        return self.shown.endswith(".ipynb")


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


def _walk(root: Path, excluded: Excluded) -> list[Path]:
    """The checkable files under directory ``root``, sorted, without skipped folders."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        top = here == root
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and d not in SKIPPED_ANYWHERE
            and not (top and d in SKIPPED_AT_TOP) and not _is_virtualenv(here / d)
            and not excluded(here / d)
        )
        found.extend(here / f for f in sorted(filenames)
                     if f.endswith(CHECKED_SUFFIXES) and not excluded(here / f))
    ignored = _git_ignored(root, found)
    return [f for f in found if f not in ignored]


def _shown(given: str, root: Path, found: Path, implicit: bool) -> str:
    """A file found in a given directory is that directory joined with its relative path (the
    current directory, when no path was given, is left out)."""
    relative = found.relative_to(root)
    return str(relative) if implicit else os.path.join(given, str(relative))


def discover(given: Sequence[str], excluded: Excluded, force_exclude: bool = False,
             stdin_name: str | None = None) -> list[Source]:
    """The sources named by ``given`` (``["."]`` when empty), each file once, in order.

    Files named explicitly are checked even when excluded, unless ``force_exclude`` (what a
    pre-commit hook, which passes every staged file, wants)."""
    implicit = not given
    sources: list[Source] = []
    seen: set[str] = set()

    def add(source: Source) -> None:
        key = source.shown if source.path is None else os.path.realpath(source.path)
        if key not in seen:
            seen.add(key)
            sources.append(source)

    for name in given or ["."]:
        if name == STDIN:
            add(Source(stdin_name or STDIN, None))
            continue
        path = Path(name)
        if path.is_dir():
            for found in _walk(path, excluded):
                add(Source(_shown(name, path, found, implicit), found))
        elif os.path.lexists(path):
            if not (force_exclude and excluded(path)):
                add(Source(name, path))
        else:
            add(Source(name, path, missing="no such file or directory"))
    return sources


class Unreadable(Exception):
    """A source whose text cannot be had; the message is the reason."""


def decode(data: bytes) -> tuple[str, str]:
    """The text of a Python file, and its encoding: UTF-8, or what its PEP 263 coding line
    names."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as error:
        # Either undecodable bytes before any coding line (reported with their offset below)
        # or a coding line naming no known encoding.
        encoding = "utf-8"
        if "missing encoding" not in error.msg:
            raise Unreadable(f"bad coding line: {error.msg}") from None
    try:
        return data.decode(encoding), encoding
    except UnicodeDecodeError as error:
        if encoding in ("utf-8", "utf-8-sig"):
            raise Unreadable(f"not UTF-8 and no coding line: byte 0x{data[error.start]:02x} at offset "
                             f"{error.start} cannot be decoded") from None
        raise Unreadable(f"not valid {encoding} (its coding line): byte 0x{data[error.start]:02x} "
                         f"at offset {error.start}") from None
    except LookupError:
        raise Unreadable(f"unknown encoding in its coding line: {encoding}") from None


def read_bytes(source: Source) -> bytes:
    if source.missing is not None:
        raise Unreadable(source.missing)
    if source.path is None:
        return sys.stdin.buffer.read()
    try:
        return source.path.read_bytes()
    except OSError as error:
        raise Unreadable(f"cannot read the file: {error.strerror or error}") from None
