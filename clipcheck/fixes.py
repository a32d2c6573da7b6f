"""Applying fixes: edits on a file's text, repeated until no fix is left (one pass may make
another fix possible), written whole or not at all (a temporary file renamed over the
original, its permissions kept)."""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from clipcheck.findings import Finding

MAX_PASSES = 10
Analyse = Callable[[str], list[Finding]]


def _offset(starts: list[int], location: dict[str, int]) -> int:
    row, column = location["row"], location["column"]
    return (starts[row - 1] if row <= len(starts) else starts[-1]) + column - 1


def apply_edits(text: str, fixes: Sequence[dict[str, object]]) -> tuple[str, int]:
    """``text`` with the fixes whose edits overlap no earlier one applied, and how many."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    chosen: list[tuple[int, int, str]] = []
    applied = 0
    for fix in fixes:
        edits = [(_offset(starts, e["location"]), _offset(starts, e["end_location"]), e["content"])
                 for e in fix["edits"]]  # type: ignore[attr-defined]
        if any((a < d and c < b) or a == b == c == d for a, b, _ in edits for c, d, _ in chosen):
            continue  # touches what another fix edits: the next pass sees it afresh
        chosen.extend(edits)
        applied += 1
    for start, end, content in sorted(chosen, key=lambda e: (e[0], e[1]), reverse=True):
        text = text[:start] + content + text[end:]
    return text, applied


def fix_text(text: str, analyse: Analyse, unsafe: bool) -> tuple[str, int, list[Finding]]:
    """The text with every applicable fix made, how many were made, and the findings on the
    text returned (its last analysis, so that nobody analyses it again)."""
    total = 0
    findings = analyse(text)
    for _ in range(MAX_PASSES):
        fixes = [f.fix for f in findings if f.fix is not None
                 and (unsafe or f.fix.get("applicability") == "safe")]
        if not fixes:
            break
        fixed, applied = apply_edits(text, fixes)
        if not applied:
            break
        text, total = fixed, total + applied
        findings = analyse(text)
    return text, total, findings


def unified_diff(before: str, after: str, shown: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        f"a/{shown}", f"b/{shown}"))


def write_whole(path: Path, data: bytes) -> None:
    """Replace ``path``'s content with ``data`` atomically, keeping its permissions. Raises
    ``OSError`` (the file is then untouched)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".clipcheck")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        shutil.copymode(path, temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
