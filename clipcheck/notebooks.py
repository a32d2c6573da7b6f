"""Jupyter notebooks as one program: the code cells in order, IPython syntax masked without
moving any line or column, and a map from the program's lines back to (cell, line in cell)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# Cell magics whose body is Python (only their first line is IPython syntax).
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug", "memit"})
# Line magics that run the Python statement after them: the magic is blanked, the code kept.
PYTHON_LINE_MAGICS = re.compile(r"^(\s*)(%{1,2}(?:time|timeit|prun|memit)\b(?:\s+-\S+)*)")
_SHELL_OR_MAGIC = re.compile(r"^\s*(?:[%!]|\?\??\w|\w[\w.]*\?\??\s*$)")
_ASSIGNED_SHELL = re.compile(r"^(\s*[\w.,\s]+=\s*)([%!].*)$")


class BrokenNotebook(Exception):
    """The file is not a notebook clipcheck can read; the message says why."""


@dataclass(frozen=True)
class Program:
    text: str
    places: list[tuple[int, int]]  # program line (index + 1) -> (cell number, line in cell)
    cells: dict[int, list[str]]  # cell number -> its original lines

    def place(self, line: int) -> tuple[int, int]:
        return self.places[line - 1] if 0 < line <= len(self.places) else (1, line)


def _mask_line(line: str) -> str:
    """The line with IPython-only syntax replaced by Python of the same width."""
    timed = PYTHON_LINE_MAGICS.match(line)
    if timed is not None:
        return timed.group(1) + " " * len(timed.group(2)) + line[timed.end():]
    assigned = _ASSIGNED_SHELL.match(line)
    if assigned is not None:
        return assigned.group(1) + "None"
    if _SHELL_OR_MAGIC.match(line):
        indent = line[: len(line) - len(line.lstrip())]
        return indent + "pass"
    return line


def _cell_lines(cell: dict[str, object], number: int) -> list[str]:
    source = cell.get("source", "")
    if isinstance(source, list) and all(isinstance(part, str) for part in source):
        source = "".join(source)
    if not isinstance(source, str):
        raise BrokenNotebook(f"cell {number} has a source that is neither text nor a list of lines")
    return source.splitlines()


def _masked(lines: list[str]) -> list[str]:
    if lines and lines[0].lstrip().startswith("%%"):
        magic = lines[0].lstrip()[2:].split(maxsplit=1)
        if not magic or magic[0] not in PYTHON_CELL_MAGICS:
            return ["pass" if i == 0 else "" for i in range(len(lines))]  # %%bash, %%writefile...
        return ["pass", *(_mask_line(line) for line in lines[1:])]
    return [_mask_line(line) for line in lines]


def program(text: str) -> Program:
    """The notebook's code cells as one Python program."""
    try:
        notebook = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise BrokenNotebook(f"not a notebook: invalid JSON ({error})") from None
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise BrokenNotebook("not a notebook: no list of cells")
    lines: list[str] = []
    places: list[tuple[int, int]] = []
    originals: dict[int, list[str]] = {}
    for number, cell in enumerate(cells, start=1):
        if cell.get("cell_type") != "code":
            continue
        original = _cell_lines(cell, number)
        originals[number] = original
        for index, line in enumerate(_masked(original), start=1):
            lines.append(line)
            places.append((number, index))
    return Program("\n".join(lines) + "\n", places, originals)
