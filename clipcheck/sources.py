"""Finding the files to check and reading them: paths reported as given, recursion with the
usual folders skipped, ``.gitignore`` in git trees, exclusions, PEP 263 coding lines.

Nothing here raises on bad input: a path that does not exist, a folder or file that cannot be
read or decoded comes back as a reason, which the engine turns into a CC000 finding. A FIFO, a
socket or a device is never opened (reading one could block the run forever): it comes back
skipped, with a reason the report gives as a note. Symbolic links to folders are not followed,
so a link loop ends the walk instead of feeding it.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import sys
import tokenize
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

# Folders skipped wherever they are: caches, version control, installed packages.
SKIPPED_ANYWHERE = frozenset({"__pycache__", "node_modules", "site-packages"})
# Folders skipped only at the top of a given directory: a project's virtual environment or
# build output there; a source package with the same name deeper in the tree is code.
SKIPPED_AT_TOP = frozenset({"build", "dist", "venv", "env", ".venv"})
CHECKED_SUFFIXES = (".py", ".pyi", ".ipynb")
STDIN = "-"

# Whether a path (as reported) is excluded by the settings in effect for it.
Excluded = Callable[[Path], bool]


def _guarded(excluded: Excluded) -> Excluded:
    """``excluded``, made unable to raise: looking for the settings of a path inside a folder
    that cannot be searched fails, and such a path is then kept, to be reported unreadable."""
    def guarded(path: Path) -> bool:
        try:
            return excluded(path)
        except OSError:
            return False
    return guarded


class Source(NamedTuple):
    """One input to check: ``shown`` is its path as the report names it; ``path`` is ``None``
    for standard input."""

    shown: str
    path: Path | None
    # Why it cannot be checked at all (no such file, an unreadable folder): a CC000 finding.
    missing: str | None = None
    # Why it is not checked at all (a FIFO, a socket, a device): reported as a note, not a
    # finding, since the user did nothing wrong by having one in the tree.
    skipped: str | None = None


def _special(mode: int) -> str | None:
    """What a file that is not a regular one is ("a FIFO"), or ``None`` for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a special file"


def _skip_reason(mode: int) -> str | None:
    """Why a file must not be opened (it is a FIFO, a socket or a device), or ``None``."""
    kind = _special(mode)
    return None if kind is None else f"{kind}, not a regular file"


Identity = tuple[int, int]  # a file's device and inode: the same file by whatever path


def _stat(path: Path) -> tuple[str | None, Identity | None]:
    """Why ``path`` must not be opened (it is a FIFO, a socket or a device), or ``None``; and
    which file it is. A path that cannot even be stat'ed is left to ``read_bytes``, which says
    why it cannot be read."""
    try:
        found = os.stat(path)
    except (OSError, ValueError):
        return None, None
    return _skip_reason(found.st_mode), (found.st_dev, found.st_ino)


def _is_virtualenv(path: Path) -> bool:
    # Not ``Path.is_file``: it raises PermissionError inside a folder that cannot be searched.
    try:
        return stat.S_ISREG(os.stat(path / "pyvenv.cfg").st_mode)
    except (OSError, ValueError):
        return False


def _git_ignored(root: Path, candidates: list[Path]) -> set[Path]:
    """The candidates that git ignores, or none when ``root`` is not in a git work tree."""
    if not candidates:
        return set()
    import subprocess  # only where a folder is walked: a single file's run never needs it

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


class _Found(NamedTuple):
    """A path met while walking: a file to check, a special file to skip, or a folder that
    could not be read (``missing``)."""

    path: Path
    missing: str | None = None
    skipped: str | None = None
    identity: Identity | None = None


def _walk(root: Path, excluded: Excluded) -> list[_Found]:
    """The checkable files under directory ``root``, sorted, without skipped folders; the
    folders that could not be read, where they would have been walked."""
    found: list[_Found] = []

    def unreadable(error: OSError) -> None:
        where = Path(error.filename) if error.filename is not None else root
        found.append(_Found(where, missing=f"cannot read the folder: {error.strerror or error}"))

    # Symbolic links to folders are not followed (the default), so ``d/loop -> ..`` ends.
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        here = Path(dirpath)
        top = here == root
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and d not in SKIPPED_ANYWHERE
            and not (top and d in SKIPPED_AT_TOP) and not _is_virtualenv(here / d)
            and not excluded(here / d)
        )
        found.extend(_Found(here / f, None, *_stat(here / f)) for f in sorted(filenames)
                     if f.endswith(CHECKED_SUFFIXES) and not excluded(here / f))
    ignored = _git_ignored(root, [f.path for f in found])
    return [f for f in found if f.path not in ignored]


def _shown(given: str, root: Path, found: Path, implicit: bool) -> str:
    """A file found in a given directory is that directory joined with its relative path (the
    current directory, when no path was given, is left out)."""
    if found == root:  # the given folder itself could not be read
        return given
    relative = found.relative_to(root)
    return str(relative) if implicit else os.path.join(given, str(relative))


def _is_absent(path: Path) -> bool:
    """Whether nothing at all is at ``path`` (a dangling link or a link loop is something)."""
    try:
        os.lstat(path)
    except OSError as error:
        return error.errno in (errno.ENOENT, errno.ENOTDIR)
    except ValueError:  # an embedded NUL: no file can have that name
        return True
    return False


def discover(given: Sequence[str], excluded: Excluded, force_exclude: bool = False,
             stdin_name: str | None = None) -> list[Source]:
    """The sources named by ``given`` (``["."]`` when empty), each file once, in order.

    Files named explicitly are checked even when excluded, unless ``force_exclude`` (what a
    pre-commit hook, which passes every staged file, wants)."""
    implicit = not given
    excluded = _guarded(excluded)
    sources: list[Source] = []
    seen: set[Identity | str] = set()

    def add(source: Source, identity: Identity | None = None) -> None:
        """Each file once: known by its device and inode, else by its real path."""
        key = identity or (source.shown if source.path is None else os.path.realpath(source.path))
        if key not in seen:
            seen.add(key)
            sources.append(source)

    for name in given or ["."]:
        if name == STDIN:
            add(Source(stdin_name or STDIN, None))
            continue
        path = Path(name)
        try:
            status = os.stat(path)
            mode: int | None = status.st_mode
            identity: Identity | None = (status.st_dev, status.st_ino)
        except (OSError, ValueError):
            mode = identity = None  # absent, a dangling link, a link loop: sorted out below
        if mode is not None and stat.S_ISDIR(mode):
            for found in _walk(path, excluded):
                add(Source(_shown(name, path, found.path, implicit), found.path,
                           missing=found.missing, skipped=found.skipped), found.identity)
        elif _is_absent(path):
            add(Source(name, path, missing="no such file or directory"))
        elif not (force_exclude and excluded(path)):
            # A file that exists but cannot be read is kept: ``read_bytes`` says why.
            add(Source(name, path, skipped=None if mode is None else _skip_reason(mode)), identity)
    return sources


_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_AFTER_LINE_BREAK = re.compile(r"(?<=\n)|(?<=\r)(?!\n)")


def source_lines(text: str, keepends: bool = False) -> list[str]:
    """The lines of Python source as CPython counts them: ``str.splitlines`` also breaks at
    form feeds, ``\\x1c``-``\\x1e``, ``\\x85`` and ``\\u2028``, which Python keeps inside a line."""
    lines = (_AFTER_LINE_BREAK if keepends else _LINE_BREAK).split(text)
    return lines[:-1] if lines and not lines[-1] else lines


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


# Opening never blocks: a FIFO opened without O_NONBLOCK waits for a writer that never comes.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def read_bytes(source: Source) -> bytes:
    """The bytes of a source. Never blocks: the file is opened without waiting and refused
    unless it is a regular file, since it may have been swapped for a FIFO since discovery."""
    if source.missing is not None:
        raise Unreadable(source.missing)
    if source.skipped is not None:  # the engine reports these as notes and does not read them
        raise Unreadable(source.skipped)
    if source.path is None:
        return sys.stdin.buffer.read()
    try:
        fd = os.open(source.path, _OPEN_FLAGS)
    except OSError as error:
        if error.errno == errno.ENOENT and os.path.islink(source.path):
            raise Unreadable("cannot read the file: a broken symbolic link (its target does "
                             "not exist)") from None
        raise Unreadable(f"cannot read the file: {error.strerror or error}") from None
    except ValueError as error:  # an embedded NUL in the name
        raise Unreadable(f"cannot read the file: {error}") from None
    try:
        with os.fdopen(fd, "rb") as file:
            kind = _special(os.fstat(file.fileno()).st_mode)
            if kind is not None:
                raise Unreadable(f"not a regular file: {kind}")
            return file.read()
    except OSError as error:
        raise Unreadable(f"cannot read the file: {error.strerror or error}") from None
