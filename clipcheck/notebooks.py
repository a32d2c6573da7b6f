"""Jupyter notebooks as one program: the code cells in order, IPython syntax masked without
moving any line or column, and a map from the program's lines back to (cell, line in cell).

Each code cell is read as IPython reads it (``IPython.core.inputtransformer2``, the tests'
oracle): its special syntax becomes Python of the same shape on the same lines, and the Python
in it stays where it was, so that a position in the program is a position in the cell. A cell
that is still not Python is one ``CellError`` and leaves the program (as blank lines): Jupyter
compiles each cell alone, so the other cells still run, and are still analysed."""

from __future__ import annotations

import functools
import json
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from clipcheck.screen import cell_error
from clipcheck.sources import source_lines

# Cell magics whose body is IPython code (only their first line is the magic).
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug", "memit"})
# Line magics that run the statement after them: `%time x = f()` keeps `x = f()` in place.
PYTHON_LINE_MAGICS = re.compile(r"%(?:time|timeit|prun|memit)\b")
# A logical line starting with one of these is IPython's (magic, shell, help, autocall).
ESCAPES = frozenset("!?%,;/")
# After an assignment's `=`: `x = !ls`, `x = %env HOME`.
_ASSIGNED = re.compile(r"\s*(!|%\s*[^\W\d])")
_NOT_ASSIGN = frozenset("=!<>+-*/%@&|^:")  # before `=`, these make another operator
_DOCTEST = re.compile(r"\s*>>>")
_DOCTEST_PROMPT = re.compile(r"\s*(?:>>>|\.\.\.)[ \t]?")
_IPYTHON_PROMPT = re.compile(r"(?:(?:\[nav\]|\[ins\])? )?In \[\d+\]: |\s*\.{3,}: ?")
# How Jupyter compiles a cell (top-level `await` is IPython's).


class BrokenNotebook(Exception):
    """The file is not a notebook clipcheck can read; the message says why."""


class CellError(NamedTuple):
    """A code cell that is not Python even as IPython reads it: where (in the cell, from 1)
    and why. The cell is left out of the program; the engine reports it as CC000."""

    cell: int
    line: int
    column: int
    message: str


@dataclass(eq=False)
class Program:
    text: str
    places: list[tuple[int, int]]  # program line (index + 1) -> (cell number, line in cell)
    cells: dict[int, list[str]]  # cell number -> its original lines
    errors: list[CellError] = field(default_factory=list)  # the cells left out, in order

    def place(self, line: int) -> tuple[int, int]:
        return self.places[line - 1] if 0 < line <= len(self.places) else (1, line)

    @functools.cached_property
    def _lines(self) -> list[str]:
        return self.text.split("\n")

    def _as_written(self, row: int) -> bool:
        """Whether the program's line ``row`` is its cell's line as written (not masked)."""
        cell, line = self.places[row - 1]
        return self._lines[row - 1] == self.cells[cell][line - 1]

    def cell_edit(self, edit: dict[str, Any]) -> dict[str, object] | None:
        """An edit of the program (a fix's) as the edit of one cell: its rows the cell's lines,
        ``cell`` added. ``None`` where its place in a cell is not certain: it spans cells,
        touches a line the masking changed (the content would be the mask's), or inserts at
        the start of a cell after the first (the end of the cell before is the same place in
        the program)."""
        row, column = edit["location"]["row"], edit["location"]["column"]
        end_row, end_column = edit["end_location"]["row"], edit["end_location"]["column"]
        if not 0 < row <= len(self.places):
            return None
        cell, line = self.places[row - 1]
        touched = range(row, end_row + 1 if end_column > 1 else end_row)  # rows it changes
        if any(r > len(self.places) or self.places[r - 1][0] != cell or not self._as_written(r)
               for r in touched):
            return None
        if not touched and column == 1 and line == 1 and row > 1:
            return None
        end = (self.places[end_row - 1][1], end_column) if end_row in touched else \
            (self.places[end_row - 2][1] + 1, 1) if end_row > row else (line, column)
        return {"content": edit["content"], "location": {"row": line, "column": column},
                "end_location": {"row": end[0], "column": end[1]}, "cell": cell}


def _dedented(lines: list[str]) -> list[str]:
    """The lines without the indentation they all share (blank lines left as they are)."""
    dedented = textwrap.dedent("\n".join(lines)).split("\n") if lines else []
    return [new if new.strip() else old for old, new in zip(lines, dedented, strict=True)]


def _cleaned(lines: list[str]) -> list[str]:
    """IPython's clean-up, which only takes prefixes off lines: the indentation common to the
    whole cell, and the prompts of a pasted session (``>>>``, ``...``, ``In [1]:``). A session
    is only recognised from its first line, so that a docstring's doctest stays as it is."""
    lines = _dedented(lines)
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    if _DOCTEST.match(lines[first] if first < len(lines) else ""):
        return _dedented([_DOCTEST_PROMPT.sub("", line, count=1) for line in lines])
    if any(_IPYTHON_PROMPT.match(line) for line in lines[first:first + 2]):
        return [_IPYTHON_PROMPT.sub("", line, count=1) for line in lines]
    return lines


def _continued(lines: list[str], start: int) -> int:
    """The index after the line at ``start`` and the lines its backslashes continue it on."""
    end = start
    while end < len(lines) - 1 and lines[end].endswith("\\"):
        end += 1
    return end + 1


def _timed(line: str, start: int, continuation: list[str]) -> str | None:
    """``%time x = f()`` as ``pass; x = f()``: the statement the magic runs stays at its
    columns and at the line's indentation level (blanking the magic alone would indent it);
    None if that is not a simple statement. ``start`` is where the magic's name ends; its
    options (``-n 10``) are skipped."""
    indent = len(line) - len(line.lstrip())
    tail = "".join("\n" + text for text in continuation)
    position, after_option = start, False
    while True:
        code = len(line) - len(line[position:].lstrip())
        if cell_error("pass;" + line[code:] + tail) is None:
            return line[:indent] + "pass;" + " " * (code - indent - 5) + line[code:]
        word = (line[code:].split(maxsplit=1) or [""])[0]
        if not word or not (word.startswith("-") or after_option):
            return None
        position, after_option = code + len(word), word.startswith("-")


def _escaped(lines: list[str]) -> list[str]:
    """A magic, shell or help line and its continuation lines: ``pass`` at its indentation
    (so that a block holding only it is not empty), the timed statement kept."""
    indent = lines[0][: len(lines[0]) - len(lines[0].lstrip())]
    timed = PYTHON_LINE_MAGICS.match(lines[0], len(indent))
    kept = _timed(lines[0], timed.end(), lines[1:]) if timed is not None else None
    if kept is not None:
        return [kept, *lines[1:]]
    return [indent + "pass"] + [""] * (len(lines) - 1)


def _string_end(line: str, start: int, quotes: str) -> int:
    """Where a string open at ``start`` ends on the line (after its closing quotes); past the
    end (``len + 1``) if a backslash continues it; -1 if the line ends first."""
    index = start
    while index < len(line):
        if line[index] == "\\":
            index += 2
        elif line.startswith(quotes, index):
            return index + len(quotes)
        else:
            index += 1
    return index if index > len(line) else -1


@dataclass(eq=False)
class _Logical:
    """How far a Python logical line has been read, as Python's tokenizer would."""

    depth: int = 0  # open brackets
    quotes: str = ""  # of a string still open at the end of a line
    last: str = ""  # the last character of the last token so far
    assigned: bool = False  # its first `=` outside brackets was read
    continued: bool = False  # the line read last goes on to the next

    def read(self, line: str) -> int | None:
        """Read one physical line; where a magic or shell command assigned by the logical
        line's first `=` starts (``x = !ls``), if it does."""
        index, comment = 0, False
        while index < len(line) and not comment:
            char = line[index]
            if self.quotes:
                end = _string_end(line, index, self.quotes)
                if end < 0 or end > len(line):
                    self.quotes = "" if end < 0 and len(self.quotes) == 1 else self.quotes
                    break
                index, self.quotes, self.last = end, "", '"'
                continue
            if char in "'\"":
                self.quotes = char * 3 if line.startswith(char * 3, index) else char
                index += len(self.quotes)
                continue
            comment = char == "#"
            if char in "([{":
                self.depth += 1
            elif char in ")]}":
                self.depth = max(self.depth - 1, 0)
            elif (char == "=" and not self.depth and not self.assigned and line[index + 1:index + 2] != "="
                  and line[index - 1:index] not in _NOT_ASSIGN):
                self.assigned = True
                magic = _ASSIGNED.match(line, index + 1)
                if magic is not None:
                    return magic.start(1)
            if not char.isspace() and char != "\\" and not comment:
                self.last = char
            index += 1
        self.continued = bool(self.quotes or self.depth) or (not comment and line.endswith("\\"))
        return None


def _python(lines: list[str], start: int) -> tuple[list[str], int]:
    """The logical line starting at ``start`` as Python: its lines, and the index after it.
    IPython's syntax in it is an assigned magic or shell command, or a trailing ``?``."""
    reader, index = _Logical(), start
    masked: list[str] = []
    while index < len(lines):
        line = lines[index]
        magic = reader.read(line)
        if magic is not None:  # `x = !ls` -> `x = None`
            end = _continued(lines, index)
            return [*masked, line[:magic] + "None"] + [""] * (end - index - 1), end
        masked.append(line)
        index += 1
        if not reader.continued:
            break
    if reader.last == "?":  # `model?`, `torch.nn.Linear??`
        return _escaped(masked[:1]) + [""] * (len(masked) - 1), index
    return masked, index


def _masked(lines: list[str]) -> list[str]:
    """The cell as Python with the same number of lines, IPython's syntax replaced and the
    Python it runs kept in place."""
    done: list[str] = []
    while True:
        lines = _cleaned(lines)
        first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
        head = lines[first] if first < len(lines) else ""
        if not head.startswith("%%") or re.match(r"%%\w+\?", head):
            break
        done += [""] * first + ["pass"]
        lines = lines[first + 1:]
        if head[2:].rstrip().partition(" ")[0] not in PYTHON_CELL_MAGICS:  # %%bash, %%writefile...
            return done + [""] * len(lines)
    index = 0
    while index < len(lines):
        if lines[index].lstrip()[:1] in ESCAPES:
            end = _continued(lines, index)
            done += _escaped(lines[index:end])
        else:
            python, end = _python(lines, index)
            done += python
        index = end
    return done


def _column(original: str, masked: str, offset: int) -> int:
    """A column in the masked line as a column in the original (they end alike where Python
    was kept)."""
    if original.endswith(masked[offset - 1:]):
        offset += len(original) - len(masked)
    return max(offset, 1)


def _cell_source(cell: dict[str, object], number: int) -> str:
    source = cell.get("source", "")
    if isinstance(source, list) and all(isinstance(part, str) for part in source):
        source = "".join(source)
    if not isinstance(source, str):
        raise BrokenNotebook(f"cell {number} has a source that is neither text nor a list of lines")
    return source


def _cells(text: str) -> list[dict[str, Any]]:
    """The notebook's cells (all kinds, in order)."""
    try:
        notebook = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise BrokenNotebook(f"not a notebook: invalid JSON ({error})") from None
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise BrokenNotebook("not a notebook: no list of cells")
    return cells


def sources(text: str) -> dict[int, str]:
    """The source of each code cell as written, by cell number."""
    return {number: _cell_source(cell, number) for number, cell in enumerate(_cells(text), start=1)
            if cell.get("cell_type") == "code"}


def program(text: str) -> Program:
    """The notebook's code cells as one Python program, without the cells that are not
    Python (each one a ``CellError``)."""
    lines: list[str] = []
    places: list[tuple[int, int]] = []
    originals: dict[int, list[str]] = {}
    errors: list[CellError] = []
    for number, source in sources(text).items():
        original = source_lines(source)
        originals[number] = original
        masked = _masked(original)
        failure = cell_error("\n".join(masked) + "\n")
        if failure is not None:
            message, line, offset = failure
            line = min(max(line, 1), max(len(original), 1))
            column = _column(original[line - 1], masked[line - 1], offset) if original else 1
            errors.append(CellError(number, line, column, message))
            masked = [""] * len(original)
        for index, masked_line in enumerate(masked, start=1):
            lines.append(masked_line)
            places.append((number, index))
    return Program("\n".join(lines) + "\n", places, originals, errors)


# -- writing fixed cells back ---------------------------------------------------------------------

_DECODER = json.JSONDecoder()


def _skip(text: str, at: int) -> int:
    """Where the JSON whitespace at ``at`` ends."""
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at


def _items(text: str, start: int) -> list[tuple[str | None, int, int]]:
    """The members of the JSON object or array at ``start``: each one's key (``None`` in an
    array) and where its value starts and ends."""
    close = "}" if text[start] == "{" else "]"
    found: list[tuple[str | None, int, int]] = []
    at = _skip(text, start + 1)
    while text[at] != close:
        key = None
        if close == "}":
            key, at = _DECODER.raw_decode(text, at)
            at = _skip(text, _skip(text, at) + 1)  # past the colon
        end = _DECODER.raw_decode(text, at)[1]
        found.append((key, at, end))
        at = _skip(text, end)
        if text[at] == ",":
            at = _skip(text, at + 1)
    return found


def _member(text: str, start: int, key: str) -> tuple[int, int] | None:
    """Where the value of ``key`` is in the object at ``start`` (the last, as json.loads keeps)."""
    spans = [(begin, end) for name, begin, end in _items(text, start) if name == key]
    return spans[-1] if spans else None


def _source_spans(text: str) -> dict[int, tuple[int, int]]:
    """Where each cell's ``source`` value is in the notebook's text, by cell number."""
    cells = _member(text, _skip(text, 0), "cells")
    assert cells is not None  # the text was read as a notebook
    spans = {}
    for number, (_, start, _) in enumerate(_items(text, cells[0]), start=1):
        source = _member(text, start, "source")
        if source is not None:
            spans[number] = source
    return spans


def _written(old: str, source: str, ascii_only: bool) -> str:
    """``source`` as JSON laid out as the cell's source ``old`` was: a string, or a list of
    lines in the same layout, each unchanged line written as it was."""
    if old[0] == '"':
        return json.dumps(source, ensure_ascii=ascii_only)
    lines = re.findall(r"[^\n]*\n|[^\n]+", source)
    spans = [(start, end) for _, start, end in _items(old, 0)]
    if not lines or not spans:
        return json.dumps(lines, ensure_ascii=ascii_only)
    as_written = {json.loads(old[start:end]): old[start:end] for start, end in spans}
    lead, trail = old[1:spans[0][0]], old[spans[-1][1]:-1]
    separator = old[spans[0][1]:spans[1][0]] if len(spans) > 1 else "," + (lead or " ")
    written = (as_written.get(line) or json.dumps(line, ensure_ascii=ascii_only) for line in lines)
    return "[" + lead + separator.join(written) + trail + "]"


def rewrite(text: str, changed: dict[int, str]) -> str:
    """The notebook's text with the sources of the ``changed`` cells replaced and every other
    byte as it was. A cell whose last line had no newline (as Jupyter saves them) keeps none."""
    spans = _source_spans(text)
    for number in sorted(changed, key=lambda n: spans[n][0], reverse=True):
        start, end = spans[number]
        old = text[start:end]
        before = _cell_source({"source": json.loads(old)}, number)
        source = changed[number]
        if source.endswith("\n") and before and not before.endswith("\n"):
            source = source[:-1]
        text = text[:start] + _written(old, source, text.isascii()) + text[end:]
    return text
