"""The record every output shares: one finding at one place, or a file that could not be analysed."""

from __future__ import annotations

from typing import NamedTuple

UNANALYSABLE_CODE = "CC000"
UNANALYSABLE_NAME = "unanalysable-file"


class Finding(NamedTuple):
    path: str
    line: int
    column: int
    end_line: int
    end_column: int
    code: str
    rule: str
    message: str
    fix: dict[str, object] | None = None
    cell: int | None = None  # in a notebook: the cell's 1-based position (``line`` is in the cell)

    def as_dict(self) -> dict[str, object]:
        """The contract's JSON object (``cell`` only for notebooks)."""
        data = {k: v for k, v in self._asdict().items() if k != "cell"}
        if self.cell is not None:
            data["cell"] = self.cell
        return data

    @property
    def place(self) -> str:
        """``path:line:column`` (``path:cell N:line:column`` in a notebook)."""
        cell = f"cell {self.cell}:" if self.cell is not None else ""
        return f"{self.path}:{cell}{self.line}:{self.column}"

    @property
    def unanalysable(self) -> bool:
        return self.code == UNANALYSABLE_CODE


def unanalysable(path: str, reason: str, line: int = 1, column: int = 1) -> Finding:
    """The CC000 finding for a file that could not be analysed, with the reason."""
    return Finding(path, line, column, line, column, UNANALYSABLE_CODE, UNANALYSABLE_NAME, reason)


def in_cell(finding: Finding, cell: int, line: int, end_line: int) -> Finding:
    return finding._replace(cell=cell, line=line, end_line=end_line)
