"""The results cache (``.clipcheck_cache``): one JSON file per input, named by a hash of
everything its result depends on — the input's bytes, how it is named and read, the
settings in effect for it, and the clipcheck that analysed it (its version and a hash of its
own sources, so that no result outlives the code that made it). A key is never rewritten
with a different result, so the cache is never stale and needs no invalidation.

Entries are written to a temporary file and renamed into place, so concurrent runs never see
half an entry; an entry that cannot be read is a miss. JSON, not pickle: a cache folder
checked into a repository must not be able to run code.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path

from clipcheck import __version__
from clipcheck.findings import Finding

FOLDER = ".clipcheck_cache"
_PACKAGE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """The version and a hash of the package's sources (a changed clipcheck is a new cache), and
    the Python and LibCST that parse (what a syntax error is depends on them)."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        libcst = version("libcst")
    except PackageNotFoundError:
        libcst = "?"
    digest = hashlib.blake2b(f"{__version__} {sys.version} {libcst}".encode(), digest_size=8)
    for source in sorted(_PACKAGE.rglob("*.py")):
        digest.update(source.relative_to(_PACKAGE).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def key(data: bytes, *parts: object) -> str:
    """The cache key of an input's bytes and everything else its result depends on."""
    import hashlib  # here, since a run without the cache needs no hashing

    digest = hashlib.blake2b(data, digest_size=20)
    digest.update(repr(parts).encode())
    return digest.hexdigest()


Entry = tuple[list[Finding], dict[int | None, list[str]]]


def _sound(finding: Finding) -> bool:
    """An entry someone else wrote may be anything: a finding's fields must have their types."""
    numbers = (finding.line, finding.column, finding.end_line, finding.end_column)
    texts = (finding.path, finding.code, finding.rule, finding.message)
    return (all(type(n) is int for n in numbers) and all(isinstance(t, str) for t in texts)
            and (finding.cell is None or type(finding.cell) is int)
            and (finding.fix is None or isinstance(finding.fix, dict)))


class Cache:
    """Results by key under ``root/.clipcheck_cache/<fingerprint>``."""

    def __init__(self, root: Path) -> None:
        self.top = root / FOLDER
        self.folder = self.top / fingerprint()

    def get(self, name: str) -> Entry | None:
        try:
            data = json.loads((self.folder / name[:2] / name).read_bytes())
            findings = [Finding(**f) for f in data["findings"]]
            lines = {(int(cell) if cell else None): list(map(str, text))
                     for cell, text in data["lines"].items()}
            if not all(_sound(f) for f in findings):
                return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
            return None
        return findings, lines

    def put(self, name: str, findings: list[Finding], lines: dict[int | None, list[str]]) -> None:
        """Stores a result; a cache that cannot be written is no cache (never an error)."""
        data = {"findings": [f._asdict() for f in findings],
                "lines": {("" if cell is None else str(cell)): text for cell, text in lines.items()}}
        import tempfile

        folder = self.folder / name[:2]
        try:
            self._create()
            folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(data, out)
            os.replace(temporary, folder / name)
        except OSError:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(temporary)

    def _create(self) -> None:
        """The cache folder, marked so that git and backup tools leave it alone."""
        if self.top.is_dir():
            return
        self.top.mkdir(exist_ok=True)
        (self.top / ".gitignore").write_text("# Created by clipcheck.\n*\n", encoding="utf-8")
        (self.top / "CACHEDIR.TAG").write_text(
            "Signature: 8a477f597d28d172789f06886806bc55\n# The clipcheck cache.\n", encoding="utf-8")
