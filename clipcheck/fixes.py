"""Applying fixes: edits on a file's text (or on a notebook's cells), repeated until no fix is
left (one pass may make another fix possible), written whole or not at all (a temporary file
renamed over the original, its permissions kept)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from clipcheck.findings import Finding
from clipcheck.sources import source_lines

MAX_PASSES = 10
Analyse = Callable[[str], list[Finding]]
# The ``fix`` objects of findings (JSON's shape): ``edits`` with 1-based ``location``,
# ``end_location`` and ``content``, and in a notebook the ``cell`` each edit is in.
Fixes = Sequence[dict[str, object]]
# A text with fixes made, and how many were made.
Apply = Callable[[str, Fixes], tuple[str, int]]
K = TypeVar("K")


def _offset(starts: list[int], location: dict[str, int]) -> int:
    row, column = location["row"], location["column"]
    return (starts[row - 1] if row <= len(starts) else starts[-1]) + column - 1


def _line_starts(text: str) -> list[int]:
    """Where each line starts, lines split where Python splits them (a form feed is inside
    a line), and where the text ends."""
    starts = [0]
    for line in source_lines(text, keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _apply(texts: Mapping[K, str], fixes: Fixes,
           where: Callable[[dict[str, Any]], K]) -> tuple[dict[K, str], int]:
    """``texts`` with the fixes whose edits overlap no earlier one applied, and how many; each
    edit is made in the text ``where`` says."""
    starts = {name: _line_starts(text) for name, text in texts.items()}
    chosen: list[tuple[K, int, int, str]] = []
    applied = 0
    for fix in fixes:
        edits = [(name, _offset(starts[name], e["location"]), _offset(starts[name], e["end_location"]),
                  e["content"]) for e in fix["edits"] for name in (where(e),)]  # type: ignore[attr-defined]
        if any(n == m and ((a < d and c < b) or a == b == c == d)
               for n, a, b, _ in edits for m, c, d, _ in chosen):
            continue  # touches what another fix edits: the next pass sees it afresh
        chosen.extend(edits)
        applied += 1
    edited = dict(texts)
    for name, start, end, content in sorted(chosen, key=lambda e: (e[1], e[2]), reverse=True):
        edited[name] = edited[name][:start] + content + edited[name][end:]
    return edited, applied


def apply_edits(text: str, fixes: Fixes) -> tuple[str, int]:
    """``text`` with the fixes whose edits overlap no earlier one applied, and how many."""
    edited, applied = _apply({None: text}, fixes, lambda _edit: None)
    return edited[None], applied


def apply_edits_by_cell(cells: Mapping[int, str], fixes: Fixes) -> tuple[dict[int, str], int]:
    """A notebook's cell sources with the fixes applied (each edit in its ``cell``), and how
    many."""
    return _apply(cells, fixes, lambda edit: int(edit["cell"]))


def fix_text(text: str, analyse: Analyse, unsafe: bool,
             apply: Apply = apply_edits) -> tuple[str, int, list[Finding]]:
    """The text with every applicable fix made (by ``apply``), how many were made, and the
    findings on the text returned (its last analysis, so that nobody analyses it again)."""
    total = 0
    findings = analyse(text)
    for _ in range(MAX_PASSES):
        fixes = [f.fix for f in findings if f.fix is not None
                 and (unsafe or f.fix.get("applicability") == "safe")]
        if not fixes:
            break
        fixed, applied = apply(text, fixes)
        if not applied:
            break
        text, total = fixed, total + applied
        findings = analyse(text)
    return text, total, findings


def _diff_lines(text: str) -> list[str]:
    """The text's lines for a diff; a last line without a newline says so, as git and patch
    expect (a notebook cell's last line usually has none)."""
    lines = source_lines(text, keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines


def unified_diff(before: str, after: str, shown: str) -> str:
    import difflib

    return "".join(difflib.unified_diff(_diff_lines(before), _diff_lines(after), f"a/{shown}", f"b/{shown}"))


class ChangedMeanwhile(OSError):
    """The file no longer holds what was read and fixed: someone edited it meanwhile."""


def write_whole(path: Path, data: bytes, read: bytes) -> None:
    """Replace ``path``'s content with ``data`` atomically, keeping its permissions, unless it
    no longer holds ``read`` (what the fixes were made to): an edit made meanwhile, in an
    editor or by another tool, is never overwritten. Raises ``OSError`` (the file is then
    untouched), ``ChangedMeanwhile`` for such an edit."""
    import shutil
    import tempfile

    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".clipcheck")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        shutil.copymode(path, temporary)
        if path.read_bytes() != read:  # the last moment before the rename
            raise ChangedMeanwhile(f"{path} changed while it was being fixed")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
